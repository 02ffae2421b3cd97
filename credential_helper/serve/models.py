"""Which models Ollama acts on for a request, read as Ollama's Go code reads it.

Public API (used by the gate's ``models=`` policy)::

    models_named(method, path, query, content_type, body, *, content_encoding=None,
                 limit=BODY_LIMIT) -> Named | Unreadable | Unknown
    filter_listing(path, body, allowed) -> bytes     # model_answers.py
    listing_error(path, status, body) -> bytes       # model_answers.py
    filter_show(body, allowed) -> bytes              # model_answers.py
    denied(named, allowed) -> Model | None

- ``path`` is the request-target's path as sent (percent-encoded), ``query`` its raw query
  without ``?``; ``body`` the whole request body after de-chunking (``b""`` or ``None`` for
  none); ``content_encoding`` the request's ``Content-Encoding`` header, if any.
- ``Named.models``: every model Ollama (ollama/ollama@fb30760) would act on, each a ``Model``;
  ``Named.subjects``: the strings a ``models=`` pattern is matched against, one per model.
  ``Named(())`` is an endpoint that names no model (``/api/version``) or a listing
  (``listing=True``: ``/api/tags``, ``/api/ps``, ``/v1/models``, whose answer goes through
  ``filter_listing``); ``show=True`` for ``/api/show``, whose answer goes through ``filter_show``.
- ``Unreadable(status, reason)``: 400 when the body cannot be read exactly as Ollama would (not
  JSON, compressed, a name Ollama refuses, a shape this module does not read), 413 over ``limit``.
- ``Unknown``: a route this module does not know (or one Ollama answers with a redirect, 404 or
  405), and the account, web-search and blob routes: a model-restricted key is granted nothing.

Refused (400) although Ollama would act, because the gate cannot judge the request by model
name (grant less): ``/api/create`` with ``files``, ``adapters`` or ``draft_files`` (weights named
by digest) or ``remote_host``; ``/v1/responses`` and ``/v1/messages`` whose cloud check and
handler read different models while a ``tools`` key is present; a transcription form with two
``model`` parts or anything ``goform`` does not read exactly as Go does; a JSON body of more than
``gojson.MAX_VALUES`` values (what Python would build for it is many times its size).

The subject a pattern is matched against is the name Ollama acts on, normalised as
``types/model/name.go`` does (default host ``registry.ollama.ai``, namespace ``library``, tag
``latest``), printed as ``Name.DisplayShortest`` prints it and lower-cased (Ollama compares names
case-insensitively, routes.go:1222 ``getExistingName``): ``llama3:latest``, ``myns/m:8b``,
``host:5000/ns/m:8b``. DisplayShortest is one-to-one on valid names and shows any non-default host
or namespace, so ``llama3:*`` can never match another registry's ``llama3``. A model Ollama sends
to the cloud (``gpt-oss:20b:cloud``, ``gpt-oss:20b-cloud``) has as subject the name Ollama gives
its local stub (``internal/modelref`` ``NormalizePullName``: ``gpt-oss:20b-cloud``), the name
``ollama pull``, ``ollama ls`` and ``/api/delete`` use for it: granting ``gpt-oss:20b`` does not
grant the cloud model. Only that one form is matched (grant less).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_to_bytes

from credential_helper.serve import goform
from credential_helper.serve.model_answers import filter_listing, filter_show, listing_error
from credential_helper.serve.gojson import (
    GoJSONError,
    MissingBody,
    bind_keys,
    bind_strings,
    decode_first,
    go_string,
    map_get,
    trim_space,
    unmarshal_whole,
)
from credential_helper.serve.modelname import (
    Model,
    Refused,
    plain_model,
    pull_model,
    ref_model,
)

__all__ = [
    "BODY_LIMIT",
    "Model",
    "Named",
    "Unknown",
    "Unreadable",
    "denied",
    "filter_listing",
    "filter_show",
    "listing_error",
    "models_named",
]

BODY_LIMIT = 32 << 20  # above Ollama's own 25 MiB multipart and 20 MiB zstd limits (cloud_proxy.go:36)


@dataclass(frozen=True)
class Named:
    models: tuple[Model, ...] = ()
    listing: bool = False
    show: bool = False  # /api/show: its answer goes through filter_show

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(m.subject for m in self.models)


@dataclass(frozen=True)
class Unreadable:
    status: int  # 400 or 413
    reason: str  # short, safe to show: never holds body text


@dataclass(frozen=True)
class Unknown:
    reason: str = "unknown endpoint"


Result = Named | Unreadable | Unknown


def denied(named: Named, allowed: Callable[[str], bool]) -> Model | None:
    """The first model of ``named`` whose subject ``allowed`` refuses, else ``None``."""
    for m in named.models:
        if not allowed(m.subject):
            return m
    return None


# --- the endpoints (server/routes.go:1877-1926 GenerateRoutes) --------------------------------


def _bind(body: bytes, fields: tuple[str, ...]) -> dict[str, str]:
    try:
        return bind_strings(decode_first(body), fields)  # gin ShouldBindJSON: Decoder.Decode
    except MissingBody:
        raise Refused("missing request body") from None
    except GoJSONError:
        raise Refused("body is not JSON Ollama reads") from None


def _native(body: bytes) -> tuple[Model, ...]:
    # GenerateHandler routes.go:248-261, ChatHandler :2444-2457, EmbedHandler :798-808,
    # EmbeddingsHandler :1044-1052: ShouldBindJSON, parseAndValidateModelRef(req.Model), no `name`.
    return (ref_model("model", _bind(body, ("model",))["model"]),)


def _show(body: bytes) -> tuple[Model, ...]:
    f = _bind(body, ("model", "name"))  # ShowHandler routes.go:1312-1322: model, else name
    return (ref_model("model", f["model"] or f["name"]),)


def _pull_delete(body: bytes) -> tuple[Model, ...]:
    f = _bind(body, ("model", "name"))  # routes.go:1119 and :1257 cmp.Or(req.Model, req.Name)
    return (pull_model(f["model"] or f["name"]),)


def _push(body: bytes) -> tuple[Model, ...]:
    f = _bind(body, ("model", "name"))  # PushHandler routes.go:1176-1183, ParseName at :1199
    raw = f["model"] or f["name"]
    if not raw:
        raise Refused("model is required")
    return (plain_model("model", raw),)


_BLOB_FIELDS = {"files", "adapters", "draft_files"}  # api/types.go CreateRequest: name -> blob digest


def _create(body: bytes) -> tuple[Model, ...]:
    f = _bind(body, ("model", "name", "from", "remote_host"))
    if _BLOB_FIELDS & bind_keys(decode_first(body), non_null=True):
        # create.go:70-101, :192 convertModelFromFiles: weights named by digest, not by a model name,
        # so a key restricted to some models could clone any other model's layers: refuse.
        raise Refused("files, adapters or draft_files are not accepted for a model-restricted key")
    named = [plain_model("model", f["model"] or f["name"])]  # create.go:103 ParseName(cmp.Or(...))
    if f["remote_host"]:
        # create.go:137-142 a parent on a host the request names: not a model this gate can judge
        raise Refused("remote_host is not accepted for a model-restricted key")
    if f["from"]:
        named.append(ref_model("from", f["from"]))  # create.go:130 parseAndValidateModelRef(r.From)
    return tuple(named)


def _copy(body: bytes) -> tuple[Model, ...]:
    f = _bind(body, ("source", "destination"))  # CopyHandler routes.go:1657-1668: raw ParseName
    return (plain_model("source", f["source"]), plain_model("destination", f["destination"]))


_WEB_SEARCH_PATHS = ("/v1/responses", "/v1/messages")  # cloud_proxy.go:328 hasWebSearchTool


def _v1(path: str) -> Callable[[bytes], tuple[Model, ...]]:
    def read(body: bytes) -> tuple[Model, ...]:
        passthrough, whole = _cloud_passthrough(body)
        try:
            handler = ref_model("model", _bind(body, ("model",))["model"])
        except Refused:
            if passthrough is None:
                raise
            return (passthrough,)  # passed through, or refused by the /v1 middleware
        if passthrough is None or handler == passthrough:
            return (handler,)
        if path in _WEB_SEARCH_PATHS and "tools" in bind_keys(whole):
            # cloud_proxy.go:128: a web_search tool sends the request on to the /v1 middleware
            # and the handler, whose reading of the model differs: refuse rather than guess.
            raise Refused("model keys that Ollama's cloud check and handler read differently")
        return (passthrough,)  # cloud_proxy.go:134 proxyCloudRequest, the handler never runs

    return read


def _cloud_passthrough(body: bytes) -> tuple[Model | None, Any]:
    # cloudPassthroughMiddleware cloud_proxy.go:74-136: json.Unmarshal into a map, exact "model"
    # (extractModelField :304), TrimSpace, parseAndValidateModelRef; only an explicit cloud source.
    try:
        whole = unmarshal_whole(body)
        raw = map_get(whole, "model")
    except (GoJSONError, KeyError):
        return None, None
    if not isinstance(raw, str) or not trim_space(go_string(raw)):
        return None, whole
    try:
        m = ref_model("model", trim_space(go_string(raw)))
    except Refused:
        return None, whole
    return (m if m.cloud else None), whole


def _transcription(query: str, content_type: str, body: bytes) -> tuple[Model, ...]:
    # TranscriptionMiddleware openai.go:1280-1289; the ChatHandler then reads the model (routes.go:2457).
    try:
        in_query = goform.parse_query(query).get("model", [])
        in_body = goform.multipart_values(content_type, body, "model")
    except goform.FormError as exc:
        raise Refused(f"form not read: {exc}") from None
    if len(in_body) > 1:
        raise Refused("more than one model in the form")  # Go takes the first: refuse, not guess
    values = in_query + in_body  # net/http request.go ParseMultipartForm appends after the query
    if not values or not values[0]:
        raise Refused("model is required")
    return (replace(ref_model("model", values[0]), in_query=bool(in_query)),)


_BODY_ROUTES: dict[tuple[str, str], Callable[[bytes], tuple[Model, ...]]] = {
    ("POST", "/api/generate"): _native,
    ("POST", "/api/chat"): _native,
    ("POST", "/api/embed"): _native,
    ("POST", "/api/embeddings"): _native,
    ("POST", "/api/show"): _show,
    ("POST", "/api/pull"): _pull_delete,
    ("DELETE", "/api/delete"): _pull_delete,
    ("POST", "/api/push"): _push,
    ("POST", "/api/create"): _create,
    ("POST", "/api/copy"): _copy,
    **{
        ("POST", p): _v1(p)
        for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")
    },
}
_LISTINGS = {("GET", "/api/tags"), ("HEAD", "/api/tags"), ("GET", "/api/ps"), ("GET", "/v1/models")}
# Routes that act on no model. Account, web-search and blob routes (/api/me, /api/signout,
# /api/user/keys/:k, /api/experimental/web_*, /api/blobs/:digest, whose only use is a create
# from files, refused below) are left Unknown on purpose: a model-restricted key gets nothing there.
_NO_MODEL = {
    ("GET", "/"),
    ("HEAD", "/"),
    ("GET", "/api/version"),
    ("HEAD", "/api/version"),
    ("GET", "/api/status"),
}


def _decoded_path(path: str) -> str | None:
    # net/url: Path is the unescaped path; gin routes on it (UseRawPath false). A bad escape is a
    # 400 from net/http; a path ServeMux would clean is a redirect (routes.go:2000 http.Handle).
    if re.search(r"%(?![0-9A-Fa-f]{2})", path) or not path.startswith("/"):
        return None
    decoded = unquote_to_bytes(path).decode("utf-8", errors="replace")
    clean = posixpath.normpath(decoded) + ("/" if decoded.endswith("/") and decoded != "/" else "")
    if clean.startswith("//") or clean != decoded:
        return None
    return decoded


def models_named(
    method: str,
    path: str,
    query: str,
    content_type: str | None,
    body: bytes | None,
    *,
    content_encoding: str | None = None,
    limit: int = BODY_LIMIT,
) -> Result:
    """The models Ollama acts on for this request; see the module docstring."""
    decoded = _decoded_path(path)
    if decoded is None:
        return Unknown("path Ollama does not route as sent")
    key = (method, decoded)
    if key in _NO_MODEL:
        return Named()
    if key in _LISTINGS:
        return Named(listing=True)
    body = body or b""
    if len(body) > limit:
        return Unreadable(413, "body over the size limit")
    if content_encoding and content_encoding.strip().lower() != "identity":
        return Unreadable(400, "compressed body")  # cloud_proxy.go:82 and openai.go:1157 inflate zstd
    try:
        if key in _BODY_ROUTES:
            return Named(_BODY_ROUTES[key](body), show=key == ("POST", "/api/show"))
        if key == ("POST", "/v1/audio/transcriptions"):
            return Named(_transcription(query, content_type or "", body))
        segments = decoded.split("/")
        if method == "GET" and len(segments) == 4 and decoded.startswith("/v1/models/") and segments[3]:
            # cloudModelPathPassthroughMiddleware cloud_proxy.go:139 and RetrieveMiddleware
            # openai.go:342: the path segment is the ShowRequest's name (routes.go:1920).
            return Named((ref_model("model", segments[3]),))
    except Refused as exc:
        return Unreadable(400, exc.reason)
    return Unknown()

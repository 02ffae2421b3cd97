"""What a model-restricted key (``models=``) sees of Ollama's answers: no name of a model
the key may not use.

Public API (used by the gate's ``models=`` policy; ``allowed`` takes a subject, models.py)::

    filter_listing(path, body, allowed) -> bytes    # /api/tags, /api/ps, /v1/models
    listing_error(path, status, body) -> bytes      # the same, answered with a status not 2xx
    filter_show(body, allowed) -> bytes             # /api/show

- A listing keeps only the entries whose names are allowed (``filter_listing``).
- A model may name another model it was made from: ``details.parent_model`` (the model of
  a ``FROM <model>`` create, server/model.go ``parseFromModel``: ``name.DisplayShortest()``;
  server/images.go ``GetModel``), ``remote_model`` (the model a stub created from a remote
  or cloud model forwards to, server/create.go ``config.RemoteModel = fromRef.Base``) and a
  ``FROM`` line of ``modelfile`` (routes.go ``GetModelInfo`` writes ``# FROM <the model>`` and
  ``FROM <blob path>``; a cloud answer or an older Ollama may write a name). Such a field that
  names a model the key may not use is blanked: ``""`` for a name (Go's zero value, what a
  model without a parent shows; Ollama's CLI ``/save`` then creates from the model itself,
  cmd/interactive.go ``NewCreateRequest``), and the whole ``modelfile`` (its other lines
  would still describe the parent). Listing entries carry ``details.parent_model`` too.
- An answer that is not the JSON expected becomes an empty one (grant less).
- A listing answered with a status other than 2xx keeps its status, but its text is
  replaced: Ollama's own can name a model (routes.go ``ListHandler`` answers 500 with
  ``err.Error()``, and manifest/manifest.go ``Manifests`` prefixes its errors with the
  manifest's path, ``.../manifests/<host>/<namespace>/<model>/<tag>``), and a body filtered
  or not cannot be told safe by its shape. A show's errors are about the model asked for
  and pass as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from .messages import Answer
from .modelname import Refused, parse_name, ref_model, shortest

Allowed = Callable[[str], bool]

# A Modelfile's FROM command or the "# FROM <model>" comment Ollama writes above it
# (parser/parser.go: commands are case-insensitive, the argument is the rest of the line).
_FROM = re.compile(r"[ \t]*(?:#[ \t]*)?from[ \t]+(.*?)[ \t]*", re.IGNORECASE)
# A blob path as Ollama writes FROM for a local model: absolute, POSIX or Windows.
_PATH = re.compile(r"/|[A-Za-z]:[\\/]|\\\\")


def _entry_subject(name: Any) -> str | None:
    # A listed name is a store name (server/images.go): name.go ParseName, no modelref.
    if not isinstance(name, str):
        return None
    parts = parse_name(name)
    return None if parts is None else shortest(parts)


def _visible(entry: Any, keys: tuple[str, ...], allowed: Allowed) -> bool:
    if not isinstance(entry, dict):
        return False
    names = [entry.get(k) for k in keys if entry.get(k) not in (None, "")]
    subjects = [_entry_subject(n) for n in names]
    return bool(subjects) and all(s is not None and allowed(s) for s in subjects)


def _named_allowed(name: Any, allowed: Allowed, *, remote: bool = False) -> bool:
    """True for an empty name or one of a model the key may use; a remote model also as
    the cloud model it is (``gpt-oss:20b`` is used as ``gpt-oss:20b-cloud``)."""
    if name in (None, ""):
        return True
    subject = _entry_subject(name)
    if subject is not None and allowed(subject):
        return True
    if remote and isinstance(name, str):
        try:
            return allowed(ref_model("model", name + ":cloud").subject)
        except Refused:
            return False
    return False


def _modelfile_allowed(text: Any, allowed: Allowed) -> bool:
    """False when a FROM line (outside a triple-quoted argument) names a model the key may not use."""
    if not isinstance(text, str):
        return text is None
    quoted = False
    for line in text.split("\n"):
        if not quoted:
            match = _FROM.fullmatch(line.rstrip("\r"))
            if match is not None:
                argument = match.group(1).strip('"')
                if argument and not _PATH.match(argument) and not _named_allowed(argument, allowed):
                    return False
        quoted ^= line.count('"""') % 2 == 1  # TEMPLATE """...""" may span lines and say "from ..."
    return True


def _blank_parent(entry: Any, allowed: Allowed) -> bool:
    """Blank ``details.parent_model`` and ``remote_model`` (a listing's entry carries it too:
    server/routes.go ListHandler) when they name a model the key may not use; True if changed."""
    changed = False
    details = entry.get("details") if isinstance(entry, dict) else None
    if isinstance(details, dict) and not _named_allowed(details.get("parent_model"), allowed):
        details["parent_model"] = ""
        changed = True
    if isinstance(entry, dict) and not _named_allowed(entry.get("remote_model"), allowed, remote=True):
        entry["remote_model"] = ""
        changed = True
    return changed


def filter_listing(path: str, body: bytes, allowed: Allowed) -> bytes:
    """A listing answer with only the models whose subjects ``allowed`` accepts.

    ``/api/tags`` and ``/api/ps`` (``{"models": [{"name", "model", ...}]}``, api/types.go:797-840)
    keep an entry only when every name it shows (``name``, ``model``) is allowed, its
    ``details.parent_model`` blanked unless allowed too; ``/v1/models``
    (``{"object": "list", "data": [{"id", ...}]}``, openai.go:450 ``ToListCompletion``) by ``id``.
    An empty body (``HEAD``) is returned as is; an answer that is not such JSON becomes an empty
    listing (grant less).
    """
    if not body:
        return body
    v1 = path.rstrip("/") == "/v1/models"
    list_key, keys = ("data", ("id",)) if v1 else ("models", ("name", "model"))
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get(list_key), (list, type(None))):
        doc = {"object": "list", "data": []} if v1 else {"models": []}
    else:
        doc[list_key] = [e for e in doc.get(list_key) or [] if _visible(e, keys, allowed)]
        for entry in doc[list_key]:
            _blank_parent(entry, allowed)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def listing_error(path: str, status: int, body: bytes) -> bytes:
    """A listing's answer with a status not 2xx: its status kept, its text our own, in the
    shape the route's client reads (messages.Answer.payload: OpenAI's on /v1). No body stays none."""
    if not body:
        return body
    return Answer(
        status,
        f"Ollama answered {status} to this model listing; its text is not shown to a key limited to some "
        "models (it can name others): ask the operator",
    ).payload(path)


def filter_show(body: bytes, allowed: Allowed) -> bytes:
    """/api/show's answer (api/types.go ``ShowResponse``) without the name of a model the key
    may not use: ``details.parent_model`` and ``remote_model`` blanked, ``modelfile`` emptied
    when a FROM line names one. Returned as is when nothing is blanked; an answer that is not
    a JSON object becomes ``{}``."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return b"{}"
    changed = _blank_parent(doc, allowed)
    if not _named_allowed(doc.get("remote_model"), allowed, remote=True):
        doc["remote_model"] = ""
        changed = True
    if not _modelfile_allowed(doc.get("modelfile"), allowed):
        doc["modelfile"] = ""
        changed = True
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8") if changed else body

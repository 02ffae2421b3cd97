"""Model names as Ollama normalises them: ``internal/modelref`` and ``types/model/name.go``.

ollama/ollama@fb30760. ``modelref.ParseRef`` trims spaces and takes an explicit ``:cloud``,
``:local`` or ``-cloud`` source suffix off; ``name.go`` ``ParseName`` fills in the default host
``registry.ollama.ai``, namespace ``library`` and tag ``latest`` and ``IsValid`` accepts only
ASCII parts of its grammar (there is no digest part at this commit: ``@`` makes a name invalid).
Which subject a ``models=`` pattern is matched against is described in ``serve/models.py``.
Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from credential_helper.serve.gojson import trim_space

__all__ = ["Model", "Refused", "parse_name", "parse_ref", "plain_model", "pull_model", "ref_model", "shortest"]


@dataclass(frozen=True)
class Model:
    role: str  # model | from | source | destination (the request field it came from)
    name: str  # name.go Name.String() of what Ollama acts on, lower-case: registry.ollama.ai/library/llama3:8b
    subject: str  # what a pattern is matched against (see the module docstring)
    cloud: bool = False  # Ollama sends it to the cloud (the name is the base, without :cloud)
    base: str = ""  # the string Ollama parsed into ``name`` (for a cloud model: what it sends upstream)
    in_query: bool = False  # read from the query string: never logged (record.py)


_PART = {  # name.go isValidPart / isValidLen: ASCII only, first byte alphanumeric or '_'
    "host": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    "namespace": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    "model": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    "tag": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
}
_MISSING = "!MISSING!"  # name.go MissingPart


def _cut_promised(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)  # name.go cutPromised / cutLast
    if i < 0:
        return s, "", False
    return s[:i] or _MISSING, s[i + len(sep) :] or _MISSING, True


def parse_name(s: str) -> tuple[str, str, str, str] | None:
    """name.go ``ParseName`` + ``IsValid``: (host, namespace, model, tag), or None when invalid."""
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):
        s, tag, _ = _cut_promised(s, ":")
    s, model, promised = _cut_promised(s, "/")
    if promised:
        s, namespace, promised = _cut_promised(s, "/")
        if promised:
            scheme, sep, rest = s.partition("://")  # ParseNameBare: strings.Cut(s, "://")
            host = rest if sep else scheme
        else:
            namespace = s
    else:
        model = s
    parts = (host or "registry.ollama.ai", namespace or "library", model, tag or "latest")  # Merge(DefaultName())
    if not all(_PART[k].fullmatch(v) for k, v in zip(_PART, parts, strict=True)):
        return None
    return parts


def shortest(parts: tuple[str, str, str, str]) -> str:
    host, namespace, model, tag = (p.lower() for p in parts)  # name.go DisplayShortest
    if host != "registry.ollama.ai":
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace != "library":
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def _source_suffix(raw: str) -> tuple[str, str]:
    # modelref.go parseSourceSuffix -> (base, "cloud" | "local" | "")
    idx = raw.rfind(":")
    if idx >= 0:
        suffix_raw = trim_space(raw[idx + 1 :])
        suffix = suffix_raw.lower()
        if suffix in ("cloud", "local"):
            return raw[:idx], suffix
        if "/" not in suffix_raw and suffix.endswith("-cloud"):
            return raw[: idx + 1] + suffix_raw[: -len("-cloud")], "cloud"
    return raw, ""


def parse_ref(raw: str) -> tuple[str, str] | None:
    """modelref.go ``ParseRef`` -> (base, source), None on its errors (empty; both suffixes)."""
    raw = trim_space(raw)
    if not raw:
        return None
    base, source = _source_suffix(raw)
    if source and _source_suffix(base)[1]:
        return None
    return base, source


def _legacy_cloud(base: str) -> str:
    # modelref.go toLegacyCloudPullName: the name Ollama stores a cloud model's stub under
    return base + ("-cloud" if base.rfind(":") > base.rfind("/") else ":cloud")


class Refused(Exception):
    """Ollama refuses this name (its answer is a 400 or a streamed error); ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _model(role: str, base: str, *, cloud: bool = False, subject: str = "") -> Model:
    parts = parse_name(base)
    if parts is None:
        raise Refused(f"invalid {role} name")
    name = "{}/{}/{}:{}".format(*parts).lower()
    return Model(role, name, subject or shortest(parts), cloud, base)


def ref_model(role: str, raw: str) -> Model:
    """``parseAndValidateModelRef`` (server/model_resolver.go:36): modelref, then name.go."""
    ref = parse_ref(raw)
    if ref is None:
        raise Refused(f"{role} is required" if not trim_space(raw) else "use either :local or :cloud, not both")
    base, source = ref
    if source != "cloud":
        return _model(role, base)
    stub = parse_name(_legacy_cloud(base))
    if stub is None:
        raise Refused(f"invalid cloud {role} name")
    return _model(role, base, cloud=True, subject=shortest(stub))


def pull_model(raw: str) -> Model:
    """model_resolver.go:57 ``parseNormalizePullModelRef``: ``:cloud`` becomes the stub's name."""
    ref = parse_ref(raw)
    if ref is None:
        raise Refused("invalid model name")
    base, source = ref
    return _model("model", _legacy_cloud(base) if source == "cloud" else base)


def plain_model(role: str, raw: str) -> Model:
    """``model.ParseName`` on the raw string, as push, create and copy do (no trim, no modelref)."""
    return _model(role, raw)

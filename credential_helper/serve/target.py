"""The request target's canonical form: one module for the gate's verifier, its
auth-only reading of forwarded targets, and the key file's endpoint lists.

A signature covers the target as sent, and the upstream routes it by its decoded
path: any spelling that two parsers could read differently (a dot segment, an
encoded ``/``, ``;`` parameters, a malformed escape) is refused rather than
normalised, so that what is verified, what is matched against an endpoint list
and what Ollama's router runs are the same bytes. Pure.
"""

from __future__ import annotations

import re

MAX_TARGET_CHARS = 8192
# RFC 3986 section 3.3 pchar without percent-encoding and without ';' (see
# path_problem), plus '/'.
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
# RFC 3986 section 3.4 query characters without ';' (Go's url.ParseQuery rejects
# it, other parsers split on it) and with percent-encoding checked separately.
_QUERY_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/?%]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})|%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee])")


def path_problem(path: str) -> str | None:
    """None when ``path`` is a canonical origin-form path; otherwise why not.

    Canonical means the upstream routes exactly these characters: Ollama's
    router (gin) matches the decoded ``URL.Path`` byte for byte and
    case-sensitively, so any spelling that decodes or normalises to something
    else (a dot segment, ``//``, a percent-encoding, a backslash) could dodge an
    endpoint list. No Ollama route needs percent-encoding (model names travel in
    the body; blob digests are ``sha256:<hex>``), so a path with ``%`` differs
    from its own decoding and is refused. ``;`` is refused too: some servers
    strip ``;params`` before routing (RFC 3986 section 3.3 leaves it to them).
    """
    if not path.startswith("/"):
        return "the path does not start with /"
    if not path.isascii():
        return "the path holds non-ASCII characters"
    if any(ch < " " or ch == "\x7f" for ch in path):
        return "the path holds control characters"
    if "\\" in path:
        return "the path holds a backslash"
    if "%" in path:
        lowered = path.lower()
        if "%2f" in lowered or "%5c" in lowered:
            return "the path holds an encoded / or \\"
        return "the path is percent-encoded (it differs from its own decoding)"
    if "//" in path:
        return "the path holds an empty segment (//)"
    segments = path.split("/")
    if any(segment in (".", "..") for segment in segments):
        return "the path holds a dot segment (. or ..)"
    if ";" in path:
        return "the path holds ';' (path parameters)"
    if not _PATH_CHARS.fullmatch(path):
        return "the path holds characters outside RFC 3986's path set"
    return None


def split_target(target: str) -> tuple[str, str | None]:
    """(path, query or None) of an origin-form target."""
    path, mark, query = target.partition("?")
    return path, (query if mark else None)


def canonical_path_problem(target: str) -> str | None:
    """None when the request target is canonical origin-form; else why (answer 400).

    Only origin-form (RFC 9112 section 3.2.1) is accepted: Ollama's client
    sends nothing else, and absolute-form (a proxy request), authority-form
    (CONNECT) and asterisk-form (``OPTIONS *``) have no endpoint to match.
    The path rules are :func:`path_problem`'s. In the query,
    ``;``, a malformed ``%`` and a percent-encoded unreserved character are
    refused: Go's ``url.QueryEscape`` never writes them, and each could make
    two parsers disagree about where ``ts`` is.
    """
    if not isinstance(target, str) or target == "":
        return "the request target is empty"
    if len(target) > MAX_TARGET_CHARS:
        return f"the request target is longer than {MAX_TARGET_CHARS} characters"
    if target == "*":
        return "the asterisk-form target (OPTIONS *) is not served"
    if not target.startswith("/"):
        return "the request target is not origin-form (a path starting with /)"
    if not target.isascii() or any(ch <= " " or ch == "\x7f" for ch in target):
        return "the request target holds spaces, control or non-ASCII characters"
    if "#" in target:
        return "the request target holds a fragment (#)"
    path, query = split_target(target)
    problem = path_problem(path)
    if problem is not None:
        return problem
    if query is not None:
        if not _QUERY_CHARS.fullmatch(query):
            return "the query holds characters outside RFC 3986's query set (or ';')"
        if _PERCENT.search(query):
            return "the query holds a malformed or needless percent-encoding"
    return None


def ts_values(query: str | None) -> list[str]:
    """Every value of ``ts`` in the query, split as Go's url.ParseQuery does
    (``&`` between pairs, the first ``=`` inside one; ``ts`` alone is ``ts=``)."""
    if not query:
        return []
    values = []
    for pair in query.split("&"):
        if pair == "":
            continue
        key, _, value = pair.partition("=")
        if key == "ts":
            values.append(value)
    return values

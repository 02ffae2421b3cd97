"""Form values as Go's ``net/http`` reads them, for ``/v1/audio/transcriptions``.

Ollama's ``TranscriptionMiddleware`` (middleware/openai.go:1280-1285) calls
``c.Request.ParseMultipartForm(25 << 20)`` and then ``c.Request.FormValue("model")``. In Go's
``net/http`` (request.go ``ParseForm``/``ParseMultipartForm``) ``r.Form`` first holds the URL
query values (``url.ParseQuery``: split on ``&`` only, a ``;`` or a bad escape is an error that
``ParseMultipartForm`` returns, so Ollama answers 400), and the multipart values are appended
after them: ``FormValue`` returns the first, so a ``model`` in the query wins over the body.

The multipart reader here accepts a strict subset of what ``mime/multipart`` accepts (CRLF line
ends, no preamble, no transport padding, only ``Content-Disposition`` and ``Content-Type`` part
headers, no RFC 2231 or backslash-escaped parameters, one ``model`` part) and refuses the rest:
where the two could differ, the gate refuses rather than guesses. Pure: no I/O.
"""

from __future__ import annotations

import re

__all__ = ["FormError", "multipart_values", "parse_query"]


class FormError(ValueError):
    """A form Go would refuse, or one this reader does not read exactly as Go would."""


_HEX = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _query_unescape(s: str) -> str:
    # net/url unescape(s, encodeQueryComponent): '+' is a space, '%' needs two hex digits.
    if _HEX.search(s):
        raise FormError("invalid URL escape")
    raw = s.replace("+", " ").encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25:  # '%'
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", errors="replace")


def parse_query(query: str) -> dict[str, list[str]]:
    """``url.ParseQuery``; raises ``FormError`` where Go returns an error (net/url parseQuery)."""
    values: dict[str, list[str]] = {}
    for part in query.split("&"):
        if ";" in part:
            raise FormError("invalid semicolon separator in query")
        if not part:
            continue
        key, _, value = part.partition("=")
        values.setdefault(_query_unescape(key), []).append(_query_unescape(value))
    return values


# mime/multipart readForm: a part past GODEBUG multipartmaxparts (1000) is ErrMessageTooLarge,
# which ParseMultipartForm returns (Ollama: 400). Also what bounds this reader's time.
MAX_PARTS = 1000
_TOKEN = re.compile(r"[!#$%&'+.^_`|~0-9A-Za-z-]+")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=?-]{1,70}")


def _media_params(value: str) -> tuple[str, dict[str, str]]:
    # mime.ParseMediaType, strict: token or plain quoted-string values, no duplicates, no RFC 2231.
    kind, *rest = value.split(";")
    params: dict[str, str] = {}
    for item in rest:
        name, eq, val = item.strip(" \t").partition("=")
        name = name.lower()
        if not eq or not _TOKEN.fullmatch(name) or "*" in name or name in params:
            raise FormError("unsupported media-type parameter")
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
            if "\\" in val or '"' in val:
                raise FormError("unsupported quoted parameter")
        elif not _TOKEN.fullmatch(val):
            raise FormError("unsupported media-type parameter value")
        params[name] = val
    return kind.strip(" \t").lower(), params


def multipart_values(content_type: str, body: bytes, field: str) -> list[str]:
    """The non-file values of ``field`` in a ``multipart/form-data`` body, in order."""
    kind, params = _media_params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not _BOUNDARY.fullmatch(boundary) or boundary.endswith(" "):
        raise FormError("not multipart/form-data with a plain boundary")
    dash = b"--" + boundary.encode("ascii")
    delimiter = b"\r\n" + dash
    if body.startswith(dash + b"--") and body[len(dash) + 2 :] in (b"", b"\r\n"):
        return []  # no parts at all
    if not body.startswith(dash + b"\r\n"):
        raise FormError("multipart body does not start with its boundary")
    pos = len(dash) + 2
    found: list[str] = []
    parts = 0
    while True:
        parts += 1
        if parts > MAX_PARTS:
            raise FormError(f"more than {MAX_PARTS} parts")
        end = body.find(delimiter, pos)
        if end < 0:
            raise FormError("multipart body without a closing boundary")
        after = body[end + len(delimiter) : end + len(delimiter) + 2]
        if after not in (b"\r\n", b"--"):
            raise FormError("boundary followed by padding or text")
        head, sep, content = body[pos:end].partition(b"\r\n\r\n")
        if not sep:
            raise FormError("multipart part without a header end")
        name, is_file = _part_name(head)
        if name == field and is_file:
            raise FormError(f"{field} sent as a file")
        if name == field:
            found.append(content.decode("utf-8", errors="replace"))
        if after == b"--":
            rest = body[end + len(delimiter) + 2 :]
            if rest and not rest.startswith(b"\r\n"):  # multipart.go isFinalBoundary: a line of its own
                raise FormError("text after the closing boundary on its line")
            return found
        pos = end + len(delimiter) + 2


def _part_name(head: bytes) -> tuple[str, bool]:
    seen: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        lname = name.lower()
        if not colon or lname not in ("content-disposition", "content-type") or lname in seen:
            raise FormError("unsupported multipart part header")
        seen[lname] = value.strip(" \t")
    kind, params = _media_params(seen.get("content-disposition", ""))
    if kind != "form-data" or set(params) - {"name", "filename"}:
        raise FormError("unsupported Content-Disposition")
    return params.get("name", ""), "filename" in params

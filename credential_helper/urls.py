"""Go's net/url, the parts Ollama's signing depends on: escaping, queries, URLs.

Ollama builds and signs its URLs with Go's ``net/url`` (Parse, EscapedPath,
RequestURI, String, Values.Encode, QueryEscape); Python's ``urllib.parse``
normalises differently and would sign other bytes. Pure; imported on the
cache-hit path, so it imports nothing heavy. ``protocol`` re-exports these names.
"""

from __future__ import annotations

from .errors import InputError
from .sanitize import quoted

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_UNRESERVED = _ALNUM | frozenset(b"-_.~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HOST_CHARS = _UNRESERVED
_SCHEME_CHARS = _ALNUM | frozenset(b"+-.")


def check_text(value: str, what: str, *, allow_tab: bool = False) -> str:
    """Refuse control characters (C0, DEL, C1) and lone surrogates in ``value``.

    A control character could split a header or forge a log line; a lone
    surrogate (JSON's "\\ud800") has no UTF-8 form to sign or send.
    """
    if value.isprintable():  # no Cc or Cs character: the common case, kept fast
        return value
    for ch in value:
        code = ord(ch)
        if (code < 0x20 and not (allow_tab and ch == "\t")) or 0x7F <= code <= 0x9F:
            raise InputError(f"{what} contains a control character")
        if 0xD800 <= code <= 0xDFFF:
            raise InputError(f"{what} contains a lone surrogate (not valid Unicode)")
    return value


# --- Go net/url, the parts Ollama's signing depends on -------------------------


_UNRESERVED_TEXT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"


def query_escape(text: str) -> str:
    """Go's url.QueryEscape: space as '+', all but A-Z a-z 0-9 - _ . ~ as %XX."""
    if not text.strip(_UNRESERVED_TEXT):
        return text  # only unreserved characters: nothing to escape, kept fast
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def _path_should_escape(byte: int) -> bool:
    # Go's shouldEscape(c, encodePath): only '?' of the reserved set is escaped.
    if byte in _UNRESERVED:
        return False
    if byte in b"$&+,/:;=@":
        return False
    return True


def _path_escape(text: str) -> str:
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        out.append("%%%02X" % byte if _path_should_escape(byte) else chr(byte))
    return "".join(out)


def _unescape(text: str, *, plus_is_space: bool) -> str | None:
    """Go's unescape for path (plus kept) or query component (plus is space).

    Returns None where Go returns an error (a '%' not followed by two hex digits).
    """
    if "%" not in text and not (plus_is_space and "+" in text):
        return text  # nothing to decode: the common case, kept fast
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # '%'
            hi, lo = raw[i + 1 : i + 2], raw[i + 2 : i + 3]
            if not hi or not lo or hi[0] not in _HEX or lo[0] not in _HEX:
                return None
            out.append(int((hi + lo).decode(), 16))
            i += 3
            continue
        out.append(0x20 if (byte == 0x2B and plus_is_space) else byte)
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _valid_encoded_path(text: str) -> bool:
    # Go's validEncoded(s, encodePath): sub-delims, ':', '@', '[', ']' and '%' are
    # allowed as written; anything shouldEscape would escape is not.
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte in b"!$&'()*+,;=:@[]%":
            continue
        if _path_should_escape(byte):
            return False
    return True


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """Go's url.ParseQuery, as URL.Query() uses it: bad pairs are dropped."""
    values: dict[str, list[str]] = {}
    for pair in raw_query.split("&"):
        if ";" in pair or not pair:
            continue  # Go 1.17+: a semicolon separator makes the pair invalid
        key, _, value = pair.partition("=")
        key_text = _unescape(key, plus_is_space=True)
        value_text = _unescape(value, plus_is_space=True)
        if key_text is None or value_text is None:
            continue
        values.setdefault(key_text, []).append(value_text)
    return values


def encode_query(values: dict[str, list[str]]) -> str:
    """Go's url.Values.Encode: keys sorted by bytes, values in insertion order."""
    parts = []
    for key in sorted(values, key=lambda k: k.encode("utf-8", "surrogateescape")):
        escaped_key = query_escape(key)
        for value in values[key]:
            parts.append(escaped_key + "=" + query_escape(value))
    return "&".join(parts)


class URL:
    """An absolute http(s) URL split the way Go's url.Parse splits it."""

    __slots__ = ("scheme", "host", "path", "raw_query")

    def __init__(self, scheme: str, host: str, path: str, raw_query: str) -> None:
        self.scheme = scheme  # lower-cased, as Go does
        self.host = host  # host[:port] exactly as written
        self.path = path  # the path as written (may be escaped)
        self.raw_query = raw_query

    def __repr__(self) -> str:
        return f"URL({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URL) and str(self) == str(other)

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def port(self) -> int:
        host = self.host
        tail = host[host.index("]") + 1 :] if host.startswith("[") else host
        if ":" in tail:
            return int(tail.rsplit(":", 1)[1])
        return 443 if self.scheme == "https" else 80

    @property
    def escaped_path(self) -> str:
        """Go's URL.EscapedPath: the path as written when it is validly escaped."""
        if _valid_encoded_path(self.path):
            return self.path
        decoded = _unescape(self.path, plus_is_space=False)
        return _path_escape(decoded if decoded is not None else self.path)

    @property
    def request_target(self) -> str:
        """Go's URL.RequestURI: what goes on the request line."""
        target = self.escaped_path or "/"
        return target + "?" + self.raw_query if self.raw_query else target

    def with_query(self, raw_query: str) -> URL:
        return URL(self.scheme, self.host, self.path, raw_query)

    def __str__(self) -> str:
        """Go's URL.String for the URLs this module accepts."""
        path = self.escaped_path
        if path and not path.startswith("/"):
            path = "/" + path
        text = f"{self.scheme}://{self.host}{path}"
        return text + "?" + self.raw_query if self.raw_query else text


def parse_url(text: str, *, what: str = "URL") -> URL:
    """Parse an absolute http(s) URL, refusing what a credential must not go to.

    Refused: control characters (Go refuses them too), other schemes, user info
    (a password in a URL), a fragment (Go would sign it but never send it), an
    invalid host or port, and '%' escapes that Go's parser rejects.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"the {what} is empty")
    check_text(text, f"the {what}")
    scheme, sep, rest = text.partition(":")
    if (
        not sep
        or not scheme
        or not scheme[0].isascii()
        or not scheme[0].isalpha()
        or any(ord(ch) > 0x7F or ord(ch) not in _SCHEME_CHARS for ch in scheme)
    ):
        raise InputError(f"the {what} {quoted(text)} is not an absolute URL")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"the {what} must be an http or https URL, not {scheme}:")
    if not rest.startswith("//"):
        raise InputError(f"the {what} {quoted(text)} has no host")
    if "#" in rest:
        raise InputError(f"the {what} must not contain a #fragment")
    rest = rest[2:]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    path, _, raw_query = rest.partition("?")
    if "@" in authority:
        raise InputError(f"the {what} must not contain user info (user@host)")
    _check_host(authority, what)
    if _unescape(path, plus_is_space=False) is None:
        raise InputError(f"the {what} has an invalid %-escape in its path")
    return URL(scheme, authority, path, raw_query)


def _check_host(authority: str, what: str) -> None:
    if not authority:
        raise InputError(f"the {what} has no host")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise InputError(f"the {what} has an unclosed '[' in its host")
        literal, tail = authority[1:close], authority[close + 1 :]
        if not literal or any(ch not in "0123456789abcdefABCDEF:." for ch in literal):
            raise InputError(f"the {what} has an invalid IPv6 host")
        port = tail[1:] if tail.startswith(":") else (None if not tail else "")
        if tail and not tail.startswith(":"):
            raise InputError(f"the {what} has an invalid host")
    else:
        name, colon, port_text = authority.partition(":")
        port = port_text if colon else None
        if not name or any(ord(ch) > 0x7F or ord(ch) not in _HOST_CHARS for ch in name):
            raise InputError(f"the {what} has an invalid host {quoted(authority)}")
    if port is not None:
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"the {what} has an invalid port {quoted(authority)}")

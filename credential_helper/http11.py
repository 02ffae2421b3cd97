"""Strict HTTP/1.1 message framing for the signing proxy (RFC 9112), pure.

A proxy that parses leniently can be made to see one request where the server
behind it sees two (request smuggling). So: one request line, header lines of
token names and clean values, no folded lines, bounded sizes, and exactly one
way to find the body's end -- ``Content-Length`` (one value) or
``Transfer-Encoding: chunked`` (alone), never both. Anything else is a
:class:`BadRequest`, answered with 400 before a byte goes upstream.
"""


MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
MAX_CHUNK_LINE = 1024

# RFC 9110 tchar: what a field name and a method may be made of.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# RFC 9110 7.6.1: connection-specific fields a proxy must not forward.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"}
)


class BadRequest(Exception):
    """The client's message cannot be framed safely: answer 400, forward nothing."""


class RequestHead:
    __slots__ = ("method", "target", "version", "headers")

    def __init__(self, method: str, target: str, version: str, headers: list[tuple[str, str]]) -> None:
        self.method, self.target, self.version, self.headers = method, target, version, headers

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for value in self.get_all("connection") for t in value.split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def parse_request_head(lines: list[bytes]) -> RequestHead:
    """``lines`` are the request line and header lines, CRLF stripped."""
    if not lines:
        raise BadRequest("empty request")
    try:
        request_line = lines[0].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the request line is not ASCII") from None
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not method or any(ch not in _TCHAR for ch in method):
        raise BadRequest("malformed method")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("unsupported HTTP version")
    if not target.startswith("/") or any(ord(ch) <= 0x20 or ord(ch) >= 0x7F for ch in target):
        raise BadRequest("the request target must be a path (origin form)")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest("too many header fields")
    headers = []
    for raw in lines[1:]:
        if raw[:1] in (b" ", b"\t"):
            raise BadRequest("folded header lines are not allowed")
        name_bytes, colon, value_bytes = raw.partition(b":")
        name = name_bytes.decode("latin-1")
        if not colon or not name or any(ch not in _TCHAR for ch in name):
            raise BadRequest("malformed header field")
        value = value_bytes.decode("latin-1").strip(" \t")
        if any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in value):
            raise BadRequest("a header value contains a control character")
        headers.append((name, value))
    head = RequestHead(method, target, version, headers)
    if version == "HTTP/1.1" and len(head.get_all("host")) != 1:
        raise BadRequest("an HTTP/1.1 request needs exactly one Host header")
    return head


def body_framing(head: RequestHead) -> tuple[str, int]:
    """("chunked", 0), ("length", n) or ("none", 0); BadRequest for any ambiguity."""
    encodings = head.get_all("transfer-encoding")
    lengths = head.get_all("content-length")
    if encodings:
        if lengths:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if head.version == "HTTP/1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        codings = [c.strip().lower() for value in encodings for c in value.split(",")]
        if codings != ["chunked"]:
            raise BadRequest("only Transfer-Encoding: chunked is accepted")
        return "chunked", 0
    if lengths:
        values = {v.strip() for value in lengths for v in value.split(",")}
        if len(values) != 1:
            raise BadRequest("conflicting Content-Length values")
        (text,) = values
        if not text.isascii() or not text.isdigit() or len(text) > 15:
            raise BadRequest("malformed Content-Length")
        return "length", int(text)
    return "none", 0


def parse_chunk_size(line: bytes) -> int:
    """A chunk-size line (extensions ignored, as RFC 9112 allows); BadRequest if malformed."""
    size_text = line.split(b";", 1)[0].strip(b" \t")
    if not size_text or len(size_text) > 15 or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
        raise BadRequest("malformed chunk size")
    return int(size_text, 16)


def connection_tokens(headers) -> set[str]:
    """Field names listed in Connection: hop-by-hop for this message too."""
    return {t.strip().lower() for name, value in headers if name.lower() == "connection" for t in value.split(",") if t.strip()}

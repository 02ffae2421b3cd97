"""What the engine and its policies exchange, and the message rules h11 leaves to us. Pure.

h11 frames HTTP/1.1 (request line, header syntax, Content-Length and chunked,
keep-alive, interim responses). An intermediary must be stricter than a server in
a few places, because the server behind it may read the same bytes differently
(request smuggling): those checks are :func:`head_problem`, run on every request
head before any policy sees it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 32 * 1024  # request line and header fields together
MAX_HEADERS = 100

# RFC 9110 7.6.1: connection-specific fields an intermediary must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Framing is the engine's (h11 writes its own Content-Length or chunking).
FRAMING = frozenset({"content-length", "transfer-encoding"})
REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    401: "Unauthorized",
    403: "Forbidden",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Head:
    """A request head as received: method and target exactly as sent, header names
    in their original case, values decoded as latin-1 (bytes preserved)."""

    method: str
    target: str
    version: str  # "1.1" or "1.0"
    headers: tuple[tuple[str, str], ...]
    peer: str = ""  # the client's IP address as the engine saw it (the TCP peer), "" when unknown

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    @property
    def path(self) -> str:
        """The target without its query: what a log line may show."""
        return self.target.split("?", 1)[0]


@dataclass(frozen=True)
class Forward:
    """Send the request upstream with ``target`` and ``headers`` (no framing
    fields: the engine adds them). ``secrets`` are values to redact from any
    message built from the upstream's answer; ``who`` labels the log line."""

    target: str
    headers: tuple[tuple[str, str], ...]
    secrets: tuple[str, ...] = ()
    who: str | None = None
    close: bool = False  # the client's connection closes after this answer
    key: str = ""  # the caller's key fingerprint, for the log and metrics
    # The request body the engine read for the policy (NeedBody): sent with a Content-Length.
    body: bytes | None = field(default=None, repr=False)
    # Called once by the engine when the request ends, however it ends (a per-key count).
    release: Callable[[], None] | None = None
    # The answer's body is buffered (at most ``filter_limit`` bytes) and passed through this
    # before the client sees it (a listing shown to a model-restricted key).
    filter_answer: Callable[[int, bytes], bytes] | None = None
    filter_limit: int = 0


@dataclass(frozen=True)
class NeedBody:
    """The policy cannot decide from the head alone: the engine reads the whole
    request body (at most ``limit`` bytes, else 413) before anything goes upstream,
    then calls ``then(body)`` for the decision."""

    limit: int
    then: Callable[[bytes], Forward | Answer]
    who: str | None = None  # the caller, for the log of an answer the engine gives itself (413, 400)
    key: str = ""


@dataclass(frozen=True)
class Answer:
    """Answer the client directly: ``message`` in the body each client reads
    (:meth:`payload`); 204 has no body. ``reason`` is the refusal's class (the
    log, the metrics, the ``X-Ollama-Reason`` header the engine adds and, on a 401,
    the reason phrase); ``key`` the caller's
    fingerprint when known; ``hint`` a line for the operator's log only."""

    status: int
    message: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    who: str | None = None
    keep_alive: bool = False  # only honoured when the request had no body left to read
    body: bytes | None = field(default=None, repr=False)
    about: tuple[str, str] | None = None  # (method, target) the answer is about, if not the received one
    key: str = ""
    reason: str = ""
    hint: str = ""
    model: str = ""  # the model a refusal is about, when the policy read it: the log's ``model``

    def payload(self, path: str = "") -> bytes:
        """The body for a request to ``path``, in the shape its client reads.

        ``/v1/*``: OpenAI's, as Ollama's own ``openai.NewError`` writes it
        (openai/openai.go: ``{"error": {"message", "type", "param", "code"}}``,
        type ``invalid_request_error`` for 400, ``not_found_error`` for 404, else
        ``api_error``); ``code`` carries the reason class (OpenAI's own codes are
        such words), openai-python shows ``message``. Elsewhere Ollama's: its Go
        client (api/client.go ``checkError``) reads a 401 into ``AuthorizationError``,
        which prints only ``status``; any other code into ``StatusError``, which
        prints ``status: error`` (api/types.go), so there ``error`` alone.
        ollama-python reads ``error`` (``ResponseError``).
        """
        if self.body is not None:
            return self.body
        if self.status == 204:
            return b""
        if path == "/v1" or path.startswith("/v1/"):
            kind = {400: "invalid_request_error", 404: "not_found_error"}.get(self.status, "api_error")
            shaped: dict = {"error": {"message": self.message, "type": kind, "param": None, "code": self.reason or None}}
        elif self.status == 401:
            shaped = {"error": self.message, "status": self.message}
        else:
            shaped = {"error": self.message}
        return json.dumps(shaped).encode() + b"\n"

    def reason_phrase(self) -> str:
        """The status line's reason phrase. On a 401 it carries the short reason:
        Ollama's streaming calls show only the status line then (api/client.go
        ``stream``: ``AuthorizationError{Status: response.Status}``). RFC 9112
        4: any phrase a client must ignore; printable ASCII here."""
        phrase = REASONS.get(self.status, "")
        short = SHORT_REASONS.get(self.reason) if self.status == 401 else None
        if short:
            named = f": {self.key}" if self.reason == "unknown-key" and self.key else ""
            phrase = f"{phrase} ({short}{named})"
        return phrase


# The reason classes (PLAN.md) in a few words, for a 401's reason phrase.
SHORT_REASONS = {
    "unsigned": "not signed; set OLLAMA_AUTH=1",
    "malformed": "malformed signature or ts",
    "stale": "signature ts outside the allowed skew; sync your clock",
    "unknown-key": "key not in the server's authorized_keys",
    "bad-signature": "signature does not verify",
    "keyfile-unusable": "the server's authorized_keys is unusable; tell its operator",
    "expired": "key expired",
    "token": "missing or wrong local access token",
}


def head_problem(raw: bytes, head: Head) -> str | None:
    """Why a head that h11 accepted must still be refused (400), or None.

    ``raw`` is the bytes received up to and including the head (leading empty
    lines already dropped); the body that may follow it is ignored.
    """
    end = raw.find(b"\r\n\r\n")
    if end > MAX_HEAD_BYTES or (end < 0 and len(raw) > MAX_HEAD_BYTES):
        return "the request head is too large"  # h11 bounds only a head that arrives in pieces
    text = raw[:end] if end >= 0 else raw
    if end < 0 or text.count(b"\n") != text.count(b"\r\n"):
        return "a line of the request head ends in a bare LF"  # RFC 9112 2.2: MAY accept; we do not
    if b"\n " in text or b"\n\t" in text:
        return "folded header lines are not allowed"  # RFC 9112 5.2: obs-fold, reject
    if head.version not in ("1.1", "1.0"):
        return "unsupported HTTP version"
    if not head.target.startswith("/"):
        return "the request target must be a path (origin form)"
    if len(head.headers) > MAX_HEADERS:
        return "too many header fields"
    encodings, lengths = head.get_all("transfer-encoding"), head.get_all("content-length")
    if encodings and lengths:
        return "both Content-Length and Transfer-Encoding"  # RFC 9112 6.1: a server MAY reject; smuggling
    if encodings and head.version == "1.0":
        return "Transfer-Encoding in an HTTP/1.0 request"  # RFC 9112 6.1
    if len(head.get_all("host")) > 1:
        return "more than one Host header"
    return None


def connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Field names listed in Connection: hop-by-hop for this message too (RFC 9110 7.6.1)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }


def field_key(name: str) -> str:
    """A field name as compared by every strip rule: lower case, with ``_`` read as
    ``-``. Servers behind us may do either (nginx with underscores_in_headers,
    CGI-style frameworks map both to one variable), so a rule that misses
    ``X_Ollama_User`` would let a client copy through."""
    return name.lower().replace("_", "-")


def end_to_end(headers: Sequence[tuple[str, str]], also_drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The fields an intermediary passes on: no hop-by-hop field, none that
    Connection names, no framing field, nothing in ``also_drop`` (lower case,
    with ``-``); each name compared through :func:`field_key`."""
    dropped = HOP_BY_HOP | FRAMING | {field_key(token) for token in connection_tokens(headers)} | also_drop
    return [(name, value) for name, value in headers if field_key(name) not in dropped]


def request_has_body(head: Head) -> bool:
    if head.get_all("transfer-encoding"):
        return True
    return any(value.strip() not in ("", "0") for value in head.get_all("content-length"))

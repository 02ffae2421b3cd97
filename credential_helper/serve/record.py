"""One request as the operator sees it: the record the engine fills, and its
text and JSON log lines. Pure: no socket, no clock of its own, no I/O.

What a record never holds: a signature, the ``Authorization`` value, ``ts`` or
any other query value (``path`` is the target without its query), a token. Every
string in it went through ``sanitize.printable`` and a bound before it got here
or goes through it when a line is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import sanitize

# Ollama's routes (server/routes.go at fb30760 ``r.GET``/``r.POST``/...), the only
# values the metrics' ``endpoint`` label takes besides "other": a caller cannot grow
# the label set with made-up paths. Parameterised routes are named by their prefix.
ENDPOINTS = frozenset(
    {
        "/",
        "/api/delete",
        "/api/ps",
        "/api/status",
        "/api/tags",
        "/api/version",
        "/api/chat",
        "/api/copy",
        "/api/create",
        "/api/embed",
        "/api/embeddings",
        "/api/generate",
        "/api/me",
        "/api/pull",
        "/api/push",
        "/api/show",
        "/api/signout",
        "/api/experimental/model-recommendations",
        "/api/experimental/web_fetch",
        "/api/experimental/web_search",
        "/v1/models",
        "/v1/audio/transcriptions",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
    }
)
PREFIXED = ("/api/blobs/", "/api/user/keys/", "/v1/models/")  # ":digest", ":encodedKey", ":model"

# The reason classes (PLAN.md); the proxy adds token, origin and identity. Any other
# value is counted as "other", so the refusals label set stays bounded too.
REASONS = frozenset(
    {
        "unsigned",
        "malformed",
        "stale",
        "unknown-key",
        "bad-signature",
        "not-granted",
        "keyfile-unusable",
        "expired",
        "address",
        "model",
        "concurrency",
        "body",
        "upstream",
        "token",
        "origin",
        "identity",
    }
)


def endpoint(path: str) -> str:
    """The metrics label for a request path: an Ollama route, else "other"."""
    if path in ENDPOINTS:
        return path
    for prefix in PREFIXED:
        if path.startswith(prefix) and len(path) > len(prefix):
            return prefix + "*"
    return "other"


def reason_class(status: int | None, reason: str) -> str:
    """The bounded class of an answer: "" for a success, a REASONS word, or "other"."""
    if reason:
        return reason if reason in REASONS else "other"
    if not isinstance(status, int) or status < 400:
        return ""
    return "malformed" if status in (400, 431) else "upstream" if status in (502, 504) else "other"


@dataclass
class Record:
    """One request. ``status`` is None when no answer began (the client left, the
    upstream failed mid-answer); ``bytes`` are body bytes actually sent."""

    time: float  # seconds since the epoch, when the request head was read
    method: str
    path: str
    status: int | None
    bytes: int
    ms: float
    user: str = ""  # the key's name in authorized_keys
    key: str = ""  # the key's fingerprint (SHA256:...)
    reason: str = ""  # the refusal's or failure's class; "" for a success
    detail: str = ""  # the cause (502/504), the line to add for an unknown key, or the message (--verbose)
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    upstream_failure: str = ""  # connect, timeout, malformed, cut, stalled: an upstream that failed us

    @property
    def caller(self) -> str:
        """Who, as one word: the key's name, else its fingerprint, else "-"."""
        return self.user or self.key or "-"


def text_line(record: Record) -> str:
    """``METHOD PATH STATUS BYTESB MSms[ CALLER][ refused REASON| failed upstream][ (DETAIL)]``:
    the caller when known (the proxy's is always its token's holder: none shown); REASON
    is the word X-Ollama-Reason and the JSON line carry, ``upstream`` included."""
    status = record.status if record.status is not None else "-"
    line = f"{sanitize.shown(record.method, 16)} {sanitize.shown(record.path, 200)} {status} {max(record.bytes, 0)}B {record.ms:.0f}ms"
    if record.user or record.key:
        line += f" {sanitize.shown(record.caller, 100)}"
    if record.reason:
        line += f" refused {record.reason}" if record.reason != "upstream" else " failed upstream"
    if record.detail:
        line += f" ({sanitize.shown(record.detail, 300)})"
    return line


def json_line(record: Record) -> str:
    """One JSON object for log shippers: the fields every line has, null when unknown."""
    shown = {
        "time": _rfc3339(record.time),
        "method": sanitize.shown(record.method, 16),
        "path": sanitize.shown(record.path, 200),
        "status": record.status,
        "bytes": max(record.bytes, 0),
        "ms": round(record.ms, 3),
        "user": sanitize.shown(record.user, 100) or None,
        "key": record.key or None,
        "reason": record.reason or None,
        "detail": sanitize.shown(record.detail, 300) or None,
        "endpoint": endpoint(record.path),
        "model": sanitize.shown(record.model, 200) or None,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
    }
    return json.dumps(shown, ensure_ascii=True, separators=(",", ":"))


def _rfc3339(seconds: float) -> str:
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


Observer = Callable[[Record], None]  # what a Server hands each request's record to


class Logger:
    """The observer that writes each record as a log line (``--log-format text|json``)."""

    def __init__(self, write: Callable[[str], None], log_format: str = "text") -> None:
        self.write = write
        self.format = json_line if log_format == "json" else text_line

    def __call__(self, record: Record) -> None:
        self.write(self.format(record))


def fan_out(*observers: Observer | None) -> Observer:
    """One observer that calls each of ``observers`` (None skipped) in turn."""
    chosen = [observer for observer in observers if observer is not None]
    if len(chosen) == 1:
        return chosen[0]

    def observe(record: Record) -> None:
        for observer in chosen:
            observer(record)

    return observe

"""The heads of the answers the engine writes, as pure functions of what it
knows: an answer of its own (``messages.Answer``), or an upstream's answer head
passed on. No socket here, so every header rule is tested without one."""

from __future__ import annotations

import time
from collections.abc import Iterable

import h11

from . import record
from .messages import Answer, Forward, Head, end_to_end

# An upstream's reason phrase passed on: long enough for the gate's own 401 phrases (the
# unknown key's SHA256 fingerprint, about 110 characters), which Ollama's CLI shows alone on a
# streamed 401 (api/client.go stream); bounded, since it is an upstream's text.
REASON_PHRASE_LIMIT = 200


def own_answer(answer: Answer, head: Head | None, keep: bool) -> tuple[h11.Response, bytes]:
    """The head and body of an answer of our own to ``head`` (None: a head that
    could not be read), in its client's shape (``/v1``: OpenAI's)."""
    about = answer.about[1] if answer.about is not None else head.target if head is not None else ""
    payload = answer.payload(about.split("?", 1)[0])
    body = payload if (head is None or head.method != "HEAD") else b""
    headers = list(answer.headers)
    headers.append(("Date", http_date()))  # RFC 9110 6.6.1: a server with a clock sends Date
    reason = record.reason_class(answer.status, answer.reason)
    if reason:
        # Every refusal or failure of our own names its class (the log's and metrics' word), so
        # `doctor --host` and scripts tell it from an answer relayed from Ollama without reading prose.
        headers.append(("X-Ollama-Reason", reason))
    if answer.status != 204:
        if answer.body is None:
            headers.append(("Content-Type", "application/json"))
        headers.append(("Content-Length", str(len(payload))))  # a HEAD's too: what a GET would get
    if not keep:
        headers.append(("Connection", "close"))
    return h11.Response(status_code=answer.status, headers=headers, reason=answer.reason_phrase()), body


def relayed_head(event: h11.Response, close: bool) -> h11.Response:
    """An upstream's answer head as the client gets it: end-to-end fields only, its
    Content-Length kept (h11 would otherwise choose chunked), its reason phrase cleaned."""
    headers = end_to_end(_decoded(event))
    length = [value for name, value in event.headers if name == b"content-length"]
    if length and not any(name == b"transfer-encoding" for name, _ in event.headers):
        headers.append(("Content-Length", length[0].decode("latin-1")))
    if close:
        headers.append(("Connection", "close"))
    return h11.Response(status_code=event.status_code, headers=headers, reason=_reason(event))


def filtered_answer(event: h11.Response, body: bytes, forward: Forward, close: bool) -> tuple[h11.Response, bytes]:
    """A held answer (a model listing) with its body passed through the Forward's
    filter and a new Content-Length. ValueError: the gate cannot read or filter it."""
    encodings = [value.decode("latin-1").strip().lower() for name, value in event.headers if name == b"content-encoding"]
    if any(encoding not in ("", "identity") for encoding in encodings):
        raise ValueError("a compressed model listing, which the gate must read to filter")
    assert forward.filter_answer is not None  # only a filtering Forward's answer is held
    body = forward.filter_answer(event.status_code, body)
    headers = end_to_end(_decoded(event))
    headers.append(("Content-Length", str(len(body))))
    if close:
        headers.append(("Connection", "close"))
    return h11.Response(status_code=event.status_code, headers=headers, reason=_reason(event)), body


def content_type(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    return next((value.decode("latin-1") for name, value in headers if name == b"content-type"), None)


def _decoded(event: h11.Response) -> list[tuple[str, str]]:
    """Its fields with their names as the upstream spelled them."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers.raw_items()]


def _reason(event: h11.Response) -> str:
    from ..sanitize import printable

    return printable(event.reason.decode("latin-1"))[:REASON_PHRASE_LIMIT]  # cut, never with "..." added


_date_cache: list = [0, ""]


def http_date() -> str:
    """IMF-fixdate for ``Date`` (RFC 9110 5.6.7), formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        from email.utils import formatdate

        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]

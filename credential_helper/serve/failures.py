"""What the engine does when something fails, as pure rules: the failures it
tells apart, and the answer and log class each one gets. The engine
(serve/engine.py) raises and catches them; nothing here touches a socket."""

from __future__ import annotations

import socket
from typing import Any

import h11

from .messages import Answer

# A request body in pieces this small costs h11 ~4 us each (and the relay a write each): 32 MiB
# of 1-byte chunks was over 2 minutes of CPU. Past TINY_PIECES pieces, they must average TINY_BYTES.
TINY_PIECES, TINY_BYTES = 4096, 256
TINY_MESSAGE = f"the request body arrives in pieces of fewer than {TINY_BYTES} bytes on average; send it in larger chunks"


class ClientGone(Exception):
    """The client hung up or stopped reading: stop, and cut the upstream request."""


class Stale(Exception):
    """The upstream connection failed before any answer began."""


class BadBody(Exception):
    """The client's body turned malformed part-way."""


class UpstreamMalformed(Exception):
    """The upstream's answer head could not be read as HTTP/1.1."""


def tiny(pieces: int, size: int) -> bool:
    """True when a body's ``pieces`` so far average under TINY_BYTES (``size`` bytes in all)."""
    return pieces > TINY_PIECES and size < pieces * TINY_BYTES


def upstream_failure(exc: BaseException, where: str, secrets: tuple[str, ...], known: dict[str, Any]) -> tuple[Answer, str]:
    """The answer for an upstream that failed before its answer began, and the
    failure's class for the log and metrics (timeout, malformed, connect)."""
    from ..sanitize import server_text

    if isinstance(exc, (socket.timeout, TimeoutError)):
        return Answer(504, f"the upstream {where} did not answer in time", **known), "timeout"
    if isinstance(exc, UpstreamMalformed):
        text = server_text(f"the upstream {where} sent a malformed answer: {exc}", secrets, limit=300)
        return Answer(502, text, **known), "malformed"
    from ..transport import describe_failure

    detail = describe_failure(exc, where) if not isinstance(exc, Stale) else None
    text = detail or f"the connection to {where} failed before an answer"
    return Answer(502, server_text(text, secrets, limit=300), **known), "connect"


def protocol_message(exc: h11.ProtocolError) -> str:
    """h11's complaint about a malformed message, bounded and printable."""
    from ..sanitize import shown

    text = str(exc).split(":", 1)[0] if "bytearray(" in str(exc) else str(exc)
    return shown(text, 120) or "malformed request"

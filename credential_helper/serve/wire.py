"""The client's side of one connection: its socket (non-blocking, served by the
loop in loop.py), its h11 state machine, one reused read buffer, and what is
queued for it. The request loop (engine.py) and the relay (relay.py) read and
write the client only through this. Each method that waits is a generator the
connection's task runs with ``yield from``."""

from __future__ import annotations

import socket
import ssl
import time
from typing import cast

import h11

from . import steps
from .failures import ClientGone
from .limits import Limits
from .messages import MAX_HEAD_BYTES
from .loop import Task

RECV_BYTES = 65536  # one read, from the client or the upstream


class Wire:
    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self.sock = sock
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        # Every read lands here, allocated once: a fresh 64 KiB bytes per recv()
        # left glibc's heap holding freed memory under load (issue 21).
        self._buffer = memoryview(bytearray(RECV_BYTES))
        self._out = bytearray()  # bytes for the client not yet written
        self._out_body = 0
        self.sent = 0  # body bytes the client has been sent for the current answer

    def recv(self, sock: socket.socket, deadline: float | None) -> Task[bytes]:
        """One read (this client's socket or an upstream's) through the buffer, waiting
        until ``deadline`` (TimeoutError past it): only its bytes are copied out."""
        read = yield from steps.recv_into(sock, self._buffer, deadline)
        return self._buffer[:read].tobytes()

    def recv_now(self, sock: socket.socket) -> bytes | None:
        """What ``sock`` has at once (b"": the end of the stream), or None when it has nothing yet."""
        try:
            read = sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return None
        return self._buffer[:read].tobytes()

    def recv_into_buffer(self, deadline: float) -> Task[int]:
        """One read from the client whose bytes are not wanted (lingering): how many."""
        return (yield from steps.recv_into(self.sock, self._buffer, deadline))

    def request_read(self) -> bool:
        """The whole request is in: a read now is the next request or a hang-up."""
        return self.conn.their_state is h11.DONE or self.conn.their_state is h11.MUST_CLOSE

    def next_body_event(self) -> Task[h11.Event | type[h11.PAUSED]]:
        """The next event of the request body (Data, EndOfMessage, or what ends it),
        reading as needed and sending ``100 Continue`` to a client waiting for it.
        ClientGone: the client hung up or sent nothing for limits.body seconds.
        h11.RemoteProtocolError: the body turned malformed."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)  # mypy does not narrow on `is not`
            if self.conn.they_are_waiting_for_100_continue:
                yield from self.send(h11.InformationalResponse(status_code=100, headers=[]))
            try:
                # A body that stops arriving: limits.body for each read.
                data = yield from self.recv(self.sock, time.monotonic() + self.limits.body)
            except OSError:  # TimeoutError included
                raise ClientGone() from None
            if not data:
                raise ClientGone()
            self.conn.receive_data(data)

    def queue(self, event: h11.Event, body_bytes: int = 0) -> None:
        """Batch what is ready for the client (one write per upstream read)."""
        self._out += self.conn.send(event) or b""
        self._out_body += body_bytes

    def flush(self) -> Task[None]:
        """Write what is queued; a client that takes none of it for --timeout is gone."""
        if self._out:
            data, self._out = self._out, bytearray()
            try:
                yield from steps.send_all(self.sock, data, self.limits.upstream)
            except OSError:
                raise ClientGone() from None
        self.sent += self._out_body
        self._out_body = 0

    def send(self, event: h11.Event, timeout: float | None = None) -> Task[None]:
        """One event at once; ``timeout`` bounds each wait to write (default --timeout)."""
        data = self.conn.send(event)
        if data:
            try:
                yield from steps.send_all(self.sock, data, self.limits.upstream if timeout is None else timeout)
            except OSError:
                raise ClientGone() from None

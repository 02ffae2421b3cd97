"""The HTTP/1.1 intermediary engine: one client connection, h11 on both sides.

The engine decides nothing about credentials. For each request head it asks a
policy (``policy.decide(head)``, pure), then either answers for the policy or
hands the request to a Relay (relay.py), which sends it upstream and streams
the answer back. What it owns: reading each request head, deadlines, bodies a
policy reads whole, answers of its own, and one record per request. The
client's socket and h11 are wire.py's; answer heads are answers.py's (pure);
listening, the connection cap and stopping are server.py's. A connection is a
task on the server's one loop (loop.py): where it would block it yields what
it waits for, so its code still reads in order.

Rules it keeps (each cites why):
- a request head must arrive within limits.head in total; until it has, the
  connection may be closed to make room at the cap (server.py);
- a policy that needs the body to decide (``NeedBody``, the gate's models=) gets
  all of it before a byte goes upstream, bounded (413 over, limits.body per
  read as a relayed body, 503 past the server's body_budget for all
  connections); a Forward's ``release`` is called once however the request ends;
- refused while the client is still sending: read what it sends for a moment
  before closing (nginx's lingering_close).
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import time
from typing import TYPE_CHECKING

import h11

from . import answers, record
from .failures import TINY_MESSAGE, ClientGone, protocol_message, tiny
from .loop import Task
from .steps import fair, handshake, off_loop
from .messages import MAX_HEAD_BYTES, Answer, Forward, Head, NeedBody, head_problem, request_has_body
from .relay import Relay
from .wire import Wire

if TYPE_CHECKING:
    from .server import Server


class ClientConnection:
    """One client connection: requests in order, each answered or relayed. ``run``
    is its task on the server's loop (loop.py): every wait is a ``yield``."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.limits = server.limits
        self.peer = peer_address(sock)  # once per connection, for Head.peer (from=, X-Forwarded-For)
        self.wire = Wire(sock, server.limits)
        self.conn = self.wire.conn
        self.evicted = False
        self.held = 0  # bytes of a body read for the policy or an answer held to filter, in server.body_budget

    def evict(self) -> None:
        self.evicted = True
        try:
            # The TCP socket's shutdown, never SSLSocket.shutdown: that one drops the TLS
            # object, and the task's next handshake step or read raised AttributeError.
            socket.socket.shutdown(self.wire.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> Task[None]:
        try:
            try:
                yield from self._requests()
            except (OSError, ssl.SSLError, ClientGone):
                pass
            except Exception as exc:  # a bug must cost one connection, never the server, and no traceback
                self.server.log(
                    f"internal error ({type(exc).__name__}) while serving a request; rerun with --verbose and report it"
                )
            yield from self._linger()
        finally:  # no yield here: a task the loop drops at exit is closed (GeneratorExit)
            self.server.closed(self)
            try:
                self.wire.sock.close()
            except OSError:
                pass

    def _requests(self) -> Task[None]:
        if self.server.tls_context is not None:
            tls = self.server.tls_context.wrap_socket(self.wire.sock, server_side=True, do_handshake_on_connect=False)
            self.wire.sock = tls
            yield from handshake(tls, time.monotonic() + self.limits.head)
        first = True
        while not self.server.stopping.is_set():
            head = yield from self._read_head(self.limits.head if first else self.limits.idle)
            first = False
            if head is None or not (yield from self._serve(head)):
                break
            self.conn.start_next_cycle()

    def _linger(self) -> Task[None]:
        """Before closing on a client still sending its body (a refusal answered
        early) or a head refused mid-way (431, 400), read what it sends for a
        moment: closing with unread bytes makes the kernel send a reset, which can
        destroy the answer before the client reads it (nginx's lingering_close;
        RFC 9112 9.6)."""
        if (self.conn.their_state is not h11.SEND_BODY and self.conn.their_state is not h11.ERROR) or self.evicted:
            return
        self.server.idle(self, True)  # still counted at the cap, and the first to make room
        if not isinstance(self.wire.sock, ssl.SSLSocket):
            try:
                self.wire.sock.shutdown(socket.SHUT_WR)  # the answer is complete: say so
            except OSError:
                return
        deadline, left = time.monotonic() + self.limits.linger, self.limits.linger_bytes
        try:
            while left > 0:
                read = yield from self.wire.recv_into_buffer(deadline)
                if not read:
                    return
                left -= read
                yield from fair()
        except (OSError, ssl.SSLError):  # TimeoutError included
            return

    # -- the request head --------------------------------------------------------------------

    def _read_head(self, idle_timeout: float) -> Task[Head | None]:
        """The next request head, checked; None when the connection should end."""
        raw = bytearray(self.conn.trailing_data[0])  # a pipelined request already received
        deadline = time.monotonic() + (self.limits.head if raw else idle_timeout)
        started = bool(raw)
        # Until its head is complete a connection may be closed to make room at
        # the cap: idle or trickling, it holds nothing that would be lost.
        self.server.idle(self, True)
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.server.idle(self, False)
                yield from self._answer_bad_head(exc)
                return None
            if isinstance(event, h11.Request):
                self.server.idle(self, False)
                head = Head(
                    event.method.decode("latin-1"),
                    event.target.decode("latin-1"),
                    event.http_version.decode("latin-1"),
                    tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers.raw_items()),
                    peer=self.peer,
                )
                problem = head_problem(bytes(raw), head)
                if problem is not None:
                    yield from self.finish(head, Answer(400, problem, reason="malformed"), time.monotonic())
                    return None
                return head
            if event is not h11.NEED_DATA:  # ConnectionClosed
                return None
            left = deadline - time.monotonic()
            if left <= 0 or self.evicted:
                return None
            try:
                data = yield from self.wire.recv(self.wire.sock, deadline)
            except TimeoutError:
                return None
            if self.evicted:
                return None
            if data and not raw:
                data = data.lstrip(b"\r\n")  # RFC 9112 2.2: ignore empty lines before a request
                if not data:
                    continue
            if data and not started:
                started = True
                deadline = time.monotonic() + self.limits.head  # the whole head, not per read
            if len(raw) <= MAX_HEAD_BYTES:
                raw += data
            self.conn.receive_data(data)

    def _answer_bad_head(self, exc: h11.RemoteProtocolError) -> Task[None]:
        status = 431 if exc.error_status_hint == 431 else 400
        message = protocol_message(exc)
        if self.conn.our_state is h11.IDLE or self.conn.our_state is h11.SEND_RESPONSE:
            yield from self._write_answer(Answer(status, message, reason="malformed"), None)
        self.log(
            Head("-", "-", "", ()), status, 0, time.monotonic(), reason="malformed", detail=message if self.server.verbose else ""
        )

    # -- one request ---------------------------------------------------------------------------

    def _serve(self, head: Head) -> Task[bool]:
        """Answer or relay one request; True to keep the connection for another."""
        try:
            return (yield from self._serve_one(head))
        finally:
            if self.held:
                self.server.body_budget.give(self.held)  # the body read for the policy is done with
                self.held = 0

    def _serve_one(self, head: Head) -> Task[bool]:
        started = time.monotonic()
        decision = self.server.policy.decide(head)
        if isinstance(decision, NeedBody):
            decision = yield from self._decide_with_body(head, decision)
        if isinstance(decision, Answer):
            return (yield from self.finish(head, decision, started))
        try:
            if not self.server.slots.acquire(blocking=False):
                return (
                    yield from self.finish(
                        head,
                        Answer(
                            503,
                            "the server is at its concurrency limit; try again shortly",
                            headers=(("Retry-After", "1"),),  # RFC 9110 10.2.3, as the held-bodies 503
                            reason="concurrency",
                            who=decision.who,
                            key=decision.key,
                        ),
                        started,
                    )
                )
            self.server.count_in_flight(+1)
            user = decision.who if decision.who and decision.who != decision.key else ""
            self.server.flight(user, +1)
            try:
                return (yield from Relay(self, head, decision, started).run())
            finally:
                self.server.flight(user, -1)
                self.server.count_in_flight(-1)
                self.server.slots.release()
        finally:
            if decision.release is not None:
                decision.release()  # a per-key count: the answer ended or the client went

    def _decide_with_body(self, head: Head, need: NeedBody) -> Task[Forward | Answer]:
        """Read the whole request body (bounded) before anything goes upstream, then
        ask the policy again; a Forward carries the bytes read (sent with Content-Length)."""
        body = yield from self._read_whole_body(head, need.limit)
        if isinstance(body, Answer):
            return dataclasses.replace(body, who=need.who, key=need.key)
        decision = yield from off_loop(len(body), lambda: need.then(body))
        if isinstance(decision, Forward) and decision.body is None:
            decision = dataclasses.replace(decision, body=body)
        return decision

    def _read_whole_body(self, head: Head, limit: int) -> Task[bytes | Answer]:
        too_large = Answer(
            413, f"the request body is larger than the {limit} bytes this gate reads to check which model it names", reason="body"
        )
        length = head.get("content-length")
        if length is not None and int(length.split(",")[0]) > limit:
            return too_large  # before reading a byte (a client waiting for 100-continue sends nothing)
        body = bytearray()
        pieces = 0
        while True:
            try:
                event = yield from self.wire.next_body_event()
            except h11.RemoteProtocolError as exc:
                return Answer(400, protocol_message(exc), reason="body")
            if isinstance(event, h11.Data):
                if len(body) + len(event.data) > limit:
                    return too_large
                pieces += 1
                if tiny(pieces, len(body) + len(event.data)):
                    return Answer(400, TINY_MESSAGE, reason="body")
                if not self.server.body_budget.take(len(event.data)):
                    # All connections together hold as many bodies as the gate allows itself.
                    return Answer(
                        503,
                        "the gate is holding as many request bodies as it may to check their models; retry shortly",
                        headers=(("Retry-After", "1"),),
                        reason="body",
                    )
                self.held += len(event.data)
                body += event.data
                yield from fair()
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise ClientGone()

    def finish(self, head: Head, answer: Answer, started: float, failure: str = "") -> Task[bool]:
        keep = answer.keep_alive and not request_has_body(head) and not self.server.stopping.is_set()
        if keep and self.conn.their_state is h11.SEND_BODY:
            keep = self._take_empty_body()
        if keep and self.conn.trailing_data[0]:
            # Requests queued behind an answer of our own: a client that sends
            # refusals back to back and never reads them would hold a connection
            # (and the cap) for nothing. Front servers send one at a time.
            keep = False
        written = yield from self._write_answer(answer, head, keep)
        reason = record.reason_class(answer.status, answer.reason)
        # The cause of a 502/504 and the line to add for an unknown key always; other messages with --verbose.
        detail = answer.hint or (answer.message if reason == "upstream" or (self.server.verbose and answer.status >= 400) else "")
        shown = head if answer.about is None else Head(*answer.about, head.version, ())
        self.log(
            shown,
            answer.status,
            written,
            started,
            who=answer.who,
            key=answer.key,
            reason=reason,
            detail=detail,
            failure=failure,
            model=answer.model,
        )
        return keep and written >= 0 and self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def _take_empty_body(self) -> bool:
        """Take the end of a request without a body from h11 (it needs no bytes):
        until then h11 holds the request open, and an answer of our own that
        promised keep-alive would be followed by a close (RFC 9112 9.6 asks for
        Connection: close then). False: not that simple; close as before."""
        try:
            return isinstance(self.conn.next_event(), h11.EndOfMessage)
        except h11.RemoteProtocolError:
            return False

    def _write_answer(self, answer: Answer, head: Head | None, keep: bool = False) -> Task[int]:
        """Write an answer of our own; the body bytes written, -1 if the client did not take it."""
        response, body = answers.own_answer(answer, head, keep)
        try:
            # An answer of our own is small: a client that does not take it within
            # limits.head is not reading (the relay's writes wait --timeout).
            yield from self.wire.send(response, self.limits.head)
            if body:
                yield from self.wire.send(h11.Data(data=body), self.limits.head)
            yield from self.wire.send(h11.EndOfMessage(), self.limits.head)
        except (ClientGone, h11.LocalProtocolError):
            return -1
        return len(body)

    # -- the record ----------------------------------------------------------------------------

    def log(
        self,
        head: Head,
        status: int | str | None,
        size: int,
        started: float,
        *,
        who: str | None = None,
        key: str = "",
        reason: str = "",
        detail: str = "",
        failure: str = "",
        model: str = "",
        tokens: tuple[int, int, str] | None = None,
    ) -> None:
        """One record per request to the server's observer (log line, metrics)."""
        elapsed = time.monotonic() - started
        self.server.observe(
            record.Record(
                time=time.time() - elapsed,
                method=head.method,
                path=head.path,
                status=status if isinstance(status, int) else None,
                bytes=size,
                ms=elapsed * 1000,
                user=who if who and who != key else "",
                key=key,
                reason=reason,
                detail=detail,
                model=model,
                prompt_tokens=tokens[0] if tokens else None,
                completion_tokens=tokens[1] if tokens else None,
                upstream_failure=failure,
            )
        )


def peer_address(sock: socket.socket) -> str:
    """The client's IP address; an IPv4-mapped IPv6 one (a dual-stack listener) as IPv4."""
    try:
        address = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        return ""
    if not isinstance(address, str):
        return ""
    if address[:7].lower() == "::ffff:" and "." in address:
        return address[7:]
    return address

"""One forwarded request: to the upstream and its answer back, streamed.

Rules kept here (each cites why):
- an upstream ``1xx`` is never taken for the answer (h11 models interim answers);
  a connection goes back to the pool only after both messages ended cleanly;
- an upstream body cut short cuts the client's connection: never kept alive;
- only a safe method without a body is retried on a fresh connection, and only
  when a reused connection failed before any answer (RFC 9110 9.2.1, RFC 9112 9.3.1);
- the upstream's answer head must arrive within --timeout in total, each later
  wait for more of its body within --timeout;
- a body the policy read whole (``NeedBody``) goes on with one Content-Length,
  never chunked as well (RFC 9112 6.1); a Forward's ``filter_answer`` holds the
  answer whole (bounded, a compressed one refused) and sends it with its new length.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from typing import TYPE_CHECKING, Any

import h11

from . import answers, usage
from .failures import TINY_MESSAGE, BadBody, ClientGone, Stale, UpstreamMalformed, protocol_message, tiny, upstream_failure
from .loop import Task, Wait
from .steps import fair, off_loop
from .messages import MAX_HEAD_BYTES, Answer, Forward, Head, request_has_body

if TYPE_CHECKING:
    from .engine import ClientConnection
    from .upstream import Connection

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1


class Relay:
    def __init__(self, client: ClientConnection, head: Head, forward: Forward, started: float) -> None:
        self.client = client
        self.wire = client.wire
        self.server = client.server
        self.limits = client.limits
        self.head = head
        self.forward = forward
        self.started = started
        self.status: int | None = None  # the answer's status, once its head went out
        self.usage: usage.Scanner | None = None  # token counts of the answer being relayed
        self.watching = False  # reading the client while the upstream answers (a hang-up, a pipelined request)

    def run(self) -> Task[bool]:
        """Relay the request and its answer; True when the client's connection may carry another."""
        head, forward = self.head, self.forward
        upstream = self.server.upstream
        assert upstream is not None  # only a policy with an upstream forwards (--auth-only answers all)
        has_body = request_has_body(head)
        headers = list(forward.headers)
        length = head.get("content-length")
        if forward.body is not None and (has_body or forward.body):
            headers.append(("Content-Length", str(len(forward.body))))  # read whole: one framing, never both
        elif has_body:
            headers.append(
                ("Content-Length", str(int(length.split(",")[0]))) if length is not None else ("Transfer-Encoding", "chunked")
            )
        request = h11.Request(method=head.method, target=upstream.request_target(forward.target), headers=headers)
        replayable = head.method in SAFE_METHODS and not has_body
        secrets = forward.secrets + upstream.secrets()
        for attempt in (1, 2):
            try:
                up, reused = yield from upstream.take()
            except Exception as exc:  # OSError, TLS, a refused CONNECT tunnel
                return (yield from self._upstream_failed(exc, secrets))
            try:
                yield from up.send(request)
                if forward.body is not None:
                    yield from self._send_buffered(up, forward.body)
                else:
                    yield from self._send_body(up)
                return (yield from self._answer_from(up))
            except Stale as exc:
                up.close()
                if not (reused and replayable and attempt == 1):
                    return (yield from self._upstream_failed(exc.__cause__ or exc, secrets))
            except ClientGone:
                up.close()
                self._log(self.status, detail="client gone")
                return False
            except BadBody as exc:
                up.close()  # the upstream never sees a complete request
                answer = Answer(400, str(exc), who=forward.who, key=forward.key, reason="body")
                yield from self.client.finish(head, answer, self.started)
                return False
            except (OSError, ssl.SSLError, h11.ProtocolError, UpstreamMalformed) as exc:
                up.close()
                return (yield from self._upstream_failed(exc, secrets))
        return False  # pragma: no cover

    def _send_body(self, up: Connection) -> Task[None]:
        """The client's request body to the upstream as it arrives."""
        if self.wire.request_read():  # a retry: the body (none) was read before
            yield from up.send(h11.EndOfMessage())
            return
        pieces = size = 0
        while True:
            try:
                event = yield from self.wire.next_body_event()
            except h11.RemoteProtocolError as exc:
                raise BadBody(protocol_message(exc)) from None
            try:
                if isinstance(event, h11.Data):
                    pieces, size = pieces + 1, size + len(event.data)
                    if tiny(pieces, size):
                        raise BadBody(TINY_MESSAGE)
                    yield from up.send(h11.Data(data=bytes(event.data)))
                    yield from fair()
                elif isinstance(event, h11.EndOfMessage):
                    yield from up.send(h11.EndOfMessage())
                    return
                else:
                    raise ClientGone()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise Stale() from exc

    def _send_buffered(self, up: Connection, body: bytes) -> Task[None]:
        """A body read before the decision (NeedBody), whole."""
        try:
            if body:
                yield from up.send(h11.Data(data=body))
            yield from up.send(h11.EndOfMessage())
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Stale() from exc

    def _answer_from(self, up: Connection) -> Task[bool]:
        """Relay the upstream's answer; True when both connections may carry another request."""
        head, forward, wire = self.head, self.forward, self.wire
        wire.sent = 0
        status = None
        received = False
        # A listing for a model-restricted key: held whole, filtered, then sent. Until then
        # nothing has reached the client, so a failure is still a 502/504 of our own.
        filtering = forward.filter_answer is not None and head.method != "HEAD"
        held, buffered = None, bytearray()
        # --timeout bounds each wait for more of a body, but the answer's head as a
        # whole: one byte at a time must not hold a request forever.
        head_deadline = time.monotonic() + self.limits.upstream
        self.watching = wire.request_read()  # a read from the client now means a hang-up (or the next request)
        while True:
            yield from fair()
            try:
                event = up.h11.next_event()
            except h11.RemoteProtocolError as exc:
                if status is None:
                    raise UpstreamMalformed(protocol_message(exc)) from None
                return (yield from self._cut(up, "upstream cut its answer short"))
            if event is h11.NEED_DATA:
                yield from wire.flush()  # what arrived goes out before we wait for more
                data = yield from self._wait_upstream(up, status is None, head_deadline if status is None else None)
                if data is None:  # timed out
                    if status is None:
                        raise TimeoutError()
                    return (yield from self._cut(up, "upstream stalled"))
                if not data and not received:
                    raise Stale()  # closed before a byte of an answer: a kept-alive connection gone stale
                received = True
                up.h11.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue  # interim (100, 103): never the answer; the final one follows
            if isinstance(event, h11.Response):
                if event.status_code == 101:
                    raise UpstreamMalformed("the upstream switched protocols, which the client did not ask for")
                if filtering:
                    held = event
                    continue
                self.status = status = event.status_code
                wire.queue(answers.relayed_head(event, self._closing()))
                counting = status == 200 and self.server.count_usage and usage.wanted(answers.content_type(event.headers))
                self.usage = usage.Scanner() if counting else None
            elif isinstance(event, h11.Data) and filtering:
                buffered += event.data
                if len(buffered) > forward.filter_limit:
                    raise UpstreamMalformed(f"an answer to filter larger than {forward.filter_limit} bytes")
                # Held answers share the budget of held request bodies: a key allowed one model
                # must not make the gate hold 128 answers of 32 MiB each.
                if not self.server.body_budget.take(len(event.data)):
                    up.close()
                    busy = "the gate is holding as many answers as it may to filter them; retry shortly"
                    answer = Answer(503, busy, headers=(("Retry-After", "1"),), who=forward.who, key=forward.key)
                    yield from self.client.finish(head, dataclasses.replace(answer, reason="body"), self.started)
                    return False
                self.client.held += len(event.data)
            elif isinstance(event, h11.Data):
                wire.queue(h11.Data(data=bytes(event.data)), len(event.data))
                if self.usage is not None:
                    self.usage.feed(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if filtering:
                    assert held is not None  # h11: the answer's head comes before its end
                    self.status = status = held.status_code
                    yield from self._queue_filtered(held, bytes(buffered))  # may raise: before pooling
                # Pooled before the client can see the end: its next request may follow at once.
                # From here the connection is the pool's: a client gone now must not close it.
                assert self.server.upstream is not None  # it is relaying (see run)
                self.server.upstream.give_back(up)
                wire.queue(h11.EndOfMessage())
                try:
                    yield from wire.flush()
                except ClientGone:
                    self._log(status, detail="client gone")
                    return False
                self._log(status)
                return wire.conn.our_state is h11.DONE and wire.conn.their_state is h11.DONE and not forward.close
            else:  # ConnectionClosed before an answer
                if status is None:
                    raise Stale()
                return (yield from self._cut(up, "upstream cut its answer short"))

    def _closing(self) -> bool:
        return self.forward.close or self.server.stopping.is_set()

    def _queue_filtered(self, event: h11.Response, body: bytes) -> Task[None]:
        closing = self._closing()
        try:
            response, body = yield from off_loop(len(body), lambda: answers.filtered_answer(event, body, self.forward, closing))
        except ValueError as exc:
            raise UpstreamMalformed(f"a model listing the gate cannot read ({exc})") from None
        self.wire.queue(response)
        if body:
            self.wire.queue(h11.Data(data=body), len(body))

    def _wait_upstream(self, up: Connection, before_answer: bool, deadline: float | None = None) -> Task[bytes | None]:
        """The next bytes from the upstream, watching the client for a hang-up meanwhile;
        None once ``deadline`` (default: --timeout from now) has passed."""
        wire = self.wire
        if deadline is not None and time.monotonic() >= deadline:
            return None  # an upstream that always has bytes ready (endless 1xx) still meets --timeout
        if deadline is None:
            deadline = time.monotonic() + self.limits.upstream
        while True:
            try:
                data = wire.recv_now(up.sock)  # under load it is often there already: no wait
            except (ConnectionResetError, BrokenPipeError) as exc:
                if before_answer:
                    raise Stale() from exc
                raise
            if data is not None:
                return data
            ready = yield Wait(read=(up.sock, wire.sock) if self.watching else (up.sock,), deadline=deadline)
            if not ready:
                return None
            if wire.sock in ready:
                try:
                    data = wire.recv_now(wire.sock)
                except OSError:
                    raise ClientGone() from None
                if data is not None:
                    if not data:
                        raise ClientGone()
                    wire.conn.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle
                    if len(wire.conn.trailing_data[0]) > MAX_HEAD_BYTES:
                        self.watching = False  # enough read ahead; stop watching

    def _cut(self, up: Connection, why: str) -> Task[bool]:
        up.close()
        yield from self.wire.flush()  # what did arrive, then the connection closes
        self._log(self.status, detail=why, failure="stalled" if "stalled" in why else "cut")
        return False  # the client's connection closes mid-answer: it sees a cut message

    def _upstream_failed(self, exc: BaseException, secrets: tuple[str, ...]) -> Task[bool]:
        conn = self.wire.conn
        if conn.our_state is not h11.SEND_RESPONSE and conn.our_state is not h11.IDLE:
            self._log(None, detail="upstream failed mid-answer", failure="cut")
            return False
        where = self.server.upstream.url.host if self.server.upstream is not None else "-"
        known: dict[str, Any] = {"who": self.forward.who, "key": self.forward.key, "reason": "upstream"}
        answer, failure = upstream_failure(exc, where, secrets, known)
        yield from self.client.finish(self.head, answer, self.started, failure)
        return False

    def _log(self, status: int | None, detail: str = "", failure: str = "") -> None:
        counted = self.usage.result() if self.usage is not None and not failure else None
        self.usage = None
        forward = self.forward
        self.client.log(
            self.head,
            status,
            self.wire.sent,
            self.started,
            who=forward.who,
            key=forward.key,
            detail=detail,
            failure=failure,
            reason="upstream" if failure else "",
            tokens=counted,
            # The model the policy read from the request, else the one Ollama's answer names.
            model=getattr(forward, "model", None) or (counted[2] if counted else ""),
        )

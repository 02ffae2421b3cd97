"""The HTTP/1.1 intermediary engine: one client connection, h11 on both sides.

The engine decides nothing about credentials. For each request head it asks a
policy (``policy.decide(head)``, pure), then either answers for the policy or
relays the request to the upstream and the answer back, streaming both ways.
What it owns: framing (h11), deadlines, client hang-up, and one log line per
request. Listening, the connection cap and stopping are serve/server.py's.

Rules it keeps (each cites why):
- an upstream ``1xx`` is never taken for the answer (h11 models interim answers);
  a connection goes back to the pool only after both messages ended cleanly;
- an upstream body cut short cuts the client's connection: never kept alive;
- only a safe method without a body is retried on a fresh connection, and only
  when a reused connection failed before any answer (RFC 9110 9.2.1, RFC 9112 9.3.1);
- a request head must arrive within limits.head in total; until it has, the
  connection may be closed to make room at the cap (server.py);
- a policy that needs the body to decide (``NeedBody``, the gate's models=) gets
  all of it before a byte goes upstream, bounded (413 over, limits.body per
  read as a relayed body, 503 past the server's body_budget for all connections), and the body goes on with one Content-Length, never
  chunked as well (RFC 9112 6.1); a Forward's ``filter_answer`` holds the answer
  whole (bounded, a compressed one refused) and sends it with its new length;
  a Forward's ``release`` is called once however the request ends.
"""

from __future__ import annotations

import dataclasses
import selectors
import socket
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import h11

from . import record, usage
from .failures import TINY_MESSAGE, BadBody, ClientGone, Stale, UpstreamMalformed, protocol_message, tiny, upstream_failure
from .messages import MAX_HEAD_BYTES, Answer, Forward, Head, NeedBody, end_to_end, head_problem, request_has_body
from .upstream import Selector, set_timeout

if TYPE_CHECKING:
    from .server import Server
    from .upstream import Connection

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 9.2.1
# An upstream's reason phrase passed on: long enough for the gate's own 401 phrases (the
# unknown key's SHA256 fingerprint, about 110 characters), which Ollama's CLI shows alone on a
# streamed 401 (api/client.go stream); bounded, since it is an upstream's text.
REASON_PHRASE_LIMIT = 200
RECV_BYTES = 65536  # one read, from the client or the upstream


class ClientConnection:
    """One client connection: requests in order, each answered or relayed."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.limits = server.limits
        self.peer = peer_address(sock)  # once per connection, for Head.peer (from=, X-Forwarded-For)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        # Every read lands here, allocated once: a fresh 64 KiB bytes per recv()
        # left glibc's per-thread arenas holding freed heap under load (issue 21).
        self._buffer = memoryview(bytearray(RECV_BYTES))
        self.evicted = False
        self.sent = 0  # body bytes the client has been sent for the current answer
        self.status: int | None = None  # the status of the answer being relayed, once its head went out
        self._out = bytearray()  # bytes for the client not yet written
        self._out_body = 0
        self.usage: usage.Scanner | None = None  # token counts of the answer being relayed
        self._held = 0  # bytes of a body read for the policy, counted in server.body_budget

    def evict(self) -> None:
        self.evicted = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> None:
        try:
            if self.server.tls_context is not None:
                self.sock.settimeout(self.limits.head)
                self.sock = self.server.tls_context.wrap_socket(self.sock, server_side=True)
            first = True
            while not self.server.stopping.is_set():
                head = self._read_head(self.limits.head if first else self.limits.idle)
                first = False
                if head is None or not self._serve(head):
                    break
                self.conn.start_next_cycle()
        except (OSError, ssl.SSLError, ClientGone):
            pass
        except Exception as exc:  # a bug must cost one connection, never the server, and no traceback
            self.server.log(f"internal error ({type(exc).__name__}) while serving a request; rerun with --verbose and report it")
        finally:
            self._linger()
            self.server.closed(self)
            try:
                self.sock.close()
            except OSError:
                pass

    def _linger(self) -> None:
        """Before closing on a client still sending its body (a refusal answered
        early), read what it sends for a moment: closing with unread bytes makes
        the kernel send a reset, which can destroy the answer before the client
        reads it (nginx's lingering_close)."""
        if self.conn.their_state is not h11.SEND_BODY or self.evicted:
            return
        self.server.idle(self, True)  # still counted at the cap, and the first to make room
        if not isinstance(self.sock, ssl.SSLSocket):
            try:
                self.sock.shutdown(socket.SHUT_WR)  # the answer is complete: say so
            except OSError:
                return
        deadline, left = time.monotonic() + self.limits.linger, self.limits.linger_bytes
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.sock.settimeout(remaining)
                read = self.sock.recv_into(self._buffer)
                if not read:
                    return
                left -= read
        except (OSError, ssl.SSLError):
            return

    # -- the request head --------------------------------------------------------------------

    def _read_head(self, idle_timeout: float) -> Head | None:
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
                self._answer_bad_head(exc)
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
                    self._finish(head, Answer(400, problem, reason="malformed"), time.monotonic())
                    return None
                return head
            if event is not h11.NEED_DATA:  # ConnectionClosed
                return None
            left = deadline - time.monotonic()
            if left <= 0 or self.evicted:
                return None
            self.sock.settimeout(left)
            try:
                data = self._recv(self.sock)
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

    def _answer_bad_head(self, exc: h11.RemoteProtocolError) -> None:
        status = 431 if exc.error_status_hint == 431 else 400
        message = protocol_message(exc)
        if self.conn.our_state is h11.IDLE or self.conn.our_state is h11.SEND_RESPONSE:
            self._write_answer(Answer(status, message, reason="malformed"), None)
        self._log(
            Head("-", "-", "", ()), status, 0, time.monotonic(), reason="malformed", detail=message if self.server.verbose else ""
        )

    # -- one request ---------------------------------------------------------------------------

    def _serve(self, head: Head) -> bool:
        """Answer or relay one request; True to keep the connection for another."""
        try:
            return self._serve_one(head)
        finally:
            if self._held:
                self.server.body_budget.give(self._held)  # the body read for the policy is done with
                self._held = 0

    def _serve_one(self, head: Head) -> bool:
        started = time.monotonic()
        decision = self.server.policy.decide(head)
        if isinstance(decision, NeedBody):
            decision = self._decide_with_body(head, decision)
        if isinstance(decision, Answer):
            return self._finish(head, decision, started)
        try:
            if not self.server.slots.acquire(blocking=False):
                return self._finish(
                    head,
                    Answer(
                        503,
                        "the server is at its concurrency limit; try again shortly",
                        reason="concurrency",
                        who=decision.who,
                        key=decision.key,
                    ),
                    started,
                )
            self.server.count_in_flight(+1)
            user = decision.who if decision.who and decision.who != decision.key else ""
            self.server.flight(user, +1)
            try:
                return self._relay(head, decision, started)
            finally:
                self.server.flight(user, -1)
                self.server.count_in_flight(-1)
                self.server.slots.release()
        finally:
            if decision.release is not None:
                decision.release()  # a per-key count: the answer ended or the client went

    def _decide_with_body(self, head: Head, need: NeedBody) -> Forward | Answer:
        """Read the whole request body (bounded) before anything goes upstream, then
        ask the policy again; a Forward carries the bytes read (sent with Content-Length)."""
        body = self._read_whole_body(head, need.limit)
        if isinstance(body, Answer):
            return dataclasses.replace(body, who=need.who, key=need.key)
        decision = need.then(body)
        if isinstance(decision, Forward) and decision.body is None:
            decision = dataclasses.replace(decision, body=body)
        return decision

    def _read_whole_body(self, head: Head, limit: int) -> bytes | Answer:
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
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                return Answer(400, protocol_message(exc), reason="body")
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    self._send(h11.InformationalResponse(status_code=100, headers=[]))
                self.sock.settimeout(self.limits.body)  # a body that stops arriving: as when relayed
                try:
                    data = self.sock.recv(65536)
                except OSError:
                    raise ClientGone() from None
                if not data:
                    raise ClientGone()
                self.conn.receive_data(data)
            elif isinstance(event, h11.Data):
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
                self._held += len(event.data)
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise ClientGone()

    def _finish(self, head: Head, answer: Answer, started: float, failure: str = "") -> bool:
        keep = answer.keep_alive and not request_has_body(head) and not self.server.stopping.is_set()
        if keep and self.conn.their_state is h11.SEND_BODY:
            keep = self._take_empty_body()
        if keep and self.conn.trailing_data[0]:
            # Requests queued behind an answer of our own: a client that sends
            # refusals back to back and never reads them would hold a connection
            # (and the cap) for nothing. Front servers send one at a time.
            keep = False
        written = self._write_answer(answer, head, keep)
        reason = record.reason_class(answer.status, answer.reason)
        # The cause of a 502/504 and the line to add for an unknown key always; other messages with --verbose.
        detail = answer.hint or (answer.message if reason == "upstream" or (self.server.verbose and answer.status >= 400) else "")
        shown = head if answer.about is None else Head(*answer.about, head.version, ())
        self._log(
            shown, answer.status, written, started, who=answer.who, key=answer.key, reason=reason, detail=detail, failure=failure
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

    def _write_answer(self, answer: Answer, head: Head | None, keep: bool = False) -> int:
        about = answer.about[1] if answer.about is not None else head.target if head is not None else ""
        payload = answer.payload(about.split("?", 1)[0])  # its client's shape (/v1: OpenAI's)
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
            headers.append(("Content-Length", str(len(payload))))
        if not keep:
            headers.append(("Connection", "close"))
        try:
            # An answer of our own is small: a client that does not take it within
            # limits.head is not reading (the relay's writes wait --timeout).
            self._send(h11.Response(status_code=answer.status, headers=headers, reason=answer.reason_phrase()), self.limits.head)
            if body:
                self._send(h11.Data(data=body), self.limits.head)
            self._send(h11.EndOfMessage(), self.limits.head)
        except (ClientGone, h11.LocalProtocolError):
            return -1
        return len(body)

    def _relay(self, head: Head, forward: Forward, started: float) -> bool:
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
                up, reused = upstream.take()
            except Exception as exc:  # OSError, TLS, a refused CONNECT tunnel
                return self._upstream_failed(head, exc, started, secrets, forward)
            try:
                up.send(request)
                if forward.body is not None:
                    self._send_buffered(up, forward.body)
                else:
                    self._send_body(up)
                return self._answer_from(up, head, forward, started, secrets)
            except Stale as exc:
                up.close()
                if not (reused and replayable and attempt == 1):
                    return self._upstream_failed(head, exc.__cause__ or exc, started, secrets, forward)
            except ClientGone:
                up.close()
                self._log_relayed(head, forward, self.status, started, detail="client gone")
                return False
            except BadBody as exc:
                up.close()  # the upstream never sees a complete request
                self._finish(head, Answer(400, str(exc), who=forward.who, key=forward.key, reason="body"), started)
                return False
            except (OSError, ssl.SSLError, h11.ProtocolError, UpstreamMalformed) as exc:
                up.close()
                return self._upstream_failed(head, exc, started, secrets, forward)
        return False  # pragma: no cover

    def _request_read(self) -> bool:
        return self.conn.their_state is h11.DONE or self.conn.their_state is h11.MUST_CLOSE

    def _send_body(self, up: Connection) -> None:
        """The client's request body to the upstream as it arrives."""
        if self._request_read():  # a retry: the body (none) was read before
            up.send(h11.EndOfMessage())
            return
        pieces = size = 0
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadBody(protocol_message(exc)) from None
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    self._send(h11.InformationalResponse(status_code=100, headers=[]))
                self.sock.settimeout(self.limits.body)
                try:
                    data = self._recv(self.sock)
                except OSError:
                    raise ClientGone() from None
                if not data:
                    raise ClientGone()
                self.conn.receive_data(data)
                continue
            try:
                if isinstance(event, h11.Data):
                    pieces, size = pieces + 1, size + len(event.data)
                    if tiny(pieces, size):
                        raise BadBody(TINY_MESSAGE)
                    up.send(h11.Data(data=bytes(event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    up.send(h11.EndOfMessage())
                    return
                else:
                    raise ClientGone()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise Stale() from exc

    def _send_buffered(self, up: Connection, body: bytes) -> None:
        """A body read before the decision (NeedBody), whole."""
        try:
            if body:
                up.send(h11.Data(data=body))
            up.send(h11.EndOfMessage())
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Stale() from exc

    def _answer_from(self, up: Connection, head: Head, forward: Forward, started: float, secrets: tuple[str, ...]) -> bool:
        """Relay the upstream's answer; True when both connections may carry another request."""
        self.sent = 0
        self.status = status = None
        received = False
        # A listing for a model-restricted key: held whole, filtered, then sent. Until then
        # nothing has reached the client, so a failure is still a 502/504 of our own.
        filtering = forward.filter_answer is not None and head.method != "HEAD"
        held, buffered = None, bytearray()
        # --timeout bounds each wait for more of a body, but the answer's head as a
        # whole: one byte at a time must not hold a request forever.
        head_deadline = time.monotonic() + self.limits.upstream
        with Selector() as selector:  # poll: fds above 1024 too
            selector.register(up.sock, selectors.EVENT_READ, "upstream")
            watching = self._request_read()  # the whole request is in: a read now means hang-up
            if watching:
                selector.register(self.sock, selectors.EVENT_READ, "client")
            while True:
                try:
                    event = up.h11.next_event()
                except h11.RemoteProtocolError as exc:
                    if status is None:
                        raise UpstreamMalformed(protocol_message(exc)) from None
                    return self._cut(up, head, status, started, forward, "upstream cut its answer short")
                if event is h11.NEED_DATA:
                    self._flush()  # what arrived goes out before we wait for more
                    data = self._wait_upstream(up, selector, status is None, head_deadline if status is None else None)
                    if data is None:  # timed out
                        if status is None:
                            raise TimeoutError()
                        return self._cut(up, head, status, started, forward, "upstream stalled")
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
                    self._send_response_head(event, head, forward.close)
                    counting = status == 200 and self.server.count_usage and usage.wanted(_content_type(event.headers))
                    self.usage = usage.Scanner() if counting else None
                elif isinstance(event, h11.Data) and filtering:
                    buffered += event.data
                    if len(buffered) > forward.filter_limit:
                        raise UpstreamMalformed(f"a model listing larger than {forward.filter_limit} bytes")
                elif isinstance(event, h11.Data):
                    self._queue(h11.Data(data=bytes(event.data)), len(event.data))
                    if self.usage is not None:
                        self.usage.feed(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    if filtering:
                        assert held is not None  # h11: the answer's head comes before its end
                        self.status = status = held.status_code
                        self._queue_filtered(held, bytes(buffered), forward)  # may raise: before pooling
                    # Pooled before the client can see the end: its next request may follow at once.
                    # From here the connection is the pool's: a client gone now must not close it.
                    assert self.server.upstream is not None  # it is relaying (see _relay)
                    self.server.upstream.give_back(up)
                    self._queue(h11.EndOfMessage())
                    try:
                        self._flush()
                    except ClientGone:
                        self._log_relayed(head, forward, status, started, detail="client gone")
                        return False
                    self._log_relayed(head, forward, status, started)
                    return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE and not forward.close
                else:  # ConnectionClosed before an answer
                    if status is None:
                        raise Stale()
                    return self._cut(up, head, status, started, forward, "upstream cut its answer short")

    def _wait_upstream(
        self, up: Connection, selector: selectors.BaseSelector, before_answer: bool, deadline: float | None = None
    ) -> bytes | None:
        """The next bytes from the upstream, watching the client for a hang-up meanwhile;
        None once ``deadline`` (default: --timeout from now) has passed."""
        if isinstance(up.sock, ssl.SSLSocket) and up.sock.pending():
            return self._recv(up.sock)
        if deadline is None:
            deadline = time.monotonic() + self.limits.upstream
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for key, _ in selector.select(left):
                if key.data == "client":
                    try:
                        data = self._recv(self.sock)
                    except (BlockingIOError, ssl.SSLWantReadError):
                        continue
                    except OSError:
                        raise ClientGone() from None
                    if not data:
                        raise ClientGone()
                    self.conn.receive_data(data)  # a pipelined request: h11 keeps it for the next cycle
                    if len(self.conn.trailing_data[0]) > MAX_HEAD_BYTES:
                        selector.unregister(self.sock)  # enough read ahead; stop watching
                else:
                    try:
                        data = self._recv(up.sock)
                    except ssl.SSLWantReadError:
                        continue
                    except (ConnectionResetError, BrokenPipeError) as exc:
                        if before_answer:
                            raise Stale() from exc
                        raise
                    return data

    def _send_response_head(self, event: h11.Response, head: Head, close: bool = False) -> None:
        headers = end_to_end([(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()])
        length = event.headers and [v for n, v in event.headers if n == b"content-length"]
        if length and not any(n == b"transfer-encoding" for n, _ in event.headers):
            headers.append(("Content-Length", length[0].decode("latin-1")))
        if close or self.server.stopping.is_set():
            headers.append(("Connection", "close"))
        from ..sanitize import printable

        reason = printable(event.reason.decode("latin-1"))[:REASON_PHRASE_LIMIT]  # cut, never with "..." added
        self._queue(h11.Response(status_code=event.status_code, headers=headers, reason=reason))

    def _queue_filtered(self, event: h11.Response, body: bytes, forward: Forward) -> None:
        """The held answer with its body filtered and a new Content-Length."""
        encodings = [v.decode("latin-1").strip().lower() for n, v in event.headers if n == b"content-encoding"]
        if any(encoding not in ("", "identity") for encoding in encodings):
            raise UpstreamMalformed("a compressed model listing, which the gate must read to filter")
        assert forward.filter_answer is not None  # only a filtering Forward's answer is held
        try:
            body = forward.filter_answer(event.status_code, body)
        except ValueError as exc:
            raise UpstreamMalformed(f"a model listing the gate cannot read ({exc})") from None
        headers = end_to_end([(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()])
        headers.append(("Content-Length", str(len(body))))
        if forward.close or self.server.stopping.is_set():
            headers.append(("Connection", "close"))
        from ..sanitize import printable

        reason = printable(event.reason.decode("latin-1"))[:REASON_PHRASE_LIMIT]
        self._queue(h11.Response(status_code=event.status_code, headers=headers, reason=reason))
        if body:
            self._queue(h11.Data(data=body), len(body))

    def _cut(self, up: Connection, head: Head, status: int, started: float, forward: Forward, why: str) -> bool:
        up.close()
        self._flush()  # what did arrive, then the connection closes
        self._log_relayed(head, forward, status, started, detail=why, failure="stalled" if "stalled" in why else "cut")
        return False  # the client's connection closes mid-answer: it sees a cut message

    def _upstream_failed(
        self, head: Head, exc: BaseException, started: float, secrets: tuple[str, ...], forward: Forward
    ) -> bool:
        if self.conn.our_state is not h11.SEND_RESPONSE and self.conn.our_state is not h11.IDLE:
            self._log_relayed(head, forward, None, started, detail="upstream failed mid-answer", failure="cut")
            return False
        where = self.server.upstream.url.host if self.server.upstream is not None else "-"
        known: dict[str, Any] = {"who": forward.who, "key": forward.key, "reason": "upstream"}
        answer, failure = upstream_failure(exc, where, secrets, known)
        self._finish(head, answer, started, failure)
        return False

    def _recv(self, sock: socket.socket) -> bytes:
        """One read (client or upstream) through the connection's buffer: only its bytes are copied out."""
        return self._buffer[: sock.recv_into(self._buffer)].tobytes()

    # -- writing and logging ---------------------------------------------------------------------

    def _queue(self, event: h11.Event, body_bytes: int = 0) -> None:
        """Batch what is ready for the client (one write per upstream read)."""
        self._out += self.conn.send(event) or b""
        self._out_body += body_bytes

    def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            set_timeout(self.sock, self.limits.upstream)
            try:
                self.sock.sendall(data)
            except OSError:
                raise ClientGone() from None
        self.sent += self._out_body
        self._out_body = 0

    def _send(self, event: h11.Event, timeout: float | None = None) -> None:
        data = self.conn.send(event)
        if data:
            set_timeout(self.sock, self.limits.upstream if timeout is None else timeout)
            try:
                self.sock.sendall(data)
            except OSError:
                raise ClientGone() from None

    def _log_relayed(
        self, head: Head, forward: Forward, status: int | None, started: float, detail: str = "", failure: str = ""
    ) -> None:
        counted = self.usage.result() if self.usage is not None and not failure else None
        self.usage = None
        self._log(
            head,
            status,
            self.sent,
            started,
            who=forward.who,
            key=forward.key,
            detail=detail,
            failure=failure,
            reason="upstream" if failure else "",
            tokens=counted,
            # The model the policy read from the request (policy22), else the one Ollama's answer names.
            model=getattr(forward, "model", None) or (counted[2] if counted else ""),
        )

    def _log(
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


_date_cache: list = [0, ""]


def http_date() -> str:
    """IMF-fixdate for ``Date`` (RFC 9110 5.6.7), formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        from email.utils import formatdate

        _date_cache[:] = [now, formatdate(now, usegmt=True)]
    return _date_cache[1]


def _content_type(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    return next((value.decode("latin-1") for name, value in headers if name == b"content-type"), None)


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

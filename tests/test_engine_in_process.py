"""The engine, the relay and the server in this process, with each request's record
(serve/engine.py, relay.py, server.py; issue 21, found by mutation: the subprocess
tests check the wire but a mutant there goes unseen). Expectations: RFC 9112 6
(framing a forwarded body: one Content-Length or chunked, never both), RFC 9110
15.6.3 (a 502 for an upstream that failed), the README's log fields (reason
"upstream" and the failure's kind for an upstream that failed us), the connection
cap and the graceful stop as the README's "Proxy and gate" section states them."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from credential_helper import protocol
from credential_helper.errors import InputError, ListenError
from credential_helper.serve import server as server_module
from credential_helper.serve.limits import Limits
from credential_helper.serve.messages import Answer, Forward, Head
from credential_helper.serve.upstream import Upstream
from faults import KeepAliveServer, ScriptedServer
from serving import InProcess, exchange

pytestmark = pytest.mark.process  # loopback sockets in this process, no subprocess


class Forwarding:
    def decide(self, head: Head) -> Forward:
        return Forward(head.target, (("Host", "upstream"),), who="alice", key="SHA256:k")


class Answering:
    def decide(self, head: Head) -> Answer:
        return Answer(200, "ok", keep_alive=True)


@pytest.fixture
def serve():
    started: list[InProcess] = []

    def start(policy, upstream_host: str | None = None, limits: Limits | None = None, **options) -> tuple[InProcess, list]:
        records: list = []
        upstream = Upstream(protocol.URL("http", upstream_host, "", ""), 5, environ={}) if upstream_host else None
        served = InProcess(
            policy,
            upstream=upstream,
            log=lambda line: None,
            limits=limits or Limits(upstream=5),
            observe=records.append,
            **options,
        )
        started.append(served)
        return served, records

    yield start
    for served in started:
        served.close()


def until(condition, seconds: float = 5) -> None:
    """Wait while ``condition()`` holds, at most ``seconds`` (the assertion that follows says what failed)."""
    deadline = time.monotonic() + seconds
    while condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def wait_for(records: list, count: int = 1) -> list:
    until(lambda: len(records) < count)
    return records


def held_until(release: threading.Event):
    """An upstream answer that waits for ``release`` (at most 5 s), then says ok once."""

    def slow(head: bytes, body: bytes, index: int) -> bytes | None:
        release.wait(5)
        return ok(head, body, index)

    return slow


@contextlib.contextmanager
def one_request_held(port: int, release: threading.Event, server) -> Iterator[None]:
    """A request on a connection of its own, relayed to a ``held_until(release)``
    upstream and in flight while the block runs; released and finished after it."""
    first = threading.Thread(target=exchange, args=(port, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    first.start()
    until(lambda: server.in_flight < 1)
    try:
        yield
    finally:
        release.set()
        first.join(5)


def ok(head: bytes, body: bytes, index: int) -> bytes | None:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if index == 0 else None


# --- a forwarded body's framing --------------------------------------------------------------


def test_a_body_with_a_length_goes_on_with_that_length(serve):
    with KeepAliveServer(ok) as upstream:
        served, _ = serve(Forwarding(), upstream.host)
        answer = exchange(
            served.port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        ((_, head, body),) = upstream.requests
    lines = [line.lower() for line in head.split(b"\r\n")]
    assert b"content-length: 5" in lines and not any(line.startswith(b"transfer-encoding") for line in lines)
    assert body == b"hello"


def test_a_chunked_body_goes_on_chunked(serve):
    with KeepAliveServer(ok) as upstream:
        served, _ = serve(Forwarding(), upstream.host)
        answer = exchange(
            served.port,
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        head = upstream.requests[0][1]
    lines = [line.lower() for line in head.split(b"\r\n")]
    assert b"transfer-encoding: chunked" in lines and not any(line.startswith(b"content-length") for line in lines)


def test_a_malformed_chunked_body_is_a_400_for_the_body(serve):
    with KeepAliveServer(ok) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        answer = exchange(served.port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    record = wait_for(records)[0]
    assert (record.status, record.reason, record.user, record.key) == (400, "body", "alice", "SHA256:k")


# --- an upstream that fails us -----------------------------------------------------------------


def test_an_answer_cut_short_cuts_the_client_and_is_logged_as_cut(serve):
    def cut(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")

    with ScriptedServer(cut) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        answer = exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nabc")  # then the connection closed
    record = wait_for(records)[0]
    assert (record.status, record.reason, record.upstream_failure) == (200, "upstream", "cut")
    assert record.detail == "upstream cut its answer short" and record.user == "alice" and record.key == "SHA256:k"


def test_an_answer_that_stalls_is_cut_at_the_timeout_and_logged_as_stalled(serve):
    def stall(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        time.sleep(3)

    with ScriptedServer(stall) as upstream:
        served, records = serve(Forwarding(), upstream.host, Limits(upstream=0.3))
        started = time.monotonic()
        answer = exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
        took = time.monotonic() - started
    assert answer.endswith(b"abc") and took < 2.5
    record = wait_for(records)[0]
    assert (record.status, record.upstream_failure, record.detail) == (200, "stalled", "upstream stalled")


def test_an_upstream_that_refuses_the_connection_is_a_502(serve):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        served, records = serve(Forwarding(), f"127.0.0.1:{port}")
        answer = exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 ")
    record = wait_for(records)[0]
    assert (record.status, record.reason, record.upstream_failure) == (502, "upstream", "connect")
    assert record.user == "alice"


def test_a_client_that_leaves_mid_answer_is_logged_as_gone(serve):
    def endless(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        try:
            for _ in range(2000):
                conn.sendall(b"x" * 65536)
        except OSError:
            pass

    with ScriptedServer(endless) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(b"GET /api/pull HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        record = wait_for(records)[0]
    assert (record.status, record.detail, record.upstream_failure) == (200, "client gone", "")


# --- the server's own bookkeeping -------------------------------------------------------------------


def test_a_closed_connection_leaves_room_under_the_cap(serve):
    served, _ = serve(Answering(), limits=Limits(connections=1))
    for _ in range(3):  # each one closes before the next: the one place is free again
        assert exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_requests_in_flight_are_counted_up_and_back_down(serve):
    release = threading.Event()

    slow = held_until(release)

    with KeepAliveServer(slow) as upstream:
        served, _ = serve(Forwarding(), upstream.host)
        threads = [
            threading.Thread(target=exchange, args=(served.port, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        until(lambda: served.server.in_flight < 2)
        assert served.server.in_flight == 2
        release.set()
        for thread in threads:
            thread.join(5)
        until(lambda: served.server.in_flight)
        assert served.server.in_flight == 0


# --- listening -----------------------------------------------------------------------------------------


def test_a_port_in_use_is_one_line_that_says_what_to_do():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as refused:
            server_module.listening_socket(("127.0.0.1", port))
    assert str(refused.value) == (
        f"cannot listen on 127.0.0.1:{port}: the port is in use by another program (another gate or proxy?): "
        "choose another port, or stop that program (ss -ltnp shows which)"
    )


def test_a_host_that_does_not_resolve_is_an_input_error():
    with pytest.raises(InputError, match=r"^cannot listen on bad host:1: 'bad host' is not an address or a host name"):
        server_module.listening_socket(("bad host", 1))


def test_the_bound_address_is_host_and_port(serve):
    served, _ = serve(Answering())
    assert served.server.address == ("127.0.0.1", served.port)


# --- a graceful stop ----------------------------------------------------------------------------------------


class NotHandled(Exception):
    pass


@pytest.fixture
def fallback_handlers():
    """The test's own SIGUSR1 and SIGHUP handlers while run() is tested: a run() that fails to
    install its own then fails this test (NotHandled), instead of the signal's default
    action ending the whole test process."""

    def refuse(signum, frame):
        raise NotHandled(f"run() did not handle signal {signum}")

    previous = {sig: signal.signal(sig, refuse) for sig in (signal.SIGUSR1, signal.SIGHUP)}
    yield refuse
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_run_stops_on_its_signal_restores_the_handler_and_returns_0(fallback_handlers):
    lines: list[str] = []
    server = server_module.Server(("127.0.0.1", 0), Answering(), upstream=None, log=lines.append)
    reloads = []

    def ready(s):
        assert signal.getsignal(signal.SIGUSR1) is not fallback_handlers  # handled while it runs
        assert signal.getsignal(signal.SIGHUP) is not fallback_handlers
        # It serves while run() waits for a signal.
        assert exchange(s.address[1], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        os.kill(os.getpid(), signal.SIGHUP)
        # The stop comes later: the loop notices the reload within its 0.2 s wait first.
        threading.Timer(0.6, os.kill, (os.getpid(), signal.SIGUSR1)).start()

    returned = server_module.run(
        server, grace=1, log=lines.append, stop_signals=[signal.SIGUSR1], ready=ready, on_reload=lambda: reloads.append(1)
    )
    assert returned == 0
    assert reloads == [1]
    assert lines[-1] == "stopped"
    assert signal.getsignal(signal.SIGUSR1) is fallback_handlers and signal.getsignal(signal.SIGHUP) is fallback_handlers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.address[1]), timeout=1)  # no longer listening


def test_run_says_how_many_requests_it_left_in_flight(fallback_handlers):
    lines: list[str] = []
    server = server_module.Server(("127.0.0.1", 0), Answering(), upstream=None, log=lines.append)

    def ready(s):
        s.count_in_flight(+1)  # as a relayed request does; it never finishes
        os.kill(os.getpid(), signal.SIGUSR1)

    started = time.monotonic()
    server_module.run(server, grace=0.3, log=lines.append, stop_signals=[signal.SIGUSR1], ready=ready)
    assert 0.3 <= time.monotonic() - started < 3
    assert lines == ["stopping with 1 request(s) still in flight after 0.3s", "stopped"]


def test_listen_problem_names_the_common_causes():
    assert server_module.listen_problem("[::1]:80", OSError(errno.EACCES, "Permission denied")) == (
        "cannot listen on [::1]:80: permission denied (ports below 1024 need privileges): choose a port from 1024 up"
    )
    assert server_module.listen_problem("10.9.9.9:1", OSError(errno.EADDRNOTAVAIL, "x")).endswith(
        ": this machine has no such address: listen on one of its own addresses, or 0.0.0.0"
    )
    assert server_module.listen_problem("h:1", OSError(errno.EPERM, "Operation not permitted")) == (
        "cannot listen on h:1: Operation not permitted"
    )
    assert server_module.listen_problem("h:1", OSError("plain")) == "cannot listen on h:1: plain"


def test_a_listening_socket_may_rebind_at_once_after_a_restart():
    # POSIX: SO_REUSEADDR, so a restart does not wait out TIME_WAIT (system.prepare_listening_socket).
    from credential_helper import system

    with socket.socket() as sock:
        system.prepare_listening_socket(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


# --- what each request's record holds ---------------------------------------------------------------


class Refusing:
    """Refuses with what a gate's policy gives: who, key and a reason class."""

    def decide(self, head: Head) -> Answer:
        return Answer(403, "no", who="bob", key="SHA256:b", reason="not-granted")


def test_a_refusal_is_recorded_with_its_path_class_and_caller(serve):
    served, records = serve(Refusing())
    answer = exchange(served.port, b"GET /api/chat?ts=123&secret=x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ")
    record = wait_for(records)[0]
    assert (record.method, record.path, record.status) == ("GET", "/api/chat", 403)  # never the query
    assert (record.reason, record.user, record.key, record.upstream_failure) == ("not-granted", "bob", "SHA256:b", "")
    assert record.bytes == len(answer.partition(b"\r\n\r\n")[2]) and record.ms >= 0


def test_a_caller_known_only_by_its_key_has_no_user(serve):
    class ByKey:
        def decide(self, head: Head) -> Answer:
            return Answer(403, "no", who="SHA256:b", key="SHA256:b", reason="not-granted")

    served, records = serve(ByKey())
    exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    record = wait_for(records)[0]
    assert (record.user, record.key) == ("", "SHA256:b")


def test_a_head_h11_refuses_is_recorded_as_malformed(serve):
    served, records = serve(Answering())
    answer = exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    head = answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert b"x-ollama-reason: malformed" in head
    assert b"connection: close" in head  # RFC 9112 9.6: the engine closes after it
    record = wait_for(records)[0]
    assert (record.method, record.path, record.status, record.reason, record.bytes) == ("-", "-", 400, "malformed", 0)


def test_a_head_too_large_for_h11_is_431(serve):
    served, records = serve(Answering())
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(40):  # never ended: h11 bounds a head still incomplete past its limit (its own 431)
            sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    assert received.startswith(b"HTTP/1.1 431 "), received[:200]  # RFC 6585 5: Request Header Fields Too Large
    record = wait_for(records)[0]
    assert (record.reason, record.status) == ("malformed", 431)


def test_over_the_concurrency_limit_the_503_is_recorded_as_concurrency(serve):
    release = threading.Event()

    slow = held_until(release)

    with KeepAliveServer(slow) as upstream:
        served, records = serve(Forwarding(), upstream.host, Limits(in_flight=1, upstream=5))
        with one_request_held(served.port, release, served.server):
            answer = exchange(served.port, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nretry-after: 1\r\n" in answer.split(b"\r\n\r\n")[0].lower() + b"\r\n"  # RFC 9110 10.2.3: when to come back
    refused = [r for r in wait_for(records, 2) if r.status == 503][0]
    assert (refused.reason, refused.user, refused.key, refused.path) == ("concurrency", "alice", "SHA256:k", "/b")


def test_the_in_flight_gauge_hears_each_request_start_and_end(serve):
    with KeepAliveServer(ok) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        calls: list = []
        served.server.flight = lambda user, delta: calls.append((user, delta))
        exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        wait_for(records)
    assert calls == [("alice", 1), ("alice", -1)]


class ReadsBody:
    """A policy that needs the body (the gate's models=), with a 10-byte limit."""

    def decide(self, head: Head):
        from credential_helper.serve.messages import NeedBody

        return NeedBody(10, lambda body: Answer(200, f"read {len(body)}", keep_alive=True), who="carol", key="SHA256:c")


@pytest.mark.parametrize("size, status", [(10, b"200"), (11, b"413")])
def test_a_body_read_for_the_policy_is_bounded_by_its_limit(serve, size, status):
    served, records = serve(ReadsBody())
    answer = exchange(
        served.port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size + b"x" * size
    )
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer
    record = wait_for(records)[0]
    if status == b"413":
        assert (record.reason, record.user, record.key) == ("body", "carol", "SHA256:c")
        assert b"the request body is larger than the 10 bytes this gate reads to check which model it names" in answer


# --- a kept-alive upstream connection that went stale (RFC 9110 9.2.2, RFC 9112 9.3.1) -----------


def first_only(head: bytes, body: bytes, index: int) -> bytes | None:
    """Answers the first request on each connection, then closes without answering the next."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if index == 0 else None


@pytest.mark.parametrize(
    "request_bytes, expected, connections",
    [
        # A safe method without a body is retried once on a fresh connection: the client sees 200.
        (b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 ", 2),
        (b"HEAD /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200 ", 2),
        # Not idempotent, even without a body: never replayed, the failure is the client's to see.
        (b"POST /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 502 ", 1),
        (b"DELETE /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 502 ", 1),
        # A body already sent cannot be sent again.
        (b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", b"HTTP/1.1 502 ", 1),
    ],
)
def test_only_a_safe_request_without_a_body_is_retried_on_a_fresh_connection(serve, request_bytes, expected, connections):
    with KeepAliveServer(first_only) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        assert exchange(served.port, b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")
        wait_for(records)
        answer = exchange(served.port, request_bytes)
        assert answer.startswith(expected), answer
        assert upstream.connections == connections
    record = wait_for(records, 2)[1]
    if expected == b"HTTP/1.1 502 ":
        assert (record.status, record.reason) == (502, "upstream")
    else:
        assert (record.status, record.reason, record.upstream_failure) == (200, "", "")


# --- the answer on its way back ------------------------------------------------------------------------


def test_a_forward_that_closes_closes_the_clients_connection_after_the_answer(serve):
    class Closing:
        def decide(self, head: Head) -> Forward:
            return Forward(head.target, (("Host", "upstream"),), close=True)

    with KeepAliveServer(ok) as upstream:
        served, _ = serve(Closing(), upstream.host)
        started = time.monotonic()
        answer = exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive asked for
        assert time.monotonic() - started < 2  # closed by the server, not by exchange's timeout
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"ok")
    # RFC 9112 9.6: a server that will close says so in the answer it closes after.
    assert b"connection: close" in answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")


def test_an_upstream_that_switches_protocols_uninvited_is_a_502(serve):
    def switch(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")

    with ScriptedServer(switch) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        answer = exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 502 ")
    record = wait_for(records)[0]
    assert (record.status, record.reason, record.upstream_failure) == (502, "upstream", "malformed")


def test_token_counts_and_the_model_are_read_from_a_counted_answer(serve):
    body = b'{"model":"llama3.2","done":true,"prompt_eval_count":5,"eval_count":7}'

    def counted(head: bytes, request_body: bytes, index: int) -> bytes | None:
        if index:
            return None
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    with KeepAliveServer(counted) as upstream:
        served, records = serve(Forwarding(), upstream.host, count_usage=True)
        answer = exchange(served.port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    assert answer.endswith(body)
    record = wait_for(records)[0]
    assert (record.prompt_tokens, record.completion_tokens, record.model) == (5, 7, "llama3.2")


def test_a_client_that_expects_100_continue_hears_it_before_sending_its_body(serve):
    # RFC 9110 10.1.1: a client may wait for 100 (Continue) before the body; the body then goes on.
    with KeepAliveServer(ok) as upstream:
        served, _ = serve(Forwarding(), upstream.host)
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            interim = sock.recv(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            sock.sendall(b"hello")
            final = b""
            while chunk := sock.recv(65536):
                final += chunk
        assert final.startswith(b"HTTP/1.1 200 ")
        assert upstream.requests[0][2] == b"hello"


# --- accepting ------------------------------------------------------------------------------------------------


def test_a_server_left_idle_still_accepts(serve):
    served, _ = serve(Answering())
    time.sleep(0.7)  # the loop waits with nothing to do for a while
    assert exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200 ")


def test_a_connection_refused_at_the_cap_does_not_stop_accepting(serve):
    release = threading.Event()

    slow = held_until(release)

    with KeepAliveServer(slow) as upstream:
        served, _ = serve(Forwarding(), upstream.host, Limits(connections=1, upstream=5))
        with one_request_held(served.port, release, served.server):
            # The one place is mid-request, no idle connection to evict: this one is closed unanswered.
            assert exchange(served.port, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2) == b""
        until(lambda: served.server._open)  # the first connection lets go of its place
        answer = exchange(served.port, b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("verbose, detail", [(False, ""), (True, "no")])
def test_a_refusals_message_is_logged_only_with_verbose(serve, verbose, detail):
    # README, proxy and gate options: --verbose adds the message a refused client got to its log line.
    served, records = serve(Refusing(), **({"verbose": True} if verbose else {}))  # off unless asked for
    exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(records)[0].detail == detail


def test_a_relayed_answer_is_recorded_with_its_body_bytes(serve):
    with KeepAliveServer(ok) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    record = wait_for(records)[0]
    assert (record.status, record.bytes) == (200, 2)


def test_an_ipv6_server_gives_host_and_port():
    try:
        server = server_module.Server(("::1", 0), Answering(), upstream=None, log=lambda line: None)
    except (InputError, ListenError, OSError):
        pytest.skip("no IPv6 loopback here")
    try:
        assert server.address == ("::1", server.sock.getsockname()[1])
    finally:
        server.close()


# --- answers of the engine's own, second look ----------------------------------------------------------


def test_an_empty_answer_that_keeps_the_connection_keeps_it(serve):
    class NoContent:
        def decide(self, head: Head) -> Answer:
            return Answer(204, keep_alive=True)

    served, _ = serve(NoContent())
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        for _ in range(2):  # the same connection carries the second request
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 204 ")


def test_a_refusal_about_another_request_is_logged_as_that_request(serve):
    class About:
        def decide(self, head: Head) -> Answer:
            return Answer(403, "no", about=("POST", "/api/chat?ts=1"), reason="not-granted")

    served, records = serve(About())
    exchange(served.port, b"GET /auth HTTP/1.1\r\nHost: x\r\n\r\n")
    record = wait_for(records)[0]
    assert (record.method, record.path) == ("POST", "/api/chat")


def test_with_verbose_a_400s_message_is_logged_too(serve):
    class Bad:
        def decide(self, head: Head) -> Answer:
            return Answer(400, "bad target", reason="malformed")

    served, records = serve(Bad(), verbose=True)
    exchange(served.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(records)[0].detail == "bad target"


def test_bodies_held_for_the_policy_share_one_budget(serve):
    # limits.held_bodies: all connections together; past it 503 with Retry-After (RFC 9110 10.2.3).
    served, records = serve(ReadsBody(), limits=Limits(held_bodies=8, upstream=5))
    request = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n123456789"
    answer = exchange(served.port, request)
    head = answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head
    record = wait_for(records)[0]
    assert (record.status, record.reason, record.user) == (503, "body", "carol")
    small = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n12345678"
    for _ in range(3):  # what a finished request held is given back
        assert exchange(served.port, small).startswith(b"HTTP/1.1 200 ")


def test_a_body_in_tiny_chunks_is_refused(serve):
    # More than 4096 pieces averaging under 256 bytes: a client making the gate work for nothing.
    served, records = serve(_BigBody())
    chunks = b"".join(b"1\r\nx\r\n" for _ in range(4097))
    answer = exchange(
        served.port,
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
        timeout=10,
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert wait_for(records)[0].reason == "body"


class _BigBody:
    def decide(self, head: Head):
        from credential_helper.serve.messages import NeedBody

        return NeedBody(1 << 20, lambda body: Answer(200, "read", keep_alive=True))


def test_a_502_names_the_upstream_and_closes_the_connection(serve):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        served, _ = serve(Forwarding(), f"127.0.0.1:{port}")
        started = time.monotonic()
        answer = exchange(served.port, b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive asked for
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 502 ") and f"127.0.0.1:{port}".encode() in answer.partition(b"\r\n\r\n")[2]
    assert took < 2  # closed by the server after its 502, not by exchange's timeout


def test_a_head_request_is_never_held_to_filter(serve):
    # RFC 9110 9.3.2: the answer to HEAD has no body, and its Content-Length is the GET's.
    class Filtering:
        def decide(self, head: Head) -> Forward:
            return Forward(head.target, (("Host", "upstream"),), filter_answer=lambda status, body: b"[]", filter_limit=1 << 20)

    def head_answer(head: bytes, body: bytes, index: int) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 25\r\n\r\n" if index == 0 else None

    with KeepAliveServer(head_answer) as upstream:
        served, _ = serve(Filtering(), upstream.host)
        answer = exchange(served.port, b"HEAD /api/tags HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b"content-length: 25" in head


# --- tiny chunks, at the bound (failures.tiny: more than 4096 pieces under 256 bytes on average) ---------


def chunked(pieces: int) -> bytes:
    return b"".join(b"1\r\nx\r\n" for _ in range(pieces)) + b"0\r\n\r\n"


@pytest.mark.parametrize("pieces, status", [(4096, b"200"), (4097, b"400")])
def test_a_body_read_for_the_policy_may_have_4096_tiny_chunks(serve, pieces, status):
    served, records = serve(_BigBody())
    head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    answer = exchange(served.port, head + chunked(pieces), timeout=10)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:100]


@pytest.mark.parametrize("pieces, status", [(4096, b"200"), (4097, b"400")])
def test_a_forwarded_body_may_have_4096_tiny_chunks(serve, pieces, status):
    with KeepAliveServer(ok) as upstream:
        served, records = serve(Forwarding(), upstream.host)
        head = b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        answer = exchange(served.port, head + chunked(pieces), timeout=10)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:100]
    if status == b"400":
        assert wait_for(records)[0].reason == "body"


def test_a_head_the_intermediary_refuses_is_a_400_for_that_request(serve):
    served, records = serve(Answering())
    answer = exchange(served.port, b"POST /api/me HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"both Content-Length and Transfer-Encoding" in answer
    record = wait_for(records)[0]
    assert (record.method, record.path, record.status, record.reason) == ("POST", "/api/me", 400, "malformed")


def test_a_malformed_body_read_for_the_policy_is_a_400_for_the_body(serve):
    served, records = serve(_BigBody())
    answer = exchange(served.port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert wait_for(records)[0].reason == "body"

"""The engine's bounds (serve/limits.py), tested in-process with tiny limits:
the real server and engine on port 0, so a deadline or an eviction takes
milliseconds instead of the ten seconds a constant would cost (issue 21)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from credential_helper import protocol
from credential_helper.serve.limits import Limits
from credential_helper.serve.messages import Answer, Forward, Head
from credential_helper.serve.upstream import Upstream
from faults import KeepAliveServer
from serving import InProcess

pytestmark = pytest.mark.process  # loopback sockets, no subprocess


class Answering:
    """Answers every request itself, keeping the connection."""

    def decide(self, head: Head) -> Answer:
        return Answer(200, "ok", keep_alive=True)


class Forwarding:
    def decide(self, head: Head) -> Forward:
        return Forward(head.target, (("Host", "upstream"),))


@pytest.fixture
def serve():
    started: list[InProcess] = []

    def start(policy, limits: Limits, upstream: Upstream | None = None) -> int:
        served = InProcess(policy, upstream=upstream, log=lambda line: None, limits=limits)
        started.append(served)
        return served.port

    yield start
    for served in started:
        served.close()


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the peer closed (EOF or reset), or None if it did not."""
    sock.settimeout(seconds)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


def test_a_head_that_never_completes_is_cut_at_limits_head(serve):
    port = serve(Answering(), Limits(head=0.3))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        took = closed_within(sock, 5)
    assert took is not None and took < 2, took


def test_a_head_trickled_within_every_gap_is_still_cut_at_limits_head(serve):
    # Each byte arrives well inside any per-read timeout; only a deadline over the
    # whole head stops it, and nothing reaches the upstream.
    with KeepAliveServer(lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as upstream_server:
        upstream = Upstream(protocol.URL("http", upstream_server.host, "", ""), 5, environ={})
        port = serve(Forwarding(), Limits(head=0.5), upstream)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            started = time.monotonic()
            try:
                for byte in b"POST /api/me HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass
            closed_within(sock, 5)
            took = time.monotonic() - started
        assert took < 2.5, took
        assert upstream_server.requests == []


def test_the_defaults_are_the_documented_bounds():
    # README "Any tool, through the signing proxy": a head has 10 s in total, the
    # connection cap is 512, --timeout 300 s, --max-concurrency 128.
    assert Limits() == Limits(
        head=10.0,
        idle=60.0,
        body=60.0,
        linger=2.0,
        linger_bytes=1 << 20,
        upstream=300.0,
        connections=512,
        in_flight=128,
        held_bodies=256 << 20,
    )


def test_an_idle_kept_alive_connection_closes_at_limits_idle(serve):
    port = serve(Answering(), Limits(idle=0.3))
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        took = closed_within(sock, 5)
    assert took is not None and took < 2, took


def test_at_the_connection_cap_the_longest_idle_connection_makes_room(serve):
    port = serve(Answering(), Limits(connections=3))
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    time.sleep(0.2)  # all three accepted and waiting for a head
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as newcomer:
            newcomer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert newcomer.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert closed_within(idle[0], 2) is not None  # the oldest was evicted
        idle[2].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the youngest still served
        idle[2].settimeout(5)
        assert idle[2].recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


def test_over_limits_in_flight_a_request_gets_503(serve):
    release = threading.Event()

    def slow(head: bytes, body: bytes, index: int) -> bytes:
        release.wait(5)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with KeepAliveServer(slow) as upstream_server:
        upstream = Upstream(protocol.URL("http", upstream_server.host, "", ""), 5, environ={})
        port = serve(Forwarding(), Limits(in_flight=1, upstream=5), upstream)
        first = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            first.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)  # the first holds the one slot
            with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                second.sendall(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
                assert second.recv(65536).startswith(b"HTTP/1.1 503 ")
            release.set()
            assert first.recv(65536).startswith(b"HTTP/1.1 200 ")
        finally:
            release.set()
            first.close()


class Filtering:
    """Forwards with an answer held whole and filtered (the gate's listings and /api/show)."""

    def decide(self, head: Head) -> Forward:
        return Forward(head.target, (("Host", "upstream"),), filter_answer=lambda status, body: body, filter_limit=1 << 20)


def test_answers_held_to_filter_share_the_held_bytes_budget(serve):
    # A key allowed one model must not make the gate hold --max-concurrency answers of 32 MiB:
    # held answers take from limits.held_bodies, as held request bodies do. Break caught: the
    # answer held without the budget (200 with a budget of 1,000 bytes).
    big = b"x" * 4000

    def answer(head: bytes, body: bytes, index: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)

    with KeepAliveServer(answer) as upstream_server:
        for budget, status in ((1000, b"503"), (1 << 20, b"200")):
            upstream = Upstream(protocol.URL("http", upstream_server.host, "", ""), 5, environ={})
            served = InProcess(
                Filtering(), upstream=upstream, log=lambda line: None, limits=Limits(held_bodies=budget, upstream=5)
            )
            try:
                with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
                    sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
                    got = b""
                    while b"\r\n\r\n" not in got:
                        got += sock.recv(65536)
                    assert got.startswith(b"HTTP/1.1 " + status), got[:200]
                    if status == b"503":
                        assert b"X-Ollama-Reason: body" in got and b"Retry-After: 1" in got
                deadline = time.monotonic() + 5
                while served.server.body_budget.held and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert served.server.body_budget.held == 0  # given back when the request ended
            finally:
                served.close()


def test_an_upstream_flooding_interim_answers_still_meets_the_head_deadline(serve):
    """h11 takes any number of 1xx answers and the relay skips each: an upstream that
    always has one ready must still be cut at limits.upstream with a 504, not held forever."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def flood() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            try:
                while not stop.is_set():
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 64)
            except OSError:
                pass

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        upstream = Upstream(protocol.URL("http", f"127.0.0.1:{listener.getsockname()[1]}", "", ""), 5, environ={})
        port = serve(Forwarding(), Limits(upstream=0.5), upstream)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(65536)
            took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 504 "), answer[:80]
        assert took < 5, took
    finally:
        stop.set()
        listener.close()


def test_after_refusing_a_head_the_engine_reads_for_limits_linger_then_closes(serve):
    # RFC 9112 9.6: a server closing on a client that may still be sending half-closes
    # first and keeps reading for a while, so that the client's bytes do not reset the
    # connection before it reads the answer; then it closes. Here: a malformed head
    # (400, RFC 9112 5.1: a field line without a colon), limits.linger 2 s.
    port = serve(Answering(), Limits(linger=2.0))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # the answer, then the server's half-close
            answer += chunk
        half_closed = time.monotonic()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        sock.sendall(b"x" * 4096)  # the rest of what the client was sending: read, not refused
        time.sleep(0.2)
        sock.sendall(b"x" * 4096)
        reset_after = None
        while time.monotonic() - half_closed < 8:
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                reset_after = time.monotonic() - half_closed
                break
            time.sleep(0.05)
    # closed once the linger is over: the connection is not kept (nor its place at the cap)
    assert reset_after is not None and reset_after > 0.2, reset_after


class AnsweringBig:
    """Answers every request itself, with a body far larger than socket buffers hold."""

    size = 16 << 20

    def decide(self, head: Head) -> Answer:
        return Answer(200, body=b"x" * self.size, keep_alive=True)


def test_a_client_that_does_not_take_an_answer_of_the_engines_own_is_let_go_at_limits_head(serve):
    # An answer of the engine's own is written within limits.head; a client that takes
    # none of it for that long is not reading, and is not waited on for --timeout
    # (limits.upstream, the bound for relayed answers, which may be slow to come).
    port = serve(AnsweringBig(), Limits(head=0.5, upstream=60))
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room before the server must wait
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(2)  # reads nothing for four times limits.head
        sock.settimeout(3)
        received = bytearray()
        try:
            while chunk := sock.recv(1 << 20):
                received += chunk
        except TimeoutError:
            pass  # still open after 3 s without a byte: the engine is still waiting to write
        except ConnectionResetError:
            pass
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and f"content-length: {AnsweringBig.size}".encode() in head.lower(), head
    assert len(body) < AnsweringBig.size  # the engine stopped writing and closed: cut, not waited on

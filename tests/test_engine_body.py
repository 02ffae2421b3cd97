"""Issue 22, the engine's side: a policy that decides on the request body (NeedBody),
a Forward that carries the body it read, an answer filtered before the client sees it,
a per-request release, and the peer address. Policies here are small fakes; the
upstream is a raw recording server, so what reached it is seen on the wire."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time

import pytest
from faults import KeepAliveServer
import serving
from serving import InProcess

from credential_helper.serve.limits import Limits
from credential_helper.serve.messages import Answer, Forward, Head, NeedBody

pytestmark = pytest.mark.process  # loopback servers, in this process


def listing(head: bytes, body: bytes, index: int) -> bytes:
    payload = json.dumps({"models": [{"name": "small:latest"}, {"name": "big:latest"}], "echo": body.decode()}).encode()
    line = head.split(b"\r\n", 1)[0]
    if b"gzip-please" in line:
        payload = gzip.compress(payload, mtime=0)
        return b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    if b"chunked-please" in line:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)


class Policy:
    """Asks for the body; forwards when it holds "allow", refuses otherwise."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.heads: list[Head] = []
        self.bodies: list[bytes] = []
        self.released = 0
        self.filter = None

    def release(self) -> None:
        self.released += 1

    def decide(self, head: Head):
        self.heads.append(head)

        def then(body: bytes):
            self.bodies.append(body)
            if b"allow" not in body:
                return Answer(403, "not this one")
            return Forward(
                head.target, (("Host", "upstream"),), release=self.release, filter_answer=self.filter, filter_limit=4096
            )

        return NeedBody(self.limit, then)


@pytest.fixture
def engine():
    started = []

    def start(policy, respond=listing, limits=None):
        upstream_server = KeepAliveServer(respond).__enter__()
        served = InProcess(policy, upstream=upstream_server.host, timeout=5, limits=limits)
        started.append((served, upstream_server))
        return served.port, upstream_server, served.log

    yield start
    for served, upstream_server in started:
        served.close()
        upstream_server.__exit__(None, None, None)


def exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    return serving.exchange(port, data, timeout, reset_ends=False)


def test_a_chunked_body_is_read_whole_then_forwarded_with_one_content_length(engine):
    policy = Policy()
    port, upstream, _ = engine(policy)
    reply = exchange(
        port,
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nall\r\n2\r\now\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    ((_, head, body),) = upstream.requests
    assert body == b"allow" and policy.bodies == [b"allow"]
    fields = head.lower().split(b"\r\n")
    assert b"content-length: 5" in fields and not any(f.startswith(b"transfer-encoding") for f in fields)
    assert policy.released == 1


def test_a_refused_body_never_reaches_the_upstream_and_nothing_is_released(engine):
    policy = Policy()
    port, upstream, _ = engine(policy)
    reply = exchange(port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\ndeny")
    time.sleep(0.1)
    assert reply.startswith(b"HTTP/1.1 403 ") and upstream.requests == [] and policy.released == 0


@pytest.mark.parametrize(
    "data",
    [
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nallow......",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nallow.\r\n6\r\n......\r\n0\r\n\r\n",
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\nExpect: 100-continue\r\n\r\n",
    ],
    ids=["content-length", "chunked", "expect-100"],
)
def test_a_body_over_the_limit_is_413_before_anything_goes_upstream(engine, data):
    policy = Policy(limit=10)
    port, upstream, _ = engine(policy)
    reply = exchange(port, data)
    time.sleep(0.1)
    assert reply.startswith(b"HTTP/1.1 413 "), reply
    assert b"100 Continue" not in reply and upstream.requests == [] and policy.bodies == []


def test_a_malformed_chunked_body_is_400_and_nothing_goes_upstream(engine):
    policy = Policy()
    port, upstream, _ = engine(policy)
    reply = exchange(port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nallow\r\n0\r\n\r\n")
    time.sleep(0.1)
    assert reply.startswith(b"HTTP/1.1 400 ") and upstream.requests == []


def test_a_body_that_stops_arriving_reaches_nothing(engine):
    policy = Policy()
    port, upstream, _ = engine(policy, limits=Limits(body=0.3, upstream=5))
    reply = exchange(port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nallow", timeout=3)
    assert reply == b"" and upstream.requests == [] and policy.bodies == []


def test_the_peer_address_reaches_the_policy(engine):
    policy = Policy()
    port, _, _ = engine(policy)
    exchange(port, b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nallow")
    assert policy.heads[0].peer == "127.0.0.1"


def test_an_ipv4_mapped_peer_is_shown_as_ipv4():
    from credential_helper.serve.engine import peer_address

    class Fake:
        def __init__(self, address):
            self.address = address

        def getpeername(self):
            return (self.address, 1, 0, 0)

    assert peer_address(Fake("::ffff:10.1.2.3")) == "10.1.2.3"
    assert peer_address(Fake("::1")) == "::1"


@pytest.mark.parametrize("ask", [b"plain", b"chunked-please"])
def test_a_filtered_answer_has_the_filtered_body_and_its_own_length(engine, ask):
    policy = Policy()

    def only_small(status: int, body: bytes) -> bytes:
        data = json.loads(body)
        data["models"] = [m for m in data["models"] if m["name"].startswith("small")]
        return json.dumps(data).encode()

    policy.filter = only_small
    port, _, _ = engine(policy)
    reply = exchange(
        port, b"POST /api/tags?" + ask + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nallow"
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"big" not in body and b"small" in body
    assert f"content-length: {len(body)}".encode() in head.lower().split(b"\r\n")
    assert b"transfer-encoding" not in head.lower()


def test_a_compressed_answer_to_filter_is_refused(engine):
    policy = Policy()
    policy.filter = lambda status, body: body
    port, _, _ = engine(policy)
    reply = exchange(
        port, b"POST /api/tags?gzip-please HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nallow"
    )
    assert reply.startswith(b"HTTP/1.1 502 ") and b"compressed" in reply and b"big" not in reply


def test_release_is_called_when_the_client_goes_mid_answer(engine):
    policy = Policy()
    gone = threading.Event()

    def slow(head: bytes, body: bytes, index: int) -> bytes:
        gone.wait(5)
        time.sleep(0.3)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    port, _, _ = engine(policy, slow)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nallow")
        time.sleep(0.2)
    gone.set()
    deadline = time.monotonic() + 5
    while policy.released == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert policy.released == 1

"""A hostile review of today's work (issue 22), through a running gate: each test failed on main."""

from __future__ import annotations

import socket
import time

import pytest
from faults import KeepAliveServer
from test_gate_models import Gate, key_line, sign, write_keys

pytestmark = pytest.mark.process  # loopback servers

module_keys = pytest.importorskip("test_gate_models").module_keys  # the fixture, shared


def _partial(port: int, target: str, authorization: str, length: int, sent: int) -> socket.socket:
    """A models= request whose body stops short: the gate holds what it read, waiting for the rest."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        (f"POST {target} HTTP/1.1\r\nHost: gate\r\nAuthorization: {authorization}\r\nContent-Length: {length}\r\n\r\n").encode()
        + b'{"model":"small","prompt":"'
        + b"x" * (sent - 27)
    )
    return sock


def test_bodies_held_for_the_model_check_are_bounded_across_connections(tmp_path, module_keys):
    # Each connection may hold one body up to the limit (32 MiB by default) while it trickles in,
    # and 512 connections are admitted: 16 GiB from one member with a models= line. Here with a
    # 1 MiB limit: the 9th connection holding ~1 MiB must be refused, not buffered.
    path = write_keys(tmp_path, f'models="small*" {key_line("ed25519-b")} bob *\n')
    with KeepAliveServer(lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") as upstream:
        running = Gate(path, upstream.host, max_body=1 << 20)
        if hasattr(running.server, "body_budget"):
            running.server.body_budget.total = 8 << 20  # the server-wide budget, small for the test
        held = []
        try:
            replies = []
            for _ in range(12):
                target, authorization = sign(module_keys, "POST", "/api/generate")
                sock = _partial(running.port, target, authorization, 1 << 20, (1 << 20) - 100)
                held.append(sock)
                sock.settimeout(0.5)
                try:
                    replies.append(sock.recv(200))
                except TimeoutError:
                    replies.append(b"")
            refused = [r for r in replies if r.startswith(b"HTTP/1.1 503 ")]
            assert len(refused) >= 4, replies
            assert upstream.requests == []
        finally:
            for sock in held:
                sock.close()
            time.sleep(0.2)
            running.close()


def _get(port: int, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


def test_loopback_metrics_answer_only_their_own_host_names_not_a_rebound_dns_name():
    # A web page whose DNS name rebinds to 127.0.0.1 reads same-origin what a loopback listener
    # answers: every member's name, their models and usage. The proxy checks Host for this reason.
    from credential_helper.serve.metrics import Metrics

    exporter = Metrics().serve(("127.0.0.1", 0))
    try:
        port = exporter.address[1]
        assert _get(port, f"127.0.0.1:{port}").startswith(b"HTTP/1.1 200 ")
        assert _get(port, f"localhost:{port}").startswith(b"HTTP/1.1 200 ")
        assert _get(port, f"rebound.attacker.example:{port}").startswith(b"HTTP/1.1 403 ")
    finally:
        exporter.close()


def _one_byte_chunks(port: int, target: str, authorization: str, body: bytes) -> bytes:
    framed = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {target} HTTP/1.1\r\nHost: gate\r\nAuthorization: {authorization}\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        try:
            sock.sendall(framed)
        except OSError:
            pass  # refused part way: the answer is waiting
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except OSError:
            pass
        return reply


@pytest.mark.parametrize("rule", ['models="small*" ', ""], ids=["read-for-models", "relayed"])
def test_a_body_in_one_byte_chunks_is_refused_before_it_costs_minutes(tmp_path, module_keys, rule):
    # h11 spends ~4 us per chunk (and the relay a write to Ollama per chunk): a 32 MiB body sent
    # as 1-byte chunks (~200 MiB on the wire, nothing for the sender) was >2 minutes of CPU.
    path = write_keys(tmp_path, f"{rule}{key_line('ed25519-b')} bob *\n")
    with KeepAliveServer(lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") as upstream:
        running = Gate(path, upstream.host)
        try:
            target, authorization = sign(module_keys, "POST", "/api/chat")
            body = b'{"model":"small","prompt":"' + b"x" * 20_000 + b'"}'
            reply = _one_byte_chunks(running.port, target, authorization, body)
            assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
            assert b"larger chunks" in reply
            # Relayed, the head went on before the body: Ollama never gets the whole body.
            assert all(len(got) < len(body) for _, _, got in upstream.requests), upstream.requests
        finally:
            running.close()

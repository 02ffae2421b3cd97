"""``ollama-credential-helper proxy``: the installed executable, started as a
subprocess, between real clients (openai, ollama, curl, raw sockets) and the
loopback stand-in, which verifies every signature from the bytes on the wire."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from credential_helper.standin import REPLY_WORDS, StandIn
from faults import CertificateAuthority, ConnectProxy, ScriptedServer, silent

REPLY = "".join(REPLY_WORDS)


from serving import raw_exchange, request  # noqa: E402


# --- clients no one here wrote --------------------------------------------------------------


def test_openai_client_through_the_proxy_sync_and_async(upstream, start_proxy):
    import openai

    proxy = start_proxy("--upstream", upstream.base_url)
    client = openai.OpenAI(base_url=f"{proxy.base}/v1", api_key=proxy.token, max_retries=0, timeout=30)
    assert (
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
        == REPLY
    )
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert [c.choices[0].delta.content for c in stream if c.choices[0].delta.content] == REPLY_WORDS

    async def main():
        aclient = openai.AsyncOpenAI(base_url=f"{proxy.base}/v1", api_key=proxy.token, max_retries=0, timeout=30)
        done = await aclient.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        astream = await aclient.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        return done.choices[0].message.content, [c.choices[0].delta.content async for c in astream if c.choices[0].delta.content]

    assert asyncio.run(main()) == (REPLY, REPLY_WORDS)
    assert upstream.refused_requests == [] and len(upstream.signed_requests) == 4
    for headers in upstream.request_headers:
        authorization = dict((k.lower(), v) for k, v in headers)["authorization"]
        assert proxy.token not in authorization and authorization.startswith("AAAAC3NzaC1lZDI1NTE5")


def test_ollama_client_through_the_proxy(upstream, start_proxy, monkeypatch):
    import ollama

    proxy = start_proxy("--upstream", upstream.base_url)
    monkeypatch.setenv("OLLAMA_API_KEY", proxy.token)  # as --print-env sets it
    client = ollama.Client(host=proxy.base, timeout=30)
    assert [
        part.message.content for part in client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    ] == [*REPLY_WORDS, ""]
    assert client.show("m").modelfile == "FROM stand-in"
    assert len(client.list().models) == 2
    assert [(m, t.split("?")[0]) for m, t in upstream.signed_requests] == [
        ("POST", "/api/chat"),
        ("POST", "/api/show"),
        ("GET", "/api/tags"),
    ]


def test_curl_chunked_upload_arrives_intact(upstream, start_proxy, tmp_path):
    proxy = start_proxy("--upstream", upstream.base_url)
    payload = os.urandom(300_000)
    (tmp_path / "payload").write_bytes(payload)
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail-with-body",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            f"Authorization: Bearer {proxy.token}",
            "--data-binary",
            f"@{tmp_path / 'payload'}",
            f"{proxy.base}/api/upload?x=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert json.loads(done.stdout) == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    received = dict((k.lower(), v) for k, v in upstream.request_headers[-1])
    assert received["transfer-encoding"] == "chunked"


# --- the local access token ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"x-api-key": "wrong"}],
    ids=["missing", "wrong-bearer", "wrong-x-api-key"],
)
def test_without_the_local_token_nothing_is_forwarded(upstream, start_proxy, proxy_env, headers):
    proxy = start_proxy("--upstream", upstream.base_url)
    saved, proxy.token = proxy.token, None
    status, _, body = request(proxy, "POST", "/api/me", b"", headers)
    assert status == 401
    message = json.loads(body)["error"]
    assert os.path.join(proxy_env["XDG_CONFIG_HOME"], "ollama-credential-helper", "proxy-token") in message
    assert upstream.request_headers == [] and upstream.signed_requests == [] and upstream.refused_requests == []
    proxy.token = saved
    assert request(proxy, "POST", "/api/me", b"", {"x-api-key": saved})[0] == 200


def test_the_token_file_is_private_and_stable(start_proxy, upstream, proxy_env):
    first = start_proxy("--upstream", upstream.base_url)
    path = os.path.join(proxy_env["XDG_CONFIG_HOME"], "ollama-credential-helper", "proxy-token")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
    second = start_proxy("--upstream", upstream.base_url)
    assert first.token == second.token and len(first.token) >= 32


def test_no_local_token_warns_and_accepts(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url, "--no-local-token", token=False)
    assert request(proxy, "POST", "/api/me", b"")[0] == 200
    proxy.stop()
    assert any(line.startswith("warning: --no-local-token") for line in proxy.log)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "192.0.2.1:8080", "[::]:0", "example.com:80"])
def test_a_non_loopback_listen_address_is_refused(run, listen):
    result = run(["proxy", "--listen", listen])
    assert result.code == 2 and "loopback" in result.err, result


def test_print_env_lines(run, proxy_env):
    result = run(["proxy", "--print-env", "--listen", "127.0.0.1:12345"], environment=proxy_env)
    assert result.code == 0, result
    values = dict(line[len("export ") :].split("=", 1) for line in result.out.splitlines())
    assert values["OPENAI_BASE_URL"] == "http://127.0.0.1:12345/v1" and values["OLLAMA_HOST"] == "http://127.0.0.1:12345"
    assert values["OPENAI_API_KEY"] == values["OLLAMA_API_KEY"] == values["ANTHROPIC_API_KEY"]


# --- what is forwarded -------------------------------------------------------------------------


def test_hop_by_hop_and_local_headers_are_dropped(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url)
    reply = raw_exchange(
        proxy,
        (
            f"POST /api/me?secret=value HTTP/1.1\r\nHost: localhost:{proxy.port}\r\nContent-Length: 0\r\n"
            f"x-api-key: {proxy.token}\r\nConnection: close, X-Private-Hop\r\nX-Private-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
            "TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Forwarded-For: 10.1.2.3\r\n"
            "Forwarded: for=10.1.2.3\r\nAccept-Encoding: gzip\r\nX-Custom: kept\r\n\r\n"
        ).encode(),
    )
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    received = {k.lower(): v for k, v in upstream.request_headers[-1]}
    for name in ("x-private-hop", "keep-alive", "te", "proxy-authorization", "x-forwarded-for", "forwarded", "x-api-key"):
        assert name not in received, name
    assert received["host"] == upstream.host and received["x-custom"] == "kept" and received["accept-encoding"] == "gzip"
    proxy.stop()
    logged = [line for line in proxy.log if "/api/me" in line]
    assert logged and all("secret" not in line and "value" not in line and proxy.token not in line for line in proxy.log)
    assert logged[0].split()[:3] == ["POST", "/api/me", "200"] and logged[0].endswith("ms")


def test_compression_passes_through_untouched(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url)
    status, headers, body = request(proxy, "GET", "/api/gzip", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body)) == {"compressed": True}


def test_redirects_are_returned_not_followed(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url)
    reply = raw_exchange(
        proxy,
        f"GET /api/redirect HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 302 ") and b"\r\nLocation: https://elsewhere.example/landing\r\n" in reply
    assert len(upstream.signed_requests) == 1


# --- malformed HTTP never reaches upstream --------------------------------------------------------

MALFORMED = {
    "cl-and-te": b"POST /api/me HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": b"POST /api/me HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "te-gzip": b"POST /api/me HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "bad-chunk-size": b"POST /api/me HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-without-crlf": b"POST /api/me HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "huge-header": b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n",
    "bare-lf": b"GET /api/tags HTTP/1.1\nHost: x\n\n",
    "folded": b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "absolute-form": b"GET http://evil.example/api/tags HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    "no-host": b"GET /api/tags HTTP/1.1\r\n\r\n",
    "space-before-colon": b"GET /api/tags HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_400_and_never_reach_upstream(upstream, start_proxy, data):
    proxy = start_proxy("--upstream", upstream.base_url)
    authorized = data.replace(b"Host: x\r\n", f"Host: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\n".encode(), 1)
    reply = raw_exchange(proxy, authorized)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert b'"error"' in reply
    time.sleep(0.2)
    assert upstream.request_headers == [] and upstream.signed_requests == [] and upstream.refused_requests == []


# --- failures are HTTP answers ---------------------------------------------------------------------


def test_upstream_unreachable_is_502(start_proxy):
    proxy = start_proxy("--upstream", "http://127.0.0.1:9")
    status, _, body = request(proxy, "POST", "/api/me", b"")
    assert status == 502 and "connection refused" in json.loads(body)["error"]


def test_upstream_timeout_is_504(start_proxy):
    with ScriptedServer(silent) as quiet:
        proxy = start_proxy("--upstream", f"http://{quiet.host}", "--timeout", "1")
        started = time.monotonic()
        status, _, body = request(proxy, "POST", "/api/me", b"")
    assert status == 504 and "in time" in json.loads(body)["error"]
    assert time.monotonic() - started < 10


def test_no_usable_identity_exits_3_at_start_with_the_cli_message(upstream, proxy_env, run):
    """Issue 14.8: a proxy that cannot sign says so at once, not with a 503 per request."""
    environment = dict(proxy_env, HOME=proxy_env["HOME"] + "-nokey")
    proxy = run(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream.base_url], environment=environment)
    cli = run(["sign", "POST", f"{upstream.base_url}/api/me"], environment=environment)
    assert proxy.code == 3 and cli.code == 3
    assert proxy.err == cli.err and proxy.err.count("\n") == 1
    assert upstream.request_headers == []


def test_over_the_concurrency_limit_is_503(public_line, start_proxy):
    with StandIn(chunk_delay=0.2) as slow:
        slow.authorize(public_line("ed25519-a"))
        slow.stream_chunks = 15
        proxy = start_proxy("--upstream", slow.base_url, "--max-concurrency", "1")
        with socket.create_connection(("127.0.0.1", proxy.port)) as first:
            body = b'{"stream": true}'
            first.sendall(
                f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            first.recv(100)  # the stream has started
            status, _, reply = request(proxy, "POST", "/api/me", b"")
        assert status == 503 and "concurrency" in json.loads(reply)["error"]


def test_a_burst_of_clients_is_queued_by_the_kernel_not_dropped(upstream, start_proxy):
    """64 clients connect while the proxy cannot accept (stopped): the listen
    backlog holds them all, and each is served once it runs again. With
    socketserver's default backlog of 5 the kernel drops the other handshakes."""
    proxy = start_proxy("--upstream", upstream.base_url)
    os.kill(proxy.process.pid, signal.SIGSTOP)
    clients: list[socket.socket] = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5))
    except TimeoutError:
        pass
    finally:
        os.kill(proxy.process.pid, signal.SIGCONT)
    try:
        assert len(clients) == 64
        head = f"POST /api/me HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        for client in clients:
            client.settimeout(30)
            client.sendall(head.encode())
        answers = [client.makefile("rb").readline() for client in clients]
        assert answers == [b"HTTP/1.1 200 OK\r\n"] * 64
        assert len(upstream.signed_requests) == 64
    finally:
        for client in clients:
            client.close()


# --- streaming, disconnects, shutdown ------------------------------------------------------------


def test_a_client_that_hangs_up_mid_stream_ends_the_upstream_request(public_line, start_proxy):
    with StandIn(chunk_delay=4.0) as slow:
        slow.authorize(public_line("ed25519-a"))
        slow.stream_chunks = 10  # 40 seconds if nobody stops it
        proxy = start_proxy("--upstream", slow.base_url)
        # One thread serves every connection; a worker thread makes upstream
        # connections and stays for the next (serve/loop.py): counted once one has run.
        assert request(proxy, "POST", "/api/me", b"")[0] == 200
        threads_before = proxy.threads()
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            body = b'{"stream": true}'
            sock.sendall(
                f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            data = b""
            while b"Hello" not in data:
                data += sock.recv(4096)
        hung_up = time.monotonic()
        # Between two upstream chunks (4 s apart), the proxy notices and cuts the
        # upstream request: it does not wait for the next chunk to fail. (Bounded
        # well under the gap, with room for a loaded machine.)
        line = proxy.wait_for("client gone", timeout=3.0)
        assert line.startswith("POST /api/chat 200 "), proxy.log
        assert time.monotonic() - hung_up < 3.0
        while slow.aborted_streams < 1 and time.monotonic() - hung_up < 12:  # it learns at its next writes
            time.sleep(0.05)
        assert slow.aborted_streams == 1  # the upstream saw its client go
        time.sleep(0.3)
        assert proxy.threads() <= threads_before  # no handler or watcher thread left behind


def test_time_to_first_chunk_is_not_buffered(public_line, start_proxy):
    with StandIn(chunk_delay=0.3) as slow:
        slow.authorize(public_line("ed25519-a"))
        proxy = start_proxy("--upstream", slow.base_url)
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            body = b'{"stream": true}'
            started = time.monotonic()
            sock.sendall(
                f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            data = b""
            while b"Hello" not in data:
                data += sock.recv(4096)
            first = time.monotonic() - started
    # The whole stream takes 5 x 0.3 s; the first chunk must not wait for it.
    assert first < 0.25, first


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_lets_a_stream_finish_then_exits_0(public_line, start_proxy, sig):
    with StandIn(chunk_delay=0.2) as slow:
        slow.authorize(public_line("ed25519-a"))
        proxy = start_proxy("--upstream", slow.base_url)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            body = b'{"stream": true}'
            sock.sendall(
                f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            sock.recv(100)
            proxy.process.send_signal(sig)
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        assert data.endswith(b"0\r\n\r\n") and b"stand-in." in data
        proxy.stop()
        assert proxy.returncode == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


# --- upstream through HTTPS_PROXY -------------------------------------------------------------------


def test_https_upstream_through_a_connect_proxy(public_line, start_proxy, proxy_env, tmp_path):
    ca = CertificateAuthority(tmp_path)
    with (
        StandIn(tls_context=ca.server_context(["ollama.test"], [])) as origin,
        ConnectProxy({"ollama.test": "127.0.0.1"}) as tunnel,
    ):
        origin.authorize(public_line("ed25519-a"))
        upstream_url = f"https://ollama.test:{origin.server.server_address[1]}"
        environment = dict(proxy_env, SSL_CERT_FILE=str(ca.ca_file), HTTPS_PROXY=tunnel.url)
        proxy = start_proxy("--upstream", upstream_url, environment=environment)
        status, _, body = request(proxy, "POST", "/api/me", b"")
        assert status == 200 and json.loads(body)["name"] == "jdoe"
        assert tunnel.connects() == [f"ollama.test:{origin.server.server_address[1]}"]


def test_an_upstream_echoing_the_signature_in_a_bad_status_line_never_gets_it_shown(start_proxy):
    import re as re_module

    def echo(conn, head):
        authorization = re_module.search(rb"(?im)^authorization: *(.+?)\r$", head).group(1)
        conn.sendall(b"HTTP/1.1 " + authorization + b"\r\n\r\n")

    with ScriptedServer(echo) as hostile:
        proxy = start_proxy("--upstream", f"http://{hostile.host}", "--verbose")
        status, _, body = request(proxy, "POST", "/api/me", b"")
        signature = re_module.search(rb"(?im)^authorization: *\S+:(\S+?)\r$", hostile.requests[0]).group(1).decode()
    assert status == 502
    proxy.stop()
    for text in (body.decode(), "\n".join(proxy.log)):
        assert signature not in text and signature[:40] not in text

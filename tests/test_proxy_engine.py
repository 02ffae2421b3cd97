"""Issue 14: the proxy as a correct HTTP intermediary. Each test drives the
installed executable with raw sockets against upstreams that misbehave on
purpose (interim answers, bodies cut short, stale kept-alive connections), and
checks what reaches each side on the wire."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import helper_executable, load_vectors
from credential_helper.standin import StandIn
from faults import ConnectProxy, KeepAliveServer, ScriptedServer
from serving import raw_exchange, request


def read_response(sock: socket.socket, method: str = "GET") -> http.client.HTTPResponse:
    """One response off a kept-alive socket, parsed by http.client (not the proxy's engine)."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    return response


def send(sock: socket.socket, proxy, method: str, path: str, body: bytes = b"", extra: str = "") -> None:
    length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT", "PATCH") else ""
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\n{length}{extra}\r\n".encode()
        + body
    )


def named_answer(head: bytes, body: bytes, index: int) -> bytes:
    """103 Early Hints, then the final answer naming the request's own path."""
    path = head.split(b" ", 2)[1].split(b"?")[0]
    payload = json.dumps({"path": path.decode()}).encode()
    return (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )


# --- 1. interim answers ---------------------------------------------------------------------


def test_an_interim_103_never_becomes_the_answer_and_never_reaches_another_client(start_proxy):
    with KeepAliveServer(named_answer) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        answers = {}
        for name in ("a", "b", "c"):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:  # a new client each time
                send(sock, proxy, "GET", f"/api/{name}")
                response = read_response(sock)
                answers[name] = (response.status, json.loads(response.read()))
    assert answers == {name: (200, {"path": f"/api/{name}"}) for name in ("a", "b", "c")}
    assert upstream.connections == 1  # all three on one pooled upstream connection, each its own answer


# --- 2. a body cut short --------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_an_upstream_body_cut_short_cuts_the_client_connection(start_proxy, framing):
    def cut(head: bytes, body: bytes, index: int):
        if index == 0:
            if framing == "length":
                return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater"

    with ScriptedServer(lambda conn, head: (conn.sendall(cut(head, b"", 0)), conn.shutdown(socket.SHUT_WR))) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            send(sock, proxy, "GET", "/api/tags")
            received = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break  # the proxy closed the connection after what arrived
                received += chunk
            send_after = None
            try:
                send(sock, proxy, "GET", "/api/tags")
                send_after = sock.recv(100)
            except OSError:
                pass
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"0123456789" in body and b"later" not in received
    if framing == "chunked":
        assert not body.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees the cut
    assert not send_after  # never kept alive
    proxy.stop()
    line = next(line for line in proxy.log if "/api/tags" in line)
    assert line.startswith("GET /api/tags 200 10B") and "cut" in line, line


# --- 3. one Content-Length ------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [["5, 5"], ["5", "5"], ["005"], ["5,5"]])
def test_exactly_one_content_length_reaches_upstream(start_proxy, lengths):
    with KeepAliveServer(lambda head, body, i: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        fields = "".join(f"Content-Length: {value}\r\n" for value in lengths)
        reply = raw_exchange(
            proxy,
            f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\n{fields}Connection: close\r\n\r\nhello".encode(),
        )
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    ((_, head, body),) = upstream.requests
    assert [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")] == [b"content-length: 5"]
    assert body == b"hello"


@pytest.mark.parametrize("lengths", [["5", "6"], ["5, 6"], ["-5"], ["5x"], ["0x5"]])
def test_conflicting_or_malformed_content_length_is_400(start_proxy, lengths):
    with KeepAliveServer(lambda head, body, i: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        fields = "".join(f"Content-Length: {value}\r\n" for value in lengths)
        reply = raw_exchange(
            proxy,
            f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\n{fields}\r\nhello!".encode(),
        )
        time.sleep(0.3)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert upstream.requests == []


# --- 4. never twice -------------------------------------------------------------------------


def closes_after_reading_the_second(head: bytes, body: bytes, index: int):
    """Answers the first request on a connection; reads the second and hangs up."""
    if index == 0:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    return None


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE", "PUT"])
def test_a_non_safe_request_is_never_sent_twice(start_proxy, method):
    with KeepAliveServer(closes_after_reading_the_second) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        status, _, _ = request(proxy, "GET", "/api/tags")
        assert status == 200
        status, _, body = request(proxy, method, "/api/delete" if method == "DELETE" else "/api/me")
    assert status == 502 and json.loads(body)["error"]
    assert [head.split(b" ")[0].decode() for _, head, _ in upstream.requests] == ["GET", method]


def test_a_safe_request_on_a_stale_connection_is_retried_once_on_a_fresh_one(start_proxy):
    with KeepAliveServer(closes_after_reading_the_second) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        assert request(proxy, "GET", "/api/tags")[0] == 200
        status, _, body = request(proxy, "GET", "/api/ps")
        proxy.stop()
    assert (status, body) == (200, b"ok"), proxy.log
    assert [(number, head.split(b" ")[1].split(b"?")[0]) for number, head, _ in upstream.requests] == [
        (1, b"/api/tags"),
        (1, b"/api/ps"),
        (2, b"/api/ps"),
    ]


# --- 5. DNS rebinding and web pages ---------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1:1",
        "localhost.evil.example:{port}",
        "127.0.0.2:{port}",
        "",
        "evillocalhost:{port}",
    ],
)
@pytest.mark.parametrize("token", [True, False])
def test_a_host_that_is_not_the_proxy_is_refused(upstream, start_proxy, host, token):
    args = ("--upstream", upstream.base_url) + (() if token else ("--no-local-token",))
    proxy = start_proxy(*args, token=token)
    auth = f"Authorization: Bearer {proxy.token}\r\n" if token else ""
    host_line = f"Host: {host.format(port=proxy.port)}\r\n" if host else "Host: \r\n"
    reply = raw_exchange(proxy, f"POST /api/me HTTP/1.1\r\n{host_line}{auth}Content-Length: 0\r\n\r\n".encode())
    time.sleep(0.3)
    assert reply.split(b" ", 2)[1] in (b"400", b"403"), reply
    assert upstream.request_headers == []


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "LOCALHOST:{port}", "localhost:{port}"])
def test_the_proxys_own_host_names_are_admitted(upstream, start_proxy, host):
    proxy = start_proxy("--upstream", upstream.base_url)
    reply = raw_exchange(
        proxy,
        f"POST /api/me HTTP/1.1\r\nHost: {host.format(port=proxy.port)}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(),
    )
    assert reply.startswith(b"HTTP/1.1 200 "), reply


BROWSER = {
    "cross-site-origin": "Origin: http://evil.example\r\nContent-Type: text/plain\r\n",
    "null-origin": "Origin: null\r\n",
    "sec-fetch-cross-site": "Sec-Fetch-Site: cross-site\r\n",
    "sec-fetch-same-site": "Sec-Fetch-Site: same-site\r\n",
    "localhost-origin-not-allowed": "Origin: http://localhost:3000\r\n",
}


@pytest.mark.parametrize("fields", BROWSER.values(), ids=BROWSER.keys())
@pytest.mark.parametrize("token", [True, False])
def test_a_web_pages_request_is_refused_without_allow_origin(upstream, start_proxy, fields, token):
    proxy = start_proxy("--upstream", upstream.base_url, *(() if token else ("--no-local-token",)), token=token)
    auth = f"Authorization: Bearer {proxy.token}\r\n" if token else ""
    reply = raw_exchange(
        proxy, f"POST /api/chat HTTP/1.1\r\nHost: {proxy.host}\r\n{auth}{fields}Content-Length: 2\r\n\r\n{{}}".encode()
    )
    time.sleep(0.3)
    assert reply.startswith(b"HTTP/1.1 403 "), reply
    assert "--allow-origin" in json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
    assert upstream.request_headers == []


def test_allow_origin_admits_that_origin_only(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url, "--allow-origin", "http://localhost:3000")
    admitted = raw_exchange(
        proxy,
        f"POST /api/me HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nOrigin: http://LocalHost:3000\r\nSec-Fetch-Site: same-site\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(),
    )
    refused = raw_exchange(
        proxy,
        f"POST /api/me HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nOrigin: http://localhost:3001\r\nContent-Length: 0\r\n\r\n".encode(),
    )
    assert admitted.startswith(b"HTTP/1.1 200 ") and refused.startswith(b"HTTP/1.1 403 ")
    assert len(upstream.request_headers) == 1
    assert "origin" not in {name.lower() for name, _ in upstream.request_headers[0]}


# --- 6. slow and idle connections -----------------------------------------------------------


@pytest.mark.parametrize("opening", [b"", b"GET /"], ids=["idle", "head-begun-never-finished"])
def test_sockets_beyond_the_connection_cap_do_not_lock_out_the_token_holder(upstream, start_proxy, opening):
    proxy = start_proxy("--upstream", upstream.base_url)
    held = []
    try:
        for _ in range(520):
            sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            if opening:
                sock.sendall(opening)
            held.append(sock)
        time.sleep(0.5)
        started = time.monotonic()
        status, _, _ = request(proxy, "POST", "/api/me", b"")
        assert status == 200 and time.monotonic() - started < 5
    finally:
        for sock in held:
            sock.close()


# --- 7. the hang-up watch -------------------------------------------------------------------


def test_complete_curl_streams_are_never_reported_as_client_gone(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url)
    for _ in range(12):
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "-N",
                "--fail",
                f"{proxy.base}/api/chat",
                "-H",
                f"Authorization: Bearer {proxy.token}",
                "-d",
                '{"model": "m", "messages": [], "stream": true}',
            ],
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
    proxy.stop()
    chats = [line for line in proxy.log if "/api/chat" in line]
    assert len(chats) == 12 and not [line for line in chats if "gone" in line or "cut" in line], chats


def test_the_proxy_works_on_file_descriptors_above_1024(upstream, proxy_env, tmp_path, start_serving):
    """select() cannot watch a descriptor past FD_SETSIZE; the proxy must not use it."""
    wrapper = tmp_path / "many_fds.py"
    wrapper.write_text(
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))\n"
        "for _ in range(1100):\n"
        "    os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    proxy = start_serving(
        "proxy", "--upstream", upstream.base_url, env=proxy_env, executable=[sys.executable, str(wrapper), *helper_executable()]
    )
    try:
        token = (tmp_path / "config" / "ollama-credential-helper" / "proxy-token").read_text().strip()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            body = b'{"stream": true}'
            sock.sendall(
                f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nAuthorization: Bearer {token}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"0\r\n\r\n"), data[-200:]
    finally:
        log = "\n".join(proxy.stop())
    assert "internal error" not in log and "/api/chat 200" in log, log


# --- 8. the local token never goes upstream -------------------------------------------------


def test_the_local_token_in_ollama_api_key_is_never_sent_upstream(upstream, run, proxy_env):
    printed = run(["proxy", "--print-env"], environment=proxy_env).out
    exported = dict(line[len("export ") :].split("=", 1) for line in printed.splitlines())
    environment = dict(proxy_env, HOME=proxy_env["HOME"] + "-nokey", OLLAMA_API_KEY=exported["OLLAMA_API_KEY"])
    started = run(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream.base_url], environment=environment, timeout=20)
    assert started.code == 3 and "local access token" in started.err and exported["OLLAMA_API_KEY"] not in started.err
    assert upstream.request_headers == []


def test_the_start_line_names_the_credential(upstream, start_proxy, proxy_env):
    identity = load_vectors("identity.json")
    fingerprint = (identity[0] if isinstance(identity, list) else identity)["fingerprint"]
    proxy = start_proxy("--upstream", upstream.base_url)
    assert f"signing with key {fingerprint})" in proxy.first_line
    environment = dict(proxy_env, HOME=proxy_env["HOME"] + "-nokey", OLLAMA_API_KEY="sk-a-real-ollama-api-key-0123456789")
    with_key = start_proxy("--upstream", upstream.base_url, environment=environment)
    assert "signing with OLLAMA_API_KEY (an API key)" in with_key.first_line
    assert "sk-a-real" not in with_key.first_line


def test_the_api_key_fallback_obeys_the_destination_rule(run, proxy_env):
    environment = dict(proxy_env, HOME=proxy_env["HOME"] + "-nokey", OLLAMA_API_KEY="sk-a-real-ollama-api-key-0123456789")
    result = run(
        ["proxy", "--listen", "127.0.0.1:0", "--upstream", "https://api.example.net"], environment=environment, timeout=20
    )
    assert result.code == 2 and "OLLAMA_API_KEY" in result.err and "sk-a-real" not in result.err


# --- 9. the method is signed as sent, or refused ------------------------------------------


@pytest.mark.parametrize("method", ["get", "Post", "M-SEARCH"])
def test_a_method_that_is_not_upper_case_letters_is_refused(upstream, start_proxy, method):
    proxy = start_proxy("--upstream", upstream.base_url)
    reply = raw_exchange(
        proxy, f"{method} /api/tags HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\n\r\n".encode()
    )
    time.sleep(0.3)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert upstream.request_headers == []


# --- 10. our own answers --------------------------------------------------------------------


def test_the_proxys_own_401_carries_status_and_error_and_ends_in_a_newline(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url, "--max-concurrency", "1")
    status, headers, body = request(proxy, "POST", "/api/me", b"", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and body.endswith(b"}\n")
    answer = json.loads(body)
    assert answer["error"] == answer["status"] and "local access token" in answer["status"]
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) == len(body)


# --- 11. a forward proxy's 407 never shows its credentials ----------------------------------


@pytest.mark.parametrize(
    "user, password",
    [
        ("u", "pr0xy-Passw0rd-zz"),
        ("us", "pr0xy-Passw0rd-zz"),
        ("use", "pr0xy-Passw0rd-zz"),
        ("user", "pr0xy-Passw0rd-zz"),
        ("a-much-longer-user-name", "pr0xy-Passw0rd-zz"),
        ("bob", "hunter2"),
    ],
)
def test_a_407_echoing_the_proxy_credentials_never_shows_them(start_proxy, proxy_env, user, password):

    def echo_407(conn, head):
        value = next(
            line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"proxy-authorization")
        )
        import base64 as b64

        pair = b64.b64decode(value.split()[1])
        conn.sendall(
            b"HTTP/1.1 407 " + value + b" pw=" + pair.split(b":", 1)[1] + b" pair=" + pair + b"\r\nContent-Length: 0\r\n\r\n"
        )

    with ScriptedServer(echo_407) as forward:
        environment = dict(proxy_env, HTTPS_PROXY=f"http://{user}:{password}@{forward.host}", NO_PROXY="")
        proxy = start_proxy("--upstream", "https://ollama.com", "--verbose", environment=environment)
        status, _, body = request(proxy, "POST", "/api/me", b"")
        proxy.stop()
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert status == 502 and "407" in json.loads(body)["error"]
    for text in (body.decode(), "\n".join(proxy.log)):
        for secret in (encoded, encoded[:20], password, f"{user}:{password}"):
            assert secret not in text, (secret, text)


def test_the_connect_tunnel_carries_the_proxy_credentials(start_proxy, proxy_env):
    with ConnectProxy(credentials=("alice", "s3cret")) as forward:
        environment = dict(proxy_env, HTTPS_PROXY=forward.url.replace("http://", "http://alice:s3cret@"), NO_PROXY="")
        proxy = start_proxy("--upstream", "https://ollama.test", environment=environment)
        request(proxy, "POST", "/api/me", b"")
        heads = list(forward.requests)
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert any(f"Proxy-Authorization: {expected}".encode().lower() in head.lower() for head in heads), heads


# --- what the HTTP engine must pin (issue 14, "Tests the suite lacks") ---------------------


def test_upgrade_and_connection_named_fields_are_hop_by_hop_whatever_their_case(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url)
    reply = raw_exchange(
        proxy,
        (
            f"POST /api/me HTTP/1.1\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: 0\r\n"
            "Connection: Upgrade, X-PRIVATE-HOP, close\r\nUpgrade: websocket\r\nx-private-hop: 1\r\n"
            "X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Anything: 1\r\n\r\n"
        ).encode(),
    )
    assert reply.startswith(b"HTTP/1.1 200 "), reply
    received = {name.lower() for name, _ in upstream.request_headers[-1]}
    assert "upgrade" not in received and "x-private-hop" not in received
    assert not [name for name in received if name.startswith("x-forwarded-")]


def test_http_1_0_is_not_kept_alive_without_keep_alive(upstream, start_proxy):
    proxy = start_proxy("--upstream", upstream.base_url)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            f"POST /api/me HTTP/1.0\r\nHost: {proxy.host}\r\nAuthorization: Bearer {proxy.token}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):  # the proxy closes: the loop ends
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in data.partition(b"\r\n\r\n")[0] + b"\r\n"


MORE_MALFORMED = {
    "tab-in-request-line": "POST\t/api/me HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\r\n",
    "double-space": "POST  /api/me HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\r\n",
    "nul-in-value": "POST /api/me HTTP/1.1\r\nHost: {host}\r\n{auth}X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "cr-in-value": "POST /api/me HTTP/1.1\r\nHost: {host}\r\n{auth}X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "two-hosts": "POST /api/me HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\r\n",
    "te-in-http-1.0": "POST /api/me HTTP/1.0\r\nHost: {host}\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("template", MORE_MALFORMED.values(), ids=MORE_MALFORMED.keys())
def test_more_malformed_heads_get_400_and_never_reach_upstream(upstream, start_proxy, template):
    proxy = start_proxy("--upstream", upstream.base_url)
    data = template.format(host=proxy.host, auth=f"Authorization: Bearer {proxy.token}\r\n")
    reply = raw_exchange(proxy, data.encode("latin-1"))
    time.sleep(0.3)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert upstream.request_headers == []


@pytest.mark.parametrize("offered", ["prefix", "longer", "empty-x-api-key", "empty-bearer", "basic", "case"])
def test_the_local_token_is_compared_whole(upstream, start_proxy, offered):
    proxy = start_proxy("--upstream", upstream.base_url)
    field = {
        "prefix": f"Authorization: Bearer {proxy.token[:-1]}",
        "longer": f"Authorization: Bearer {proxy.token}x",
        "empty-x-api-key": "x-api-key: ",
        "empty-bearer": "Authorization: Bearer ",
        "basic": f"Authorization: Basic {proxy.token}",
        "case": f"Authorization: Bearer {proxy.token.upper()}",
    }[offered]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        # A second request pipelined behind the refused one: neither may be forwarded.
        one = f"POST /api/me HTTP/1.1\r\nHost: {proxy.host}\r\n{field}\r\nContent-Length: 0\r\n\r\n"
        sock.sendall((one + one.replace(field, f"Authorization: Bearer {proxy.token}")).encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    time.sleep(0.5)  # long enough for a forward that happened after the 401 was written
    assert reply.startswith(b"HTTP/1.1 401 ") and reply.count(b"HTTP/1.1 ") == 1, reply
    assert upstream.request_headers == []


def test_a_304_carries_no_body(start_proxy):
    def not_modified(head: bytes, body: bytes, index: int) -> bytes:
        if index == 0:
            return b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 5\r\n\r\n'
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"

    with KeepAliveServer(not_modified) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            send(sock, proxy, "GET", "/api/tags", extra='If-None-Match: "x"\r\n')
            first = read_response(sock)
            assert first.status == 304 and first.read() == b""
            send(sock, proxy, "GET", "/api/tags")
            second = read_response(sock)
            assert (second.status, second.read()) == (200, b"fresh")


def test_grace_bounds_the_wait_on_stop(public_line, start_proxy):
    with StandIn(chunk_delay=1.0) as slow:
        slow.authorize(public_line("ed25519-a"))
        slow.stream_chunks = 60  # a minute of stream
        proxy = start_proxy("--upstream", slow.base_url, "--grace", "1")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            send(sock, proxy, "POST", "/api/chat", b'{"stream": true}')
            sock.recv(100)
            started = time.monotonic()
            proxy.stop(signal.SIGTERM, timeout=15)
            took = time.monotonic() - started
    assert proxy.returncode == 0 and took < 5, took
    assert any("still in flight after 1s" in line for line in proxy.log), proxy.log


def test_an_answer_head_trickled_byte_by_byte_is_bounded_by_the_timeout(start_proxy):
    # Issue 21: --timeout bounded each gap between bytes, so an upstream that sent
    # its answer head one byte at a time was never timed out.
    def trickle(conn: socket.socket, head: bytes) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(0.2)

    with ScriptedServer(trickle) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}", "--timeout", "1")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as sock:
            started = time.monotonic()
            send(sock, proxy, "GET", "/api/tags")
            response = read_response(sock)
            took = time.monotonic() - started
    assert response.status == 504 and took < 3, (response.status, took)


def test_no_new_connection_is_accepted_once_a_stop_begins(public_line, start_proxy):
    # Issue 21: the listening socket stayed open through the grace period, so the
    # kernel accepted connections that were never served, then reset them at exit.
    with StandIn(chunk_delay=1.0) as slow:
        slow.authorize(public_line("ed25519-a"))
        slow.stream_chunks = 60
        proxy = start_proxy("--upstream", slow.base_url, "--grace", "5")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            send(sock, proxy, "POST", "/api/chat", b'{"stream": true}')
            sock.recv(100)
            proxy.process.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # the stop has begun; the stream is still in its grace period
            assert proxy.process.poll() is None
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        proxy.stop(signal.SIGTERM, timeout=15)


@pytest.mark.parametrize("content, mode", [("och-short", 0o600), ("och-" + "x" * 40, 0o644)])
def test_a_token_file_too_short_or_not_private_is_refused(upstream, run, proxy_env, tmp_path, content, mode):
    directory = tmp_path / "config" / "ollama-credential-helper"
    directory.mkdir(parents=True, mode=0o700)
    (directory / "proxy-token").write_text(content + "\n")
    os.chmod(directory / "proxy-token", mode)
    result = run(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream.base_url], environment=proxy_env, timeout=20)
    assert result.code == 3 and result.err.count("\n") == 1 and content not in result.err, result.err


# --- from the attack review -----------------------------------------------------------------


def test_bytes_after_an_answer_never_become_the_next_clients_answer(start_proxy):
    def with_stray(head: bytes, body: bytes, index: int) -> bytes:
        path = head.split(b" ", 2)[1].split(b"?")[0]
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTRAY!" % (
            len(path),
            path,
        )

    with KeepAliveServer(with_stray) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        answers = [request(proxy, "GET", path)[2] for path in ("/api/a", "/api/b", "/api/c")]
    assert answers == [b"/api/a", b"/api/b", b"/api/c"]
    assert upstream.connections == 3  # a connection with leftover bytes is never pooled


def test_a_head_answer_with_a_body_leaves_nothing_for_the_next_request(start_proxy):
    def head_with_body(head: bytes, body: bytes, index: int) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
            if head.startswith(b"HEAD") or index
            else b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        )

    with KeepAliveServer(head_with_body) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        assert request(proxy, "HEAD", "/api/tags")[0] == 200
        status, _, body = request(proxy, "GET", "/api/tags")
    assert (status, body) == (200, b"hello")


def test_print_env_needs_a_real_port(run, proxy_env):
    """The proxy started with --listen :0 says its port on its 'listening on' line; the same
    --listen (:0) again would be no help, so the message points at that line."""
    result = run(["proxy", "--print-env", "--listen", "127.0.0.2:0"], environment=proxy_env)
    assert result.code == 2 and result.out == "" and "--listen" in result.err
    assert "'listening on' line" in result.err and "pass the same --listen" not in result.err


@pytest.mark.parametrize("command", [["sign", "POST", "https://ollama.com/api/chat"], ["whoami"]])
def test_the_local_token_exported_as_ollama_api_key_goes_nowhere(run, proxy_env, command):
    """--print-env exports the local token as OLLAMA_API_KEY for the proxy's clients;
    on a machine with no key file, no command may take it for an ollama.com key."""
    printed = run(["proxy", "--print-env"], environment=proxy_env).out
    token = dict(line[len("export ") :].split("=", 1) for line in printed.splitlines())["OLLAMA_API_KEY"]
    environment = dict(proxy_env, HOME=proxy_env["HOME"] + "-nokey", OLLAMA_API_KEY=token)
    result = run(command, environment=environment, timeout=20)
    assert result.code == 3 and token not in result.out + result.err and "local access token" in result.err


def test_a_client_gone_at_the_very_end_leaves_the_pooled_upstream_connection_usable(start_proxy):
    """The upstream connection is pooled before the last write to the client; if
    that write fails, the connection (now the pool's) must not be closed under it."""
    import struct

    def slow_answer(head: bytes, body: bytes, index: int) -> bytes:
        time.sleep(0.5)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with KeepAliveServer(slow_answer) as upstream:
        proxy = start_proxy("--upstream", f"http://{upstream.host}")
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        send(sock, proxy, "GET", "/api/tags")
        sock.sendall(b"X" * 200000)  # read ahead by the proxy past its bound: it stops watching this client
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, before the answer comes
        time.sleep(1.0)
        status, _, body = request(proxy, "GET", "/api/ps")
        proxy.stop()
    assert (status, body) == (200, b"ok"), proxy.log


def test_a_malformed_connect_answer_never_shows_the_proxys_bytes(start_proxy, proxy_env):
    def malformed(conn, head):
        conn.sendall(b"HTTP/1.1 407 Denied\r\nthis is not a header pw=zq9\r\n\r\n")

    with ScriptedServer(malformed) as forward:
        environment = dict(proxy_env, HTTPS_PROXY=f"http://bob:zq9@{forward.host}", NO_PROXY="")
        proxy = start_proxy("--upstream", "https://ollama.com", "--verbose", environment=environment)
        status, _, body = request(proxy, "POST", "/api/me", b"")
        proxy.stop()
    assert status == 502 and "malformed answer to CONNECT" in json.loads(body)["error"]
    assert "zq9" not in body.decode() and not [line for line in proxy.log if "zq9" in line]


@pytest.mark.parametrize(
    ("arguments", "variable", "named", "not_named"),
    [
        (["--upstream", "http://ollama.com"], None, "(--upstream)", "OLLAMA_CLOUD_BASE_URL"),
        (["--upstream", "https://ollama.com/v1"], None, "--upstream must be", "OLLAMA_CLOUD_BASE_URL"),
        ([], "http://ollama.com", "(OLLAMA_CLOUD_BASE_URL)", "--upstream"),
    ],
)
def test_a_refused_upstream_names_where_it_came_from(run, proxy_env, arguments, variable, named, not_named):
    """The message names --upstream when the URL came from it, the variable when from there."""
    environment = {k: v for k, v in proxy_env.items() if k != "OLLAMA_CLOUD_BASE_URL"}
    if variable is not None:
        environment["OLLAMA_CLOUD_BASE_URL"] = variable
    result = run(["proxy", "--listen", "127.0.0.1:0", *arguments], environment=environment)
    assert result.code != 0 and named in result.err and not_named not in result.err, result.err

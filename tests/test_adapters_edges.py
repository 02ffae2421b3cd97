"""The adapters at their edges, each against the real library and a loopback server
that records the bytes on the wire: request bodies on a 401 retry, a failed
exchange's claim, HTTP_PROXY and a loopback API host, waiters in other threads,
size and time bounds on the token request, redirects, and which host may get
OLLAMA_API_KEY.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import struct
import threading
import time

import httpx
import httpx2
import pytest
import requests

from credential_helper.errors import NetworkError, RealmRefusedError
from credential_helper.integrations import httpx as for_httpx
from credential_helper.integrations import httpx2 as for_httpx2
from credential_helper.integrations import requests as for_requests
from credential_helper.standin import StandIn
from faults import CertificateAuthority, ConnectProxy, ScriptedServer, reply, silent

ADAPTERS = {"httpx": (for_httpx, httpx), "httpx2": (for_httpx2, httpx2)}
TOKEN = "good-token-1234567890"


@pytest.fixture
def keyed(env, monkeypatch):
    for name in ("HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, env[name])
    for name in (
        "OLLAMA_API_KEY",
        "OLLAMA_CLOUD_BASE_URL",
        "OLLAMA_HOST",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    return env


def read_body(conn: socket.socket, head: bytes) -> bytes:
    """The request body after ``head`` (Content-Length or chunked), as a server reads it."""
    header, _, rest = head.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", header)
    if length:
        while len(rest) < int(length.group(1)):
            rest += conn.recv(65536)
        return rest[: int(length.group(1))]
    if re.search(rb"(?im)^transfer-encoding: *chunked", header):
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += conn.recv(65536)
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += conn.recv(65536)
            if size == 0:
                return body
            body, rest = body + rest[:size], rest[size + 2 :]
    return b""


class Registry:
    """401 with a Bearer challenge for itself until the request carries the token;
    records (head, body) of every request. ``token_script`` replaces the /token answer."""

    def __init__(self, token_script=None, extra_challenge: str | None = None) -> None:
        self.seen: list[tuple[bytes, bytes]] = []
        self.token_script = token_script
        self.extra_challenge = extra_challenge
        self.server = ScriptedServer(self._script)
        self.host = self.server.host

    def __enter__(self) -> Registry:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.__exit__(*exc_info)

    def _script(self, conn, head):
        body = read_body(conn, head)
        self.seen.append((head, body))
        if head.startswith(b"GET /token"):
            script = self.token_script or reply("200 OK", json.dumps({"token": TOKEN, "expires_in": 300}).encode())
            return script(conn, head)
        if f"authorization: bearer {TOKEN}".encode() in head.lower():
            return reply("200 OK", body)(conn, head)
        challenge = f'Bearer realm="http://{self.host}/token",service="s",scope="repository:x:push"'
        lines = [b"HTTP/1.1 401 Unauthorized", b"Content-Length: 0", b"Connection: close"]
        if self.extra_challenge:
            lines.append(f"WWW-Authenticate: {self.extra_challenge}".encode())
        lines.append(f"WWW-Authenticate: {challenge}".encode())
        conn.sendall(b"\r\n".join(lines) + b"\r\n\r\n")

    def uploads(self) -> list[bytes]:
        return [body for head, body in self.seen if not head.startswith(b"GET /token")]


def session(**options) -> requests.Session:
    s = requests.Session()
    s.auth = for_requests.OllamaAuth(api_base="https://ollama.com", cache=False, **options)
    return s


# --- 12: requests bodies on the 401 retry ------------------------------------------------------

PAYLOAD = b"layer-bytes-" * 1000


def generator_body():
    for i in range(0, len(PAYLOAD), 1000):
        yield PAYLOAD[i : i + 1000]


def file_body(tmp_path):
    path = tmp_path / "upload.bin"
    path.write_bytes(b"ignored-prefix" + PAYLOAD)
    handle = open(path, "rb")
    handle.seek(len(b"ignored-prefix"))  # a file body is sent from where it stands
    return handle


def pipe_body(_):
    read_end, write_end = os.pipe()
    threading.Thread(target=lambda: (os.write(write_end, PAYLOAD), os.close(write_end)), daemon=True).start()
    return os.fdopen(read_end, "rb")


@pytest.mark.parametrize(
    "make",
    [lambda _: generator_body(), file_body, pipe_body, lambda _: io.BytesIO(PAYLOAD), lambda _: PAYLOAD],
    ids=["generator", "file", "pipe", "bytesio", "bytes"],
)
@pytest.mark.process
def test_requests_retries_a_401_with_the_same_body(keyed, tmp_path, make):
    with Registry() as registry:
        response = session().put(f"http://{registry.host}/v2/x/blobs/uploads/1", data=make(tmp_path), timeout=10)
    assert response.status_code == 200
    assert response.content == PAYLOAD
    assert registry.uploads() == [PAYLOAD, PAYLOAD]  # the first try and the retry, byte for byte


@pytest.mark.process
def test_requests_an_unreadable_body_is_a_helper_error_before_sending(keyed):
    class Broken:
        def read(self, *args):
            raise OSError("Illegal seek")

        def __iter__(self):
            return iter(())

    from credential_helper.errors import InputError

    with Registry() as registry:
        with pytest.raises(InputError, match="request body"):
            session().put(f"http://{registry.host}/v2/x", data=Broken(), timeout=10)
    assert registry.seen == []


# --- 13: a failed exchange releases its claim at once ----------------------------------------


def reset(conn, head):
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # RST: "connection reset by peer"


@pytest.mark.process
@pytest.mark.parametrize("library", ["requests", "httpx", "httpx2"])
def test_a_reset_exchange_releases_its_claim_at_once(keyed, library):
    with Registry(token_script=reset) as registry:
        url = f"http://{registry.host}/v2/x/manifests/latest"
        if library == "requests":
            auth = for_requests.OllamaAuth(api_base="https://ollama.com", cache=False, timeout=5)
            s = requests.Session()
            s.auth = auth
            call, errors = (lambda: s.get(url, timeout=10)), requests.RequestException
        else:
            module, lib = ADAPTERS[library]
            client = lib.Client(auth=module.OllamaAuth(api_base="https://ollama.com", cache=False, timeout=5))
            call, errors = (lambda: client.get(url)), lib.TransportError
        with pytest.raises(errors) as first:  # kept: its traceback holds the frames alive
            call()
        started = time.monotonic()
        with pytest.raises(errors):
            call()
        elapsed = time.monotonic() - started
    assert first.value is not None
    assert elapsed < 2, f"the second request waited {elapsed:.1f}s for a claim nobody held"
    assert sum(head.startswith(b"GET /token") for head, _ in registry.seen) == 2


# --- 14: HTTP_PROXY never carries a credential in clear text --------------------------------


def call_library(library, url, auth, method="post"):
    if library == "requests":
        s = requests.Session()
        s.auth = auth
        return getattr(s, method)(url, timeout=10)
    lib = ADAPTERS[library][1]
    with lib.Client(auth=auth) as client:
        return getattr(client, method)(url)


def make_auth(library, **options):
    module = for_requests if library == "requests" else ADAPTERS[library][0]
    return module.OllamaAuth(cache=False, **options)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_a_signed_request_to_a_loopback_api_never_goes_through_http_proxy(keyed, standin, monkeypatch, library, variable):
    with ConnectProxy() as proxy:
        monkeypatch.setenv(variable, proxy.url)
        with pytest.raises(RealmRefusedError, match="NO_PROXY"):
            call_library(library, f"{standin.base_url}/api/me", make_auth(library, api_base=standin.base_url))
        assert proxy.requests == [] and standin.signed_requests == []
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the fix the message names
        response = call_library(library, f"{standin.base_url}/api/me", make_auth(library, api_base=standin.base_url))
    assert response.status_code == 200 and proxy.requests == []
    assert len(standin.signed_requests) == 1


@pytest.mark.process
@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_a_token_for_a_loopback_registry_never_goes_through_http_proxy(keyed, monkeypatch, library):
    with Registry() as registry, ConnectProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with pytest.raises(RealmRefusedError, match="NO_PROXY"):
            call_library(library, f"http://{registry.host}/v2/x/manifests/latest", make_auth(library), method="get")
    # The unauthenticated first request went through the proxy; nothing signed did.
    assert len(proxy.requests) == 1
    assert all(b"authorization" not in head.lower() for head in proxy.requests)
    assert not any(head.startswith(b"GET /token") for head, _ in registry.seen)


# --- the Bearer path: redirects, bounds, waiters ----------------------------------------------


def redirect_to(location: str):
    return reply("307 Temporary Redirect", b"", {"Location": location})


def always_refusing(conn, head):
    host = re.search(rb"(?im)^host: *(\S+)", head).group(1).decode()
    challenge = f'Bearer realm="http://{host}/token",service="s",scope="repository:x:pull"'
    reply("401 Unauthorized", b"", {"WWW-Authenticate": challenge})(conn, head)


@pytest.mark.process
@pytest.mark.parametrize("library", ADAPTERS)
def test_async_flow_never_authenticates_toward_a_host_a_redirect_led_to(keyed, library):
    module, lib = ADAPTERS[library]
    with ScriptedServer(always_refusing) as elsewhere:
        with ScriptedServer(redirect_to(f"http://{elsewhere.host}/v2/x/manifests/latest")) as first:

            async def main():
                async with lib.AsyncClient(auth=module.OllamaAuth(cache=False), follow_redirects=True) as client:
                    return (await client.get(f"http://{first.host}/v2/x/manifests/latest")).status_code

            assert asyncio.run(main()) == 401
        assert len(elsewhere.requests) == 1  # no token request, no retry there


@pytest.mark.process
@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.parametrize("library", ADAPTERS)
def test_sync_httpx_token_response_is_size_capped(keyed, library, declared):
    from credential_helper.integrations._core import MAX_TOKEN_RESPONSE_BYTES

    def huge(conn, head):
        body = b'{"token": "' + b"x" * (MAX_TOKEN_RESPONSE_BYTES + 10) + b'"}'
        length = f"Content-Length: {len(body)}\r\n" if declared else ""
        conn.sendall(f"HTTP/1.1 200 OK\r\n{length}Connection: close\r\n\r\n".encode() + body)

    module, lib = ADAPTERS[library]
    with Registry(token_script=huge) as registry:
        with lib.Client(auth=module.OllamaAuth(cache=False)) as client:
            with pytest.raises(NetworkError, match="byte limit"):
                client.get(f"http://{registry.host}/v2/x/manifests/latest")


@pytest.mark.process
@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_a_redirected_token_response_is_an_error(keyed, library):
    with ScriptedServer(reply("200 OK", json.dumps({"token": TOKEN}).encode())) as elsewhere:
        with Registry(token_script=redirect_to(f"http://{elsewhere.host}/token")) as registry:
            url = f"http://{registry.host}/v2/x/manifests/latest"
            with pytest.raises(NetworkError, match="(?i)redirect"):
                if library == "requests":
                    session().get(url, timeout=10)
                else:
                    with httpx.Client(auth=for_httpx.OllamaAuth(cache=False), follow_redirects=True) as client:
                        client.get(url)
        # httpx may follow it (it drops Authorization across origins); the signature never goes there.
        assert all(b"authorization" not in head.lower() for head in elsewhere.requests)


@pytest.mark.process
@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_the_adapters_timeout_bounds_the_token_request(keyed, library):
    with Registry(token_script=silent) as registry:
        url = f"http://{registry.host}/v2/x/manifests/latest"
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            if library == "requests":
                session(timeout=1).get(url, timeout=30)
            else:
                module, lib = ADAPTERS[library]
                with lib.Client(auth=module.OllamaAuth(cache=False, timeout=1), timeout=30) as client:
                    client.get(url)
        elapsed = time.monotonic() - started
    assert "timeout" in type(caught.value).__name__.lower() or "timed out" in str(caught.value).lower(), caught.value
    assert elapsed < 5, elapsed


@pytest.mark.process
@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_a_finished_exchange_wakes_waiters_in_other_threads(public_line, keyed, library):
    with StandIn(exchange_delay=1.0) as slow:
        slow.authorize(public_line("ed25519-a"))
        url = f"{slow.base_url}/v2/library/gemma3/manifests/latest"
        if library == "requests":
            auth = for_requests.OllamaAuth(cache=False, timeout=8)

            def get():
                s = requests.Session()
                s.auth = auth
                return s.get(url, timeout=30).status_code
        else:
            client = httpx.Client(auth=for_httpx.OllamaAuth(cache=False, timeout=8), timeout=30)
            get = lambda: client.get(url).status_code  # noqa: E731
        results, times = [], []
        started = time.monotonic()

        def worker():
            results.append(get())
            times.append(time.monotonic() - started)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert results == [200] * 4 and slow.exchanges == 1
    assert max(times) < 4, times  # woken when the exchange ended, not at the 8 s timeout


# --- requests specifics -----------------------------------------------------------------------------


@pytest.mark.process
def test_requests_honours_the_callers_verify_for_the_token_request(keyed, tmp_path, public_line):
    ca = CertificateAuthority(tmp_path)
    with StandIn(tls_context=ca.server_context([], ["127.0.0.1"])) as server:
        server.authorize(public_line("ed25519-a"))
        url = f"{server.base_url}/v2/library/gemma3/manifests/latest"
        assert session().get(url, timeout=10, verify=str(ca.ca_file)).status_code == 200
        assert server.exchanges == 1
        with pytest.raises(requests.exceptions.SSLError):
            session().get(url, timeout=10)  # the system trust store does not know the CA


@pytest.mark.process
def test_requests_finds_the_bearer_challenge_in_a_second_www_authenticate_field(keyed):
    with Registry(extra_challenge='Basic realm="legacy"') as registry:
        response = session().get(f"http://{registry.host}/v2/x/manifests/latest", timeout=10)
    assert response.status_code == 200
    assert sum(head.startswith(b"GET /token") for head, _ in registry.seen) == 1


def test_requests_overwrites_the_callers_authorization_toward_the_api_host(keyed, standin):
    s = requests.Session()
    s.auth = for_requests.OllamaAuth(api_base=standin.base_url, cache=False)
    response = s.post(f"{standin.base_url}/api/me", headers={"Authorization": "Bearer sk-caller-placeholder"}, timeout=10)
    assert response.status_code == 200 and response.json()["name"] == "jdoe"
    assert standin.refused_requests == [] and len(standin.signed_requests) == 1


# --- OLLAMA_API_KEY only where the destination rule allows ------------------------------------


class _To(httpx.HTTPTransport):
    """Test plumbing: an https host name served by a loopback server, same bytes."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host, self.port = host.split(":")

    def handle_request(self, request):
        # A copy: the client's request (and its URL, which the adapter reads) stays as sent.
        moved = httpx.Request(
            request.method,
            request.url.copy_with(scheme="http", host=self.host, port=int(self.port)),
            headers=request.headers,
            content=request.content,
        )
        return super().handle_request(moved)


@pytest.mark.parametrize(
    "name, allowed",
    [
        ("registry.ollama.ai", True),
        ("ollama.com", True),
        ("api.ollama.com", True),
        ("evil.test", False),
        ("ollama.com.evil.test", False),
    ],
)
@pytest.mark.process
def test_the_api_key_is_retried_only_toward_allowed_hosts(keyed, tmp_path, monkeypatch, name, allowed):
    api_key = "sk-test-api-key-0123456789"
    monkeypatch.setenv("OLLAMA_API_KEY", api_key)

    def script(conn, head):
        if f"bearer {api_key}".lower().encode() in head.lower():
            return reply("200 OK", b"{}")(conn, head)
        challenge = f'Bearer realm="https://{name}/token",service="s",scope="repository:x:pull"'
        reply("401 Unauthorized", b"", {"WWW-Authenticate": challenge})(conn, head)

    with ScriptedServer(script) as server:
        auth = for_httpx.OllamaAuth(identity=tmp_path / "no-key", api_base="https://api-host.test", cache=False)
        with httpx.Client(auth=auth, mounts={f"https://{name}": _To(server.host)}) as client:
            if allowed:
                assert client.get(f"https://{name}/v2/x/manifests/latest").status_code == 200
            else:
                with pytest.raises(RealmRefusedError, match="ollama.com credential"):
                    client.get(f"https://{name}/v2/x/manifests/latest")
    carried = [api_key.encode() in head for head in server.requests]
    assert carried == ([False, True] if allowed else [False])

"""The adapters inside clients no one here wrote: ollama, openai, httpx, httpx2,
requests, langchain -- each real and pinned, each against loopback stand-ins
that verify every signature from the bytes on the wire.

Two stand-ins: ``api`` plays ollama.com (scheme 2 on every request) and
``registry`` plays registry.ollama.ai (401 Bearer challenges, token exchange).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import httpx
import httpx2
import pytest
import requests

from credential_helper.errors import IdentityError, RealmRefusedError
from credential_helper.integrations import httpx as for_httpx
from credential_helper.integrations import httpx2 as for_httpx2
from credential_helper.integrations import requests as for_requests
from credential_helper.standin import REPLY_WORDS, StandIn
from faults import ScriptedServer, reply

REPLY = "".join(REPLY_WORDS)
PLACEHOLDER = "sk-placeholder-the-adapter-overwrites"
CLIENT_TIMEOUT = 30  # the clients' defaults (openai: 600 s) would let a stalled stand-in hang a test
ADAPTERS = {"httpx": (for_httpx, httpx), "httpx2": (for_httpx2, httpx2)}


@pytest.fixture
def keyed(env, monkeypatch):
    """This process runs with the test $HOME (key ed25519-a) and its private cache."""
    for name in ("HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, env[name])
    for name in ("OLLAMA_API_KEY", "OLLAMA_CLOUD_BASE_URL", "OLLAMA_HOST"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture
def api(streaming_standin, keyed):
    return streaming_standin


@pytest.fixture
def registry(public_line, keyed):
    server = StandIn()
    server.authorize(public_line("ed25519-a"))
    server.start()
    yield server
    server.stop()


def assert_all_signed(server: StandIn, expected: list[tuple[str, str]]) -> None:
    """Every request arrived signed and verified; the paths are the ones expected."""
    assert server.refused_requests == []
    seen = [(method, target.split("?")[0]) for method, target in server.signed_requests]
    assert seen == expected
    for _, target in server.signed_requests:
        assert re.search(r"[?&]ts=\d+$", target), target


# --- the official ollama client (httpx) ---------------------------------------------------


def test_ollama_client_list_show_chat_and_stream(api, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_API_KEY", PLACEHOLDER)  # ollama-python sends it; the adapter overwrites it
    client = ollama.Client(
        host=api.base_url, auth=for_httpx.OllamaAuth(identity=None, api_base=api.base_url), timeout=CLIENT_TIMEOUT
    )
    assert [m.model for m in client.list().models] == ["gpt-oss:120b-cloud", "qwen3-coder:480b-cloud"]
    assert client.show("gpt-oss:120b-cloud").modelfile == "FROM stand-in"
    answer = client.chat(model="gpt-oss:120b-cloud", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content == REPLY
    parts = [
        part.message.content
        for part in client.chat(model="gpt-oss:120b-cloud", messages=[{"role": "user", "content": "hi"}], stream=True)
    ]
    assert parts == [*REPLY_WORDS, ""]
    assert_all_signed(api, [("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/chat"), ("POST", "/api/chat")])


def test_ollama_async_client_with_the_api_host_from_the_environment(api, monkeypatch):
    import ollama

    monkeypatch.setenv("OLLAMA_CLOUD_BASE_URL", api.base_url)

    async def main():
        client = ollama.AsyncClient(host=api.base_url, auth=for_httpx.OllamaAuth(), timeout=CLIENT_TIMEOUT)
        models = await client.list()
        shown = await client.show("gpt-oss:120b-cloud")
        answer = await client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        parts = [part.message.content async for part in stream]
        return models, shown, answer, parts

    models, shown, answer, parts = asyncio.run(main())
    assert len(models.models) == 2 and shown.modelfile == "FROM stand-in"
    assert answer.message.content == REPLY and parts == [*REPLY_WORDS, ""]
    assert_all_signed(api, [("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/chat"), ("POST", "/api/chat")])


class _ToStandIn(httpx.HTTPTransport):
    """Test plumbing only: requests for https://ollama.com go to the stand-in, same bytes."""

    def __init__(self, server: StandIn) -> None:
        super().__init__()
        self.server = server

    def handle_request(self, request):
        port = self.server.server.server_address[1]
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
        return super().handle_request(request)


def test_ollama_web_search_and_fetch_with_a_placeholder_authorization(api):
    """ollama-python's web_search/web_fetch insist on a Bearer header in the client's
    defaults; a placeholder satisfies the check and the adapter signs over it."""
    import ollama

    client = ollama.Client(
        host=api.base_url,
        headers={"Authorization": "Bearer keyless"},
        auth=for_httpx.OllamaAuth(),  # ollama.com is the API host by default
        mounts={"https://ollama.com": _ToStandIn(api)},
    )
    assert client.web_search("ollama credential helper").results[0].content == "ollama credential helper"
    assert client.web_fetch("https://example.com/").content == "https://example.com/"
    assert_all_signed(api, [("POST", "/api/web_search"), ("POST", "/api/web_fetch")])


# --- the official openai client (httpx2) ------------------------------------------------------


def test_openai_client_chat_and_stream(api):
    import openai

    client = openai.OpenAI(
        base_url=f"{api.base_url}/v1",
        api_key="unused",
        http_client=httpx2.Client(auth=for_httpx2.OllamaAuth(api_base=api.base_url)),
        max_retries=0,
        timeout=CLIENT_TIMEOUT,
    )
    completion = client.chat.completions.create(model="gpt-oss:120b", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == REPLY
    stream = client.chat.completions.create(model="gpt-oss:120b", messages=[{"role": "user", "content": "hi"}], stream=True)
    parts = [chunk.choices[0].delta.content for chunk in stream if chunk.choices[0].delta.content]
    assert parts == REPLY_WORDS
    assert_all_signed(api, [("POST", "/v1/chat/completions")] * 2)


def test_openai_async_client_chat_and_stream(api):
    import openai

    async def main():
        client = openai.AsyncOpenAI(
            base_url=f"{api.base_url}/v1",
            api_key="unused",
            http_client=httpx2.AsyncClient(auth=for_httpx2.OllamaAuth(api_base=api.base_url)),
            max_retries=0,
            timeout=CLIENT_TIMEOUT,
        )
        completion = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        parts = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices[0].delta.content]
        return completion, parts

    completion, parts = asyncio.run(main())
    assert completion.choices[0].message.content == REPLY and parts == REPLY_WORDS
    assert_all_signed(api, [("POST", "/v1/chat/completions")] * 2)


def test_an_unsigned_client_is_refused_by_the_stand_in(api):
    """The control: without the adapter the same call fails, so the tests above prove signing."""
    import openai

    client = openai.OpenAI(
        base_url=f"{api.base_url}/v1", api_key="unused", http_client=httpx2.Client(), max_retries=0, timeout=CLIENT_TIMEOUT
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert api.signed_requests == [] and len(api.refused_requests) == 1


# --- requests ---------------------------------------------------------------------------------


def test_requests_registry_manifest_and_signed_me(api, registry):
    session = requests.Session()
    session.auth = for_requests.OllamaAuth(api_base=api.base_url)
    manifest = session.get(f"{registry.base_url}/v2/library/gemma3/manifests/latest", timeout=10)
    assert manifest.status_code == 200 and manifest.json()["name"] == "library/gemma3"
    assert registry.exchanges == 1
    me = session.post(f"{api.base_url}/api/me", timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "jdoe"
    assert_all_signed(api, [("POST", "/api/me")])


# --- the Bearer path in httpx and httpx2 --------------------------------------------------------


@pytest.mark.parametrize("library", ADAPTERS)
def test_registry_pull_sync_and_async_share_the_cli_cache(api, registry, run, library):
    module, lib = ADAPTERS[library]
    url = f"{registry.base_url}/v2/library/gemma3/manifests/latest"
    with lib.Client(auth=module.OllamaAuth(api_base=api.base_url)) as client:
        assert client.get(url).json()["name"] == "library/gemma3"

    async def pull():
        async with lib.AsyncClient(auth=module.OllamaAuth(api_base=api.base_url)) as client:
            return (await client.get(url)).status_code

    assert asyncio.run(pull()) == 200
    assert registry.exchanges == 1  # the second adapter found the first one's token on disk
    # ... and so does the CLI, whose cache it is.
    challenge = json.dumps(
        {"realm": f"{registry.base_url}/token", "service": "ollama.com", "scope": "repository:library/gemma3:pull"}
    )
    assert run(["get"], challenge).code == 0 and registry.exchanges == 1


@pytest.mark.parametrize("library", ADAPTERS)
def test_async_exchange_never_blocks_the_event_loop_and_is_made_once(public_line, keyed, library):
    module, lib = ADAPTERS[library]
    with StandIn(exchange_delay=1.0) as slow:
        slow.authorize(public_line("ed25519-a"))
        url = f"{slow.base_url}/v2/library/gemma3/manifests/latest"

        async def main():
            ticks = 0
            stop = asyncio.Event()

            async def ticker():
                nonlocal ticks
                while not stop.is_set():
                    await asyncio.sleep(0.01)
                    ticks += 1

            limits = lib.Limits(max_connections=100)
            async with lib.AsyncClient(auth=module.OllamaAuth(cache=False), limits=limits, timeout=30) as client:
                task = asyncio.create_task(ticker())
                started = time.monotonic()
                statuses = await asyncio.gather(*(client.get(url) for _ in range(50)))
                elapsed = time.monotonic() - started
                stop.set()
                await task
            return [r.status_code for r in statuses], ticks, elapsed

        statuses, ticks, elapsed = asyncio.run(main())
        assert statuses == [200] * 50
        assert slow.exchanges == 1
    # While the stand-in held the token response for a second, the loop kept running.
    assert elapsed >= 1.0 and ticks >= 40, (ticks, elapsed)


def test_a_rejected_cached_token_is_refreshed_once(api, registry, keyed):
    from credential_helper.cache import Entry, TokenCache
    from credential_helper.client import cache_key_for
    from credential_helper.protocol import Challenge

    challenge = Challenge(f"{registry.base_url}/token", "ollama.com", "repository:library/gemma3:pull")
    with open(os.path.join(keyed["HOME"], ".ollama", "id_ed25519"), "rb") as handle:
        key = cache_key_for(challenge, handle.read())
    TokenCache().store(key, Entry("revoked-token-123", time.time() + 3600, 3600))
    with httpx.Client(auth=for_httpx.OllamaAuth(api_base=api.base_url)) as client:
        response = client.get(f"{registry.base_url}/v2/library/gemma3/manifests/latest")
    assert response.status_code == 200 and registry.exchanges == 1
    assert TokenCache().lookup(key).token != "revoked-token-123"


def always_refusing_registry(conn, head):
    """401 with a challenge for itself on /v2/, a token on /token: the token never works."""
    host = re.search(rb"(?im)^host: *(\S+)", head).group(1).decode()
    if head.startswith(b"GET /token"):
        return reply("200 OK", b'{"token": "never-good-enough", "expires_in": 300}')(conn, head)
    challenge = f'Bearer realm="http://{host}/token",service="s",scope="repository:x:pull"'
    reply("401 Unauthorized", b'{"errors": []}', {"WWW-Authenticate": challenge})(conn, head)


@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_a_second_401_is_returned_as_is(api, keyed, library):
    with ScriptedServer(always_refusing_registry) as server:
        url = f"http://{server.host}/v2/x/manifests/latest"
        if library == "requests":
            session = requests.Session()
            session.auth = for_requests.OllamaAuth(api_base=api.base_url)
            response = session.get(url, timeout=10)
            status = response.status_code
        else:
            module, lib = ADAPTERS[library]
            with lib.Client(auth=module.OllamaAuth(api_base=api.base_url)) as client:
                status = client.get(url).status_code
        heads = [h.split(b" ", 2)[1].split(b"?")[0] for h in server.requests]
    assert status == 401
    assert heads == [b"/v2/x/manifests/latest", b"/token", b"/v2/x/manifests/latest"]
    assert b"Authorization: Bearer never-good-enough" in server.requests[2]


# --- the request target on the wire is the one signed -------------------------------------------

ODD_TARGETS = [
    "/api/echo?q=a+b&t=~x&e=&z=%7e&sp=a%20b",
    "/api/echo?u=%C3%A9&u=2&a=1&ts=5",
    "/api/x y/%2F/ü?k=v;w&m=%zz",
    "/api/echo?=&&=x&plus=%2B",
    "/api/é?q=ü",
]


@pytest.mark.parametrize("target", ODD_TARGETS)
@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_the_signed_target_is_the_one_on_the_wire(api, library, target):
    url = api.base_url + target
    if library == "requests":
        session = requests.Session()
        session.auth = for_requests.OllamaAuth(api_base=api.base_url)
        status = session.post(url, timeout=10).status_code
    else:
        module, lib = ADAPTERS[library]
        with lib.Client(auth=module.OllamaAuth(api_base=api.base_url)) as client:
            status = client.post(url).status_code
    assert status == 200, api.refused_requests
    assert api.refused_requests == [] and len(api.signed_requests) == 1


@pytest.mark.parametrize("library", ADAPTERS)
def test_params_given_to_the_library_are_signed_as_sent(api, library):
    module, lib = ADAPTERS[library]
    with lib.Client(auth=module.OllamaAuth(api_base=api.base_url)) as client:
        response = client.post(f"{api.base_url}/api/echo", params={"q": "a b+c", "t": "~", "e": "", "u": "é"})
    assert response.status_code == 200 and api.refused_requests == []


# --- errors, identity, repr --------------------------------------------------------------------


@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_errors_are_helper_errors_from_the_request_call(api, registry, keyed, tmp_path, library):
    missing = tmp_path / "no-key"

    def call(auth, url):
        if library == "requests":
            session = requests.Session()
            session.auth = auth
            return session.get(url, timeout=10)
        module, lib = ADAPTERS[library]
        with lib.Client(auth=auth) as client:
            return client.get(url)

    module = for_requests if library == "requests" else ADAPTERS[library][0]
    with pytest.raises(IdentityError) as caught:
        call(module.OllamaAuth(identity=missing, api_base=api.base_url), f"{api.base_url}/api/tags")
    assert "no key file at" in str(caught.value) and "key --generate" not in str(caught.value)
    # A challenge whose realm names another host: the CLI's cross-origin rule.
    with ScriptedServer(
        reply("401 Unauthorized", b"", {"WWW-Authenticate": f'Bearer realm="{registry.base_url}/token",service="s"'})
    ) as foreign:
        with pytest.raises(RealmRefusedError):
            call(module.OllamaAuth(api_base=api.base_url), f"http://{foreign.host}/v2/x/manifests/latest")
    assert registry.exchanges == 0


def test_the_key_is_read_once_and_repr_shows_no_secret(api, keyed):
    auth = for_httpx.OllamaAuth(api_base=api.base_url)
    key_path = os.path.join(keyed["HOME"], ".ollama", "id_ed25519")
    private = open(key_path).read().splitlines()[1]
    with httpx.Client(auth=auth) as client:
        assert client.get(f"{api.base_url}/api/tags").status_code == 200
        os.rename(key_path, key_path + ".moved")  # from now on, a read would fail
        assert client.get(f"{api.base_url}/api/tags").status_code == 200
    for adapter in (auth, for_httpx2.OllamaAuth(), for_requests.OllamaAuth()):
        text = repr(adapter)
        assert text.startswith("OllamaAuth(") and private not in text and "AAAAC3" not in text


# --- redirects ---------------------------------------------------------------------------------


def redirect_to(location: str):
    return reply("307 Temporary Redirect", b"", {"Location": location})


@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_a_signed_request_redirected_elsewhere_arrives_without_authorization(keyed, library):
    with ScriptedServer(reply("200 OK", b"{}")) as elsewhere:
        with ScriptedServer(redirect_to(f"http://{elsewhere.host}/landing")) as api_host:
            url = f"http://{api_host.host}/api/me"
            if library == "requests":
                session = requests.Session()
                session.auth = for_requests.OllamaAuth(api_base=f"http://{api_host.host}")
                assert session.post(url, timeout=10).status_code == 200
            else:
                module, lib = ADAPTERS[library]
                with lib.Client(auth=module.OllamaAuth(api_base=f"http://{api_host.host}"), follow_redirects=True) as client:
                    assert client.post(url).status_code == 200
            assert b"authorization:" in api_host.requests[0].lower()
        assert len(elsewhere.requests) == 1
        assert b"authorization" not in elsewhere.requests[0].lower()


@pytest.mark.parametrize("library", ["httpx", "requests"])
def test_a_registry_redirect_after_the_token_never_carries_it(api, registry, library):
    with ScriptedServer(reply("200 OK", b"{}")) as elsewhere:
        registry.redirect_authenticated = f"http://{elsewhere.host}/blob"
        url = f"{registry.base_url}/v2/library/gemma3/manifests/latest"
        if library == "requests":
            session = requests.Session()
            session.auth = for_requests.OllamaAuth(api_base=api.base_url)
            assert session.get(url, timeout=10).status_code == 200
        else:
            with httpx.Client(auth=for_httpx.OllamaAuth(api_base=api.base_url), follow_redirects=True) as client:
                assert client.get(url).status_code == 200
        assert registry.exchanges == 1 and len(elsewhere.requests) == 1
        assert b"authorization" not in elsewhere.requests[0].lower()


# --- langchain (optional client, installed by the test extra) ------------------------------------


def test_langchain_chat_ollama_through_client_kwargs(api):
    langchain_ollama = pytest.importorskip("langchain_ollama")
    chat = langchain_ollama.ChatOllama(
        model="gpt-oss:120b-cloud",
        base_url=api.base_url,
        client_kwargs={"auth": for_httpx.OllamaAuth(api_base=api.base_url)},
    )
    assert chat.invoke("hi").content == REPLY
    assert "".join(chunk.content for chunk in chat.stream("hi")) == REPLY
    assert api.refused_requests == [] and [m for m, _ in api.signed_requests] == ["POST", "POST"]


# --- the command line stays lean ------------------------------------------------------------------


def test_neither_the_cli_nor_the_package_imports_an_http_library(env, standin):
    from conftest import helper_executable

    stdin = json.dumps({"realm": f"{standin.base_url}/token", "service": "s", "scope": "x"}).encode()
    assert subprocess.run([*helper_executable(), "get"], input=stdin, env=env, capture_output=True).returncode == 0
    script = helper_executable()[0]
    for args, data in ((["get"], stdin), (["--version"], b""), (["key"], b"")):
        done = subprocess.run([sys.executable, "-X", "importtime", script, *args], input=data, env=env, capture_output=True)
        assert done.returncode == 0, done.stderr[-500:]
        imported = {
            line.split("|")[-1].strip().split(".")[0]
            for line in done.stderr.decode().splitlines()
            if line.startswith("import time:")
        }
        assert not imported & {"httpx", "httpx2", "requests", "anyio", "httpcore"}, (args, imported)
    probe = "import sys, credential_helper, credential_helper.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpx2', 'requests')))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("library", ["httpx", "httpx2", "requests"])
def test_a_challenge_from_a_host_a_redirect_led_to_is_returned_as_is(api, keyed, library):
    with ScriptedServer(always_refusing_registry) as elsewhere:
        with ScriptedServer(redirect_to(f"http://{elsewhere.host}/v2/x/manifests/latest")) as first:
            url = f"http://{first.host}/v2/x/manifests/latest"
            if library == "requests":
                session = requests.Session()
                session.auth = for_requests.OllamaAuth(api_base=api.base_url)
                status = session.get(url, timeout=10).status_code
            else:
                module, lib = ADAPTERS[library]
                with lib.Client(auth=module.OllamaAuth(api_base=api.base_url), follow_redirects=True) as client:
                    status = client.get(url).status_code
        assert status == 401
        assert len(elsewhere.requests) == 1  # no token request, no retry there

"""What every adapter decides, driven without a library or a socket
(integrations/_core.py; issue 21, found by mutation: the adapters' own tests
run it behind real servers, which a mutant's run does not see).

The driver here is the test: it answers each instruction bearer_retries yields
("wait", "exchange", "retry") as httpx's or requests' driver would. Expectations
come from the rules the README and PROTOCOL.md state: a 401 with a Bearer
challenge only, the realm on the host that answered (server/auth.go), an API
key only toward ollama.com's hosts or loopback, a token from a cache refreshed
once when the server rejects it, one exchange per key at a time, the Docker
token specification's lifetimes, and the vector in golden/registry.json."""

from __future__ import annotations

import base64
import threading

import pytest

from conftest import load_vectors
from credential_helper import client, protocol
from credential_helper.cache import Entry, TokenCache
from credential_helper.errors import InputError, NetworkError, RealmRefusedError
from credential_helper.integrations import _core
from credential_helper.response import Response

VECTOR = load_vectors("registry.json")[0]
CHALLENGE = 'Bearer realm="https://ollama.com:443/token",service="ollama.com",scope="repository:library/llama3.2:pull"'
URL = "https://ollama.com:443/v2/library/llama3.2/manifests/latest"


@pytest.fixture
def core(keys, tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    monkeypatch.delenv("OLLAMA_CLOUD_BASE_URL", raising=False)
    return _core.KeylessCore(identity=keys / "ed25519-a", cache=TokenCache(str(tmp_path / "cache")))


def key_of(core: _core.KeylessCore) -> str:
    challenge = protocol.parse_www_authenticate(CHALLENGE)
    return client.cache_key_for(challenge, core.credential().key_bytes)


def token_body(token: str, expires_in: int = 300) -> Response:
    return Response(200, "OK", {}, b'{"token": "%s", "expires_in": %d}' % (token.encode(), expires_in))


# --- construction --------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, 600.5, True, "10", None])
def test_timeout_must_be_a_number_in_range(timeout, keys):
    with pytest.raises(InputError, match="^timeout must be more than 0 and at most 600 seconds$"):
        _core.KeylessCore(identity=keys / "ed25519-a", timeout=timeout)


@pytest.mark.parametrize("timeout", [0.001, 600, 10])
def test_timeout_in_range(timeout, keys):
    core = _core.KeylessCore(identity=keys / "ed25519-a", timeout=timeout, cache=False)
    assert core.timeout == float(timeout) and type(core.timeout) is float and core.cache is None


def test_the_api_hosts_are_ollama_com_and_the_ones_named(keys, monkeypatch):
    monkeypatch.delenv("OLLAMA_CLOUD_BASE_URL", raising=False)
    core = _core.KeylessCore(identity=keys / "ed25519-a", api_hosts=["api.example.com", "http://127.0.0.1:8080"], cache=False)
    assert core.is_api("https", "ollama.com", None) and core.is_api("HTTPS", "OLLAMA.COM", 443)
    assert core.is_api("https", "api.example.com", 443)  # a bare name is https
    assert not core.is_api("http", "api.example.com", 80)
    assert core.is_api("http", "127.0.0.1", 8080) and not core.is_api("http", "127.0.0.1", 80)
    assert not core.is_api("https", "ollama.com", 8443)
    assert core.describe() == (
        f"identity={str(keys / 'ed25519-a')!r}, api_hosts="
        "['http://127.0.0.1:8080', 'https://api.example.com:443', 'https://ollama.com:443']"
    )


def test_an_api_host_over_http_must_be_loopback(keys):
    with pytest.raises(RealmRefusedError, match="it must use https"):
        _core.KeylessCore(identity=keys / "ed25519-a", api_hosts=["http://api.example.com"], cache=False)


def test_the_cloud_base_url_is_the_api_host(keys, monkeypatch):
    monkeypatch.setenv("OLLAMA_CLOUD_BASE_URL", "http://127.0.0.1:9999")
    core = _core.KeylessCore(identity=keys / "ed25519-a", cache=False)
    assert core.is_api("http", "127.0.0.1", 9999) and not core.is_api("https", "ollama.com", 443)
    explicit = _core.KeylessCore(identity=keys / "ed25519-a", api_base="https://ollama.com", cache=False)
    assert explicit.is_api("https", "ollama.com", 443)  # api_base wins over the environment


def test_a_token_call_never_shows_its_authorization():
    call = _core.TokenCall("https://ollama.com/token?x=1", "/token?x=1", "ollama.com", "key:SIGNATURE")
    assert repr(call) == "TokenCall(url='https://ollama.com/token?x=1', authorization=[redacted])"


# --- no credential in clear text through a proxy -------------------------------------------


def test_http_through_an_environment_proxy_is_refused(core):
    core.environment_proxy = lambda url: "http://proxy.example:3128"
    with pytest.raises(RealmRefusedError) as refused:
        core.check_not_proxied("http://127.0.0.1:11434/api/chat", "a signed request")
    assert str(refused.value) == (
        "refusing to send a signed request to http://127.0.0.1:11434 in clear text through the proxy "
        "that HTTP_PROXY or ALL_PROXY names for it: add 127.0.0.1 to NO_PROXY, or use https"
    )
    with pytest.raises(RealmRefusedError):
        core.check_not_proxied("HTTP://127.0.0.1:11434/", "x")  # schemes are case-insensitive
    core.check_not_proxied("https://ollama.com/api/chat", "x")  # TLS end to end through a proxy
    core.environment_proxy = lambda url: None  # NO_PROXY names it
    core.check_not_proxied("http://127.0.0.1:11434/", "x")
    core.environment_proxy = None
    core.check_not_proxied("http://127.0.0.1:11434/", "x")


# --- scheme 2 --------------------------------------------------------------------------------


def test_sign_gives_the_url_with_ts_and_the_signature(core):
    url, target, authorization = core.sign("POST", "https://ollama.com/api/chat?b=2&a=1")
    assert url.startswith("https://ollama.com/api/chat?a=1&b=2&ts=") and target == url[len("https://ollama.com") :]
    assert authorization.startswith(open(core.identity_path + ".pub").read().split()[1] + ":")


def test_sign_with_an_api_key_only_toward_ollama_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-test")
    core = _core.KeylessCore(identity=tmp_path / "missing", cache=False)
    assert core.sign("POST", "https://ollama.com/api/chat") == ("https://ollama.com/api/chat", None, "Bearer sk-test")
    with pytest.raises(RealmRefusedError, match="refusing to hand it out for api.example.com"):
        core.sign("POST", "https://api.example.com/api/chat")
    with pytest.raises(RealmRefusedError, match="it must use https"):
        core.sign("POST", "http://ollama.com/api/chat")


def test_the_default_key_warns_once_toward_another_host(keys, monkeypatch):
    monkeypatch.setenv("HOME", str(keys.parent / "home-for-warning"))
    (keys.parent / "home-for-warning" / ".ollama").mkdir(parents=True)
    (keys.parent / "home-for-warning" / ".ollama" / "id_ed25519").write_bytes((keys / "ed25519-a").read_bytes())
    (keys.parent / "home-for-warning" / ".ollama" / "id_ed25519").chmod(0o600)
    core = _core.KeylessCore(cache=False, api_hosts=["gate.example"])
    with pytest.warns(_core.SharedServerWarning):
        core.sign("GET", "https://gate.example/api/tags")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        core.sign("GET", "https://gate.example/api/tags")  # once per adapter


# --- which 401s are answered ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, headers",
    [
        (200, [CHALLENGE]),
        (403, [CHALLENGE]),
        (401, []),
        (401, ['Basic realm="x"']),
    ],
)
def test_only_a_401_with_a_bearer_challenge_is_answered(core, status, headers):
    assert list(_core.bearer_retries(core, URL, status, headers)) == []


def test_the_bearer_challenge_may_be_in_any_www_authenticate_field(core):
    flow = _core.bearer_retries(core, URL, 401, ['Basic realm="x"', CHALLENGE])
    kind, call = next(flow)
    assert kind == "exchange" and call.host_header == "ollama.com:443"


def test_a_malformed_bearer_challenge_is_a_network_error(core):
    with pytest.raises(NetworkError, match="^ollama.com:443 sent a malformed Bearer challenge: "):
        list(_core.bearer_retries(core, URL, 401, ['Bearer realm="https://ollama.com:443/token",service']))


def test_a_realm_on_another_host_is_refused(core):
    with pytest.raises(RealmRefusedError):
        list(_core.bearer_retries(core, "https://ollama.com/v2/x", 401, [CHALLENGE]))  # :443 written vs not


# --- the exchange, the retry, the cache ----------------------------------------------------


def test_an_exchange_then_one_retry_with_the_token(core):
    flow = _core.bearer_retries(core, URL, 401, [CHALLENGE])
    kind, call = next(flow)
    assert kind == "exchange"
    assert call.url.startswith("https://ollama.com:443/token?nonce=") and "&service=ollama.com&ts=" in call.url
    assert call.target == call.url[len("https://ollama.com:443") :] and call.host_header == VECTOR["host_header"]
    assert flow.send(token_body("fresh")) == ("retry", "Bearer fresh")
    with pytest.raises(StopIteration):
        flow.send(401)  # a token just issued and refused: the caller sees that 401
    stored = core.cache.lookup(key_of(core))
    assert stored is not None and stored.token == "fresh"


def test_a_cached_token_comes_first_and_is_refreshed_once_when_refused(core):
    key = key_of(core)
    import time

    core.cache.store(key, Entry("old", time.time() + 300, 300))
    flow = _core.bearer_retries(core, URL, 401, [CHALLENGE])
    assert next(flow) == ("retry", "Bearer old")  # from the disk cache, no exchange
    kind, _ = flow.send(401)
    assert kind == "exchange"  # the refused token is forgotten, a new one fetched
    assert core.cache.lookup(key) is None
    assert flow.send(token_body("new")) == ("retry", "Bearer new")
    with pytest.raises(StopIteration):
        flow.send(401)
    assert core.cache.lookup(key).token == "new"


def test_a_cached_token_that_works_is_kept(core):
    import time

    key = key_of(core)
    core.cache.store(key, Entry("old", time.time() + 300, 300))
    flow = _core.bearer_retries(core, URL, 401, [CHALLENGE])
    assert next(flow) == ("retry", "Bearer old")
    with pytest.raises(StopIteration):
        flow.send(200)
    assert core.cache.lookup(key).token == "old"


def test_memory_before_disk_and_only_fresh_tokens(core):
    import time

    key = key_of(core)
    now = time.time()
    core.store(key, _tokens_exchanged("mem", now + 300, 300))
    core.cache.store(key, Entry("disk", now + 300, 300))
    assert core.cached(key) == "mem"
    core._tokens[key] = Entry("mem", now + 10, 300)  # inside the 30 s margin: stale
    assert core.cached(key) == "disk"
    assert core._tokens[key].token == "disk"  # and kept in memory from then on
    core._tokens[key] = Entry("mem", now + 10, 300)
    core.cache.store(key, Entry("disk", now + 10, 300))
    assert core.cached(key) is None


def test_forget_removes_only_the_token_that_was_refused(core):
    import time

    key = key_of(core)
    now = time.time()
    core.store(key, _tokens_exchanged("current", now + 300, 300))
    core.forget(key, "older")  # another request already replaced it
    assert core.cached(key) == "current" and core.cache.lookup(key).token == "current"
    core.forget(key, "current")
    assert key not in core._tokens and core.cache.lookup(key) is None


def _tokens_exchanged(token, expires_at, lifetime):
    from credential_helper.tokens import Exchanged

    return Exchanged(token, expires_at, lifetime, "")


# --- one exchange per key at a time -------------------------------------------------------------


def test_a_claimed_key_makes_others_wait_then_use_its_token(core):
    key = key_of(core)
    assert core.claim(key) is True and core.claim(key) is False
    flow = _core.bearer_retries(core, URL, 401, [CHALLENGE])
    assert next(flow) == ("wait", key)
    import time

    core.store(key, _tokens_exchanged("theirs", time.time() + 300, 300))
    core.release(key)
    assert flow.send(None) == ("retry", "Bearer theirs")
    assert core.claim(key) is True  # released: the next claim succeeds
    core.release(key)


def test_a_failed_exchange_releases_its_claim(core):
    key = key_of(core)
    flow = _core.bearer_retries(core, URL, 401, [CHALLENGE])
    next(flow)
    with pytest.raises(NetworkError):
        flow.send(Response(500, "Server Error", {}, b""))
    assert core.claim(key) is True
    core.release(key)


def test_waiting_is_bounded_by_the_timeout(keys):
    core = _core.KeylessCore(identity=keys / "ed25519-a", timeout=0.05, cache=False)
    core.wait("nobody")  # nothing claimed: no wait
    assert core.claim("k")
    outcome: list[str] = []

    def waiter() -> None:
        try:
            core.wait("k")
        except NetworkError as exc:
            outcome.append(str(exc))

    # In a thread: a wait that never ends (no timeout) fails here in 5 s, not at the suite's 120 s.
    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    thread.join(5)
    assert outcome == ["timed out after 0.05s waiting for a concurrent token exchange"]
    threading.Timer(0.01, core.release, ("k",)).start()
    core.timeout = 5.0
    core.claim("k2")
    threading.Timer(0.01, core.release, ("k2",)).start()
    core.wait("k2")  # woken by the release, well before 5 s


@pytest.mark.process  # an event loop opens a socketpair (its self-pipe): in-process, no server
def test_waiting_in_an_event_loop_is_bounded_and_woken(keys):
    import asyncio

    core = _core.KeylessCore(identity=keys / "ed25519-a", timeout=0.05, cache=False)

    async def scenario():
        await core.wait_async("nobody")
        core.claim("k")
        with pytest.raises(NetworkError, match=r"^timed out after 0\.05s waiting"):
            await core.wait_async("k")
        core.timeout = 5.0
        asyncio.get_running_loop().call_later(0.01, core.release, "k")
        await core.wait_async("k")

    asyncio.run(scenario())


# --- an API key instead of a key file ------------------------------------------------------------


def test_an_api_key_answers_a_challenge_only_from_ollama_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-test")
    core = _core.KeylessCore(identity=tmp_path / "missing", cache=False)
    assert list(_core.bearer_retries(core, URL, 401, [CHALLENGE])) == [("retry", "Bearer sk-test")]
    other = 'Bearer realm="https://registry.example:443/token",service="x",scope="y"'
    with pytest.raises(RealmRefusedError, match="refusing to hand it out for registry.example:443"):
        list(_core.bearer_retries(core, "https://registry.example:443/v2/x", 401, [other]))


def test_the_oversized_message_names_the_limit():
    assert str(_core.oversized("ollama.com")) == "ollama.com sent a token response over the 1048576-byte limit"


# --- second look: what the mutants of the final run showed -----------------------------------------


def test_the_key_is_read_once(core, keys):
    core.sign("GET", "https://ollama.com/api/tags")
    (keys / "ed25519-a").unlink()  # gone after the first use: the adapter keeps what it loaded
    assert core.sign("GET", "https://ollama.com/api/tags")[2]


def test_an_unusable_key_is_named_by_its_path(keys):
    core = _core.KeylessCore(identity=keys / "ed25519-encrypted", cache=False)
    with pytest.raises(Exception) as refused:
        core.sign("GET", "https://ollama.com/api/tags")
    assert str(keys / "ed25519-encrypted") in str(refused.value)


def test_each_refusal_names_what_it_would_have_sent(core, tmp_path, monkeypatch):
    core.environment_proxy = lambda url: "http://proxy.example:3128"
    core.api_origins = frozenset({("http", "127.0.0.1", 11434)})
    with pytest.raises(RealmRefusedError, match="^refusing to send a signed request to http://127.0.0.1:11434 "):
        core.sign("GET", "http://127.0.0.1:11434/api/tags")
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-test")
    keyless = _core.KeylessCore(identity=tmp_path / "missing", cache=False)
    keyless.environment_proxy = lambda url: "http://proxy.example:3128"
    with pytest.raises(RealmRefusedError, match="^refusing to send OLLAMA_API_KEY to http://127.0.0.1:11434 "):
        keyless.sign("GET", "http://127.0.0.1:11434/api/tags")
    with pytest.raises(RealmRefusedError, match="^refusing to send OLLAMA_API_KEY to http://ollama.com: it must use https"):
        _core.KeylessCore(identity=tmp_path / "missing", cache=False).sign("GET", "http://ollama.com/api/tags")


def test_a_token_request_through_a_proxy_is_refused_by_name(core):
    core.environment_proxy = lambda url: "http://proxy.example:3128"
    challenge = 'Bearer realm="http://127.0.0.1:5000/token",service="s",scope="repository:x:pull"'
    with pytest.raises(RealmRefusedError, match="^refusing to send a token to http://127.0.0.1:5000 "):
        list(_core.bearer_retries(core, "http://127.0.0.1:5000/v2/x", 401, [challenge]))


def test_the_token_request_is_signed_as_scheme_1_says(core):
    # PROTOCOL.md, scheme 1 step 4: sign "GET,<token URL>,<base64 of the empty body's hex SHA-256>".
    import hashlib

    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    flow = _core.bearer_retries(core, URL, 401, [CHALLENGE])
    _, call = next(flow)
    digest = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    key_text, _, signature = call.authorization.partition(":")
    public = load_ssh_public_key(f"ssh-ed25519 {key_text}".encode())
    public.verify(base64.b64decode(signature), f"GET,{call.url},{digest}".encode())  # raises if not
    flow.close()


def test_an_api_host_that_is_not_a_host_is_named_as_such(keys):
    with pytest.raises(InputError, match="^the API host has an invalid host 'a b'$"):
        _core.KeylessCore(identity=keys / "ed25519-a", api_hosts=["a b"], cache=False)


def test_the_default_timeout_is_10_seconds(keys):
    assert _core.KeylessCore(identity=keys / "ed25519-a", cache=False).timeout == 10.0

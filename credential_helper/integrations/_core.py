"""What every HTTP-library adapter decides, written once and library-agnostic.

Per request: a request to an API host gets scheme 2 (``ts`` set, query
re-encoded, ``Authorization`` overwritten); any other request goes out
unchanged, and a ``401`` with a Bearer challenge is answered by
:func:`bearer_retries`, a generator that tells the library's driver what to do
next (wait for a concurrent exchange, send a token request, retry) so the same
steps run in a thread, in an event loop or in a requests hook. Every rule is
the CLI's: the realm rules and the cross-origin check (``client``, ``policy``),
the API-key rules, the token-response checks and the shared disk cache.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

from .. import client, policy, protocol, tokens
from ..cache import Entry, TokenCache
from ..errors import InputError, NetworkError, RealmRefusedError
from ..identity import Identity, default_identity_path, parse_private_key

# The same bound as the CLI's transport: no token response is read past this.
MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024


class TokenCall:
    """A token request to send: the exact URL, request target, Host and Authorization."""

    __slots__ = ("url", "target", "host_header", "authorization")

    def __init__(self, url: str, target: str, host_header: str, authorization: str) -> None:
        self.url, self.target, self.host_header, self.authorization = url, target, host_header, authorization

    def __repr__(self) -> str:
        return f"TokenCall(url={self.url!r}, authorization=[redacted])"


class _Credential:
    __slots__ = ("identity", "key_bytes", "api_key")

    def __init__(self, identity: Identity | None, key_bytes: bytes | None, api_key: str | None) -> None:
        self.identity, self.key_bytes, self.api_key = identity, key_bytes, api_key


class _Claim:
    """One exchange in flight; waiters in threads or event loops are told when it ends."""

    __slots__ = ("done", "async_waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.async_waiters: list = []  # (loop, asyncio.Event)


class SharedServerWarning(UserWarning):
    """Signing with the default key toward a server other than ollama.com."""


class KeylessCore:
    """The state one adapter instance keeps: API origins, identity, tokens, claims."""

    def __init__(
        self,
        *,
        identity: str | os.PathLike[str] | None = None,
        api_base: str | None = None,
        api_hosts: Iterable[str] = (),
        timeout: float = 10.0,
        cache: TokenCache | bool | None = True,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
            raise InputError("timeout must be more than 0 and at most 600 seconds")
        self.timeout = float(timeout)
        self.identity_path = os.fspath(identity) if identity is not None else default_identity_path()
        self.default_identity = identity is None
        self._warned = False
        # The API host: api_base, else OLLAMA_CLOUD_BASE_URL under Ollama's rules, else ollama.com.
        base = (
            policy.cloud_base_url(api_base, "api_base")
            if api_base is not None
            else policy.cloud_base_url(os.environ.get("OLLAMA_CLOUD_BASE_URL"))
        )
        origins = [policy.url_origin(base)]
        for host in api_hosts or ():
            url = protocol.parse_url(host if "://" in host else f"https://{host}", what="API host")
            policy.check_cleartext(url, "signed requests")
            origins.append(policy.url_origin(url))
        self.api_origins = frozenset(origins)
        self.cache = TokenCache() if cache is True else (cache or None)
        self._credential: _Credential | None = None
        self._lock = threading.Lock()
        self._tokens: dict[str, Entry] = {}
        self._claims: dict[str, _Claim] = {}
        # Set by each adapter: the proxy its library would take from the environment
        # for a URL (None: direct). See check_not_proxied.
        self.environment_proxy: Callable[[str], str | None] | None = None

    def check_not_proxied(self, url_text: str, what: str) -> None:
        """No credential over http through a proxy: refused before it is sent.

        policy allows http only to loopback, but httpx, httpx2 and requests all
        send http://127.0.0.1 through HTTP_PROXY (or ALL_PROXY) unless NO_PROXY
        names it, and a scheme-2 signature seen there can be replayed against
        ollama.com (it covers neither host nor body). The auth object cannot
        change the client's routing, so it refuses instead.
        """
        if url_text[:5].lower() != "http:" or self.environment_proxy is None:
            return
        if self.environment_proxy(url_text):
            url = protocol.parse_url(url_text)
            raise RealmRefusedError(
                f"refusing to send {what} to http://{url.host} in clear text through the proxy "
                f"that HTTP_PROXY or ALL_PROXY names for it: add {url.hostname} to NO_PROXY, or use https"
            )

    def describe(self) -> str:
        hosts = sorted(f"{scheme}://{name}:{port}" for scheme, name, port in self.api_origins)
        return f"identity={self.identity_path!r}, api_hosts={hosts!r}"

    # -- identity: loaded once, with the CLI's rules and errors -------------------------

    def credential(self) -> _Credential:
        found = self._credential
        if found is None:
            key_bytes, api_key = client.load_credential(self.identity_path)
            identity = parse_private_key(key_bytes, self.identity_path) if key_bytes is not None else None
            found = self._credential = _Credential(identity, key_bytes, api_key)
        return found

    # -- scheme 2 ------------------------------------------------------------------------

    def is_api(self, scheme: str, hostname: str, port: int | None) -> bool:
        return policy.origin(scheme, hostname, port) in self.api_origins

    def sign(self, method: str, url_text: str) -> tuple[str, str | None, str]:
        """(URL to send, its request target or None if unchanged, Authorization value)."""
        credential = self.credential()
        self.check_not_proxied(url_text, "a signed request" if credential.api_key is None else "OLLAMA_API_KEY")
        if credential.api_key is not None:
            url = protocol.parse_url(url_text)
            policy.check_cleartext(url, "OLLAMA_API_KEY")
            policy.check_api_key_destination(url)
            return url_text, None, protocol.bearer(credential.api_key)
        url = protocol.parse_url(url_text)
        assert credential.identity is not None  # no API key: the key file's identity
        plan, authorization = client.sign_parsed(method, url, credential.identity)
        if not self._warned:
            self._warned = True  # once per adapter
            shared = policy.shared_server_warning(url, self.default_identity)
            if shared is not None:
                import warnings

                warnings.warn(shared, SharedServerWarning, stacklevel=2)
        return str(plan.url), plan.url.request_target, authorization

    # -- scheme 1: tokens ----------------------------------------------------------------

    def challenge(
        self, status: int, www_authenticate: list[str], url_text: str
    ) -> tuple[protocol.Challenge, protocol.URL] | None:
        """(Challenge, realm URL) for a 401 with a Bearer challenge, checked; else None."""
        if status != 401:
            return None
        host = protocol.parse_url(url_text).host  # the host that answered: Ollama's cross-origin rule
        for value in www_authenticate:
            if protocol.is_bearer_challenge(value):
                try:
                    challenge = protocol.parse_www_authenticate(value)
                except InputError as exc:
                    raise NetworkError(f"{host} sent a malformed Bearer challenge: {exc}") from None
                return challenge, client.checked_realm(challenge, host)
        return None

    def cached(self, key: str) -> str | None:
        now = time.time()
        with self._lock:
            entry = self._tokens.get(key)
        if entry is not None and entry.is_fresh(now):
            return entry.token
        entry = self.cache.lookup(key, now) if self.cache is not None else None
        if entry is None:
            return None
        with self._lock:
            self._tokens[key] = entry
        return entry.token

    def forget(self, key: str, token: str) -> None:
        """A token the server rejected is never offered again, here or from disk."""
        with self._lock:
            entry = self._tokens.get(key)
            if entry is not None and entry.token == token:
                del self._tokens[key]
        if self.cache is not None:
            on_disk = self.cache.lookup(key)
            if on_disk is not None and on_disk.token == token:
                self.cache.erase(key)

    def claim(self, key: str) -> bool:
        with self._lock:
            if key in self._claims:
                return False
            self._claims[key] = _Claim()
            return True

    def release(self, key: str) -> None:
        with self._lock:
            claim = self._claims.pop(key, None)
        if claim is not None:
            claim.done.set()
            for loop, event in claim.async_waiters:
                loop.call_soon_threadsafe(event.set)

    def wait(self, key: str) -> None:
        with self._lock:
            claim = self._claims.get(key)
        if claim is not None and not claim.done.wait(self.timeout):
            raise NetworkError(f"timed out after {self.timeout:.3g}s waiting for a concurrent token exchange")

    async def wait_async(self, key: str) -> None:
        import asyncio

        event = asyncio.Event()
        with self._lock:
            claim = self._claims.get(key)
            if claim is None:
                return
            claim.async_waiters.append((asyncio.get_running_loop(), event))
        try:
            await asyncio.wait_for(event.wait(), self.timeout)
        except asyncio.TimeoutError:
            raise NetworkError(f"timed out after {self.timeout:.3g}s waiting for a concurrent token exchange") from None

    def store(self, key: str, exchanged: tokens.Exchanged) -> str:
        """Keep a fresh token in memory and, when enabled, in the disk cache."""
        entry = Entry(exchanged.token, exchanged.expires_at, exchanged.lifetime)
        with self._lock:
            self._tokens[key] = entry
        if self.cache is not None:
            self.cache.store(key, entry)
        return exchanged.token


# The flows the adapters drive: each yields (kind, argument) — ("wait", key),
# ("exchange", TokenCall) or ("retry", Authorization value) — and is sent back
# None, the token Response, or the retried request's status.
Flow = Generator[tuple[str, Any], Any, None]


def bearer_retries(core: KeylessCore, url_text: str, status: int, www_authenticate: list[str]) -> Flow:
    """The answer to a 401, as instructions for a library's driver.

    Yields ``("wait", key)`` (send back None), ``("exchange", TokenCall)`` (send
    back a :class:`Response` read within MAX_TOKEN_RESPONSE_BYTES) and
    ``("retry", authorization)`` (send back the retried response's status).
    A token from a cache that the server rejects is refreshed once; any other
    second 401 is the caller's to see.

    A driver must ``close()`` this generator when it stops early (an exception
    from its library): that runs ``_obtain``'s ``finally`` at once, so a failed
    exchange releases its single-flight claim now, not when the garbage
    collector gets to a traceback that holds the frame.
    """
    found = core.challenge(status, www_authenticate, url_text)
    if found is None:
        return
    challenge, realm = found
    credential = core.credential()
    if credential.api_key is not None:  # the CLI's fallback: only for an allowed host
        policy.check_api_key_destination(realm)
        core.check_not_proxied(url_text, "OLLAMA_API_KEY")
        yield ("retry", protocol.bearer(credential.api_key))
        return
    assert credential.key_bytes is not None  # no API key: the key file's bytes
    key = client.cache_key_for(challenge, credential.key_bytes)
    core.check_not_proxied(url_text, "a token")
    token, from_cache = yield from _obtain(core, key, challenge, realm)
    status = yield ("retry", protocol.bearer(token))
    if status == 401 and from_cache:
        core.forget(key, token)
        token, _ = yield from _obtain(core, key, challenge, realm)
        yield ("retry", protocol.bearer(token))


def _obtain(
    core: KeylessCore, key: str, challenge: protocol.Challenge, realm: protocol.URL
) -> Generator[tuple[str, Any], Any, tuple[str, bool]]:
    """(token, came from a cache): memory, disk, or one exchange per key at a time."""
    while True:
        token = core.cached(key)
        if token is not None:
            return token, True
        if core.claim(key):
            break
        yield ("wait", key)
    try:
        token = core.cached(key)  # filled between the look and the claim
        if token is not None:
            return token, True
        identity = core.credential().identity
        assert identity is not None  # no API key: the key file's identity
        flow = tokens.exchange(challenge, realm, identity)  # the one token flow
        answer = None
        while True:
            try:
                call = flow.send(answer)  # the first send(None) starts it
            except StopIteration as done:
                return core.store(key, done.value), False
            token_call = TokenCall(
                call.request.token_url, call.request.url.request_target, call.request.host_header, call.authorization
            )
            core.check_not_proxied(token_call.url, "a signed token request")
            answer = yield ("exchange", token_call)
    finally:
        core.release(key)


def oversized(where: str) -> NetworkError:
    return NetworkError(f"{where} sent a token response over the {MAX_TOKEN_RESPONSE_BYTES}-byte limit")

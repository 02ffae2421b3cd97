"""The Python API: challenges to tokens (scheme 1) and signed requests (scheme 2).

Each function checks its input and the realm rules before it reads the key,
raises only :class:`~credential_helper.errors.HelperError` subclasses, and
returns objects whose ``repr`` hides every secret.
"""

from __future__ import annotations

import os
import time

from . import policy, protocol
from .cache import Entry, TokenCache, entry_key, format_rfc3339, identity_digest
from .errors import InputError, KeyNotFoundError, NetworkError
from .identity import Identity, api_key_from_env, default_identity_path, parse_private_key, read_key_file
from .tokens import Exchanged, new_nonce

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the hit path
if TYPE_CHECKING:
    from collections.abc import Callable

    Log = Callable[[str], None]


class Token:
    """A Bearer token. ``str()``/``repr()`` never show its value."""

    __slots__ = ("token", "expires_at", "source", "token_type")

    def __init__(self, token: str, expires_at: float | None, source: str) -> None:
        self.token = token
        self.expires_at = expires_at
        self.source = source
        self.token_type = "Bearer"

    def __repr__(self) -> str:
        return f"Token(token=[redacted], expires_at={self.expires_at!r}, source={self.source!r})"

    @classmethod
    def from_entry(cls, entry: Entry) -> Token:
        return cls(entry.token, entry.expires_at, "ed25519")

    def as_dict(self) -> dict:
        return {
            "token": self.token,
            "token_type": self.token_type,
            "expires_at": format_rfc3339(self.expires_at) if self.expires_at is not None else None,
            "source": self.source,
        }


class SignedRequest:
    """A scheme-2 request ready to send: URL and Authorization value."""

    __slots__ = ("method", "url", "authorization", "ts", "source")

    def __init__(self, method: str, url: str, authorization: str, ts: int | None, source: str) -> None:
        self.method = method
        self.url = url
        self.authorization = authorization
        self.ts = ts
        self.source = source

    def __repr__(self) -> str:
        return f"SignedRequest(method={self.method!r}, url={self.url!r}, authorization=[redacted], source={self.source!r})"

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "url": self.url,
            "authorization": self.authorization,
            "ts": self.ts,
            "source": self.source,
        }


class DryRun:
    """What ``get`` would send, without sending it."""

    __slots__ = ("token_url", "host", "signed_data", "authorization", "source")

    def __init__(self, token_url: str | None, host: str | None, signed_data: str | None, authorization: str, source: str) -> None:
        self.token_url = token_url
        self.host = host
        self.signed_data = signed_data
        self.authorization = authorization
        self.source = source

    def __repr__(self) -> str:
        return f"DryRun(token_url={self.token_url!r}, authorization=[redacted])"

    def as_dict(self) -> dict:
        return {
            "dry_run": True,
            "method": "GET" if self.token_url else None,
            "token_url": self.token_url,
            "host": self.host,
            "signed_data": self.signed_data,
            "authorization": self.authorization,
            "source": self.source,
        }


def fetch_challenge(url: str | protocol.URL, *, timeout: float = 10.0) -> tuple[protocol.Challenge, str]:
    """GET ``url`` without credentials; return its Bearer challenge and its host."""
    from . import transport

    from .sanitize import server_text

    target = url if isinstance(url, protocol.URL) else protocol.parse_url(url)
    response = transport.send("GET", target, timeout=timeout, max_body=64 * 1024)
    if response.status != 401:
        raise NetworkError(
            f"{target.host} answered {response.status} {server_text(response.reason, limit=60)} "
            "without credentials; expected 401 with a Bearer challenge",
            response.status,
        )
    for value in response.headers.get("www-authenticate", []):
        if protocol.is_bearer_challenge(value):
            try:
                return protocol.parse_www_authenticate(value), target.host
            except InputError as exc:
                raise NetworkError(f"{target.host} sent a malformed Bearer challenge: {exc}") from None
    raise NetworkError(f"{target.host} answered 401 without a Bearer challenge")


def resolve_input(text: str, *, host: str | None = None, timeout: float = 10.0) -> protocol.ChallengeInput:
    """Parse stdin-style input; for a URL, fetch its challenge. Host from --host too."""
    parsed = protocol.parse_challenge_input(text)
    if host is not None:
        protocol.check_host_value(host)
        if parsed.host is not None and parsed.host != host:
            raise InputError(f'--host {host!r} differs from the input\'s "host" {parsed.host!r}')
    if parsed.url is not None:
        if host is not None and host != parsed.url.host:
            raise InputError(f"--host {host!r} differs from the URL's host {parsed.url.host!r}")
        parsed.challenge, parsed.host = fetch_challenge(parsed.url, timeout=timeout)
    elif host is not None:
        parsed.host = host
    return parsed


def cache_key_for(challenge: protocol.Challenge, key_bytes: bytes) -> str:
    return entry_key(identity_digest(key_bytes), challenge.realm, challenge.service, challenge.scopes)


def get_token(
    challenge: protocol.Challenge | str,
    *,
    host: str | None = None,
    identity: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
    nonce: str | None = None,
    cache: TokenCache | None = None,
    refresh: bool = False,
    dry_run: bool = False,
    log: Log | None = None,
) -> Token | DryRun:
    """Exchange a Bearer challenge for a token (scheme 1, server/auth.go).

    ``challenge`` is a :class:`Challenge` or a ``WWW-Authenticate`` value. ``host``
    is the host[:port] that sent it, when known (Ollama's cross-origin rule).
    ``cache`` (a :class:`TokenCache`) enables caching; ``refresh`` skips reading it.
    """
    log = log or _quiet
    deadline = time.monotonic() + timeout  # one bound over lock wait and exchange
    if isinstance(challenge, str):
        challenge = protocol.parse_www_authenticate(challenge)
    realm = checked_realm(challenge, host, nonce)
    log(f"challenge: realm={challenge.realm} service={challenge.service!r} scope={challenge.scope!r}")

    key_path = _key_path(identity)
    key_bytes, api_key = _key_or_api_key(key_path, realm)
    if api_key is not None:
        log(f"no key at {key_path}; using OLLAMA_API_KEY ([redacted])")
        if dry_run:
            return DryRun(None, None, None, protocol.bearer(api_key), "api_key")
        return Token(api_key, None, "api_key")
    assert key_bytes is not None  # load_credential gives the key or the API key

    problem = cache.problem(create=True) if cache is not None and not dry_run else None
    if problem is not None:
        log(f"cache: not used ({problem})")
        cache = None
    if cache is not None and not dry_run:
        key = cache_key_for(challenge, key_bytes)
        if not refresh:
            hit = cache.lookup(key)
            if hit is not None:
                log("cache: hit")
                return Token.from_entry(hit)
        with cache.lock(key, timeout) as lock:
            log(f"cache: miss; lock {'taken' if lock.acquired else 'not taken'}")
            if not refresh:
                # Single flight: whoever held the lock may have stored a token.
                hit = cache.lookup(key)
                if hit is not None:
                    log("cache: filled by a concurrent caller")
                    return Token.from_entry(hit)
            ident = parse_private_key(key_bytes, key_path)
            token = _exchange(challenge, realm, ident, nonce, _remaining(deadline), log)
            stored = cache.store(key, Entry(token.token, token.expires_at, token.lifetime))
            log(f"cache: {'stored' if stored else 'not writable; token not cached'}")
            return Token(token.token, token.expires_at, "ed25519")

    ident = parse_private_key(key_bytes, key_path)
    if dry_run:
        request = protocol.build_token_request(challenge, realm, int(time.time()), nonce or new_nonce())
        return DryRun(request.token_url, request.host_header, request.signed_data, ident.sign(request.signed_data), "ed25519")
    token = _exchange(challenge, realm, ident, nonce, _remaining(deadline), log)
    return Token(token.token, token.expires_at, "ed25519")


def checked_realm(challenge: protocol.Challenge, host: str | None, nonce: str | None = None) -> protocol.URL:
    """Input and realm rules, always before the key is read."""
    if host is not None:
        protocol.check_host_value(host)
    for value, what in ((challenge.service, '"service"'), (challenge.scope, '"scope"'), (nonce or "", '"nonce"')):
        if not isinstance(value, str):
            raise InputError(f"{what} must be a string")
        protocol.check_text(value, what)
    realm = protocol.parse_url(challenge.realm, what="realm")
    policy.check_realm(realm, host)
    return realm


def load_credential(key_path: str) -> tuple[bytes | None, str | None]:
    """The key file's bytes; or, only when nothing exists at the path at all,
    OLLAMA_API_KEY. A key that exists but cannot be used is an error, never a
    fallback. Where the API key may then go is for the caller to check (policy)."""
    try:
        return read_key_file(key_path), None
    except KeyNotFoundError:
        api_key = api_key_from_env()
        if api_key is None:
            raise
        policy.check_not_local_token(api_key)
        return None, api_key


def _key_or_api_key(key_path: str, destination: protocol.URL) -> tuple[bytes | None, str | None]:
    key_bytes, api_key = load_credential(key_path)
    if api_key is not None:
        policy.check_api_key_destination(destination)
    return key_bytes, api_key


def _key_path(identity: str | os.PathLike[str] | None) -> str:
    return os.fspath(identity) if identity is not None else default_identity_path()


def cached_token(
    challenge: protocol.Challenge,
    *,
    host: str | None = None,
    identity: str | os.PathLike[str] | None = None,
    cache: TokenCache,
) -> Token | None:
    """A fresh cached token for this challenge and identity, or None.

    The same checks as :func:`get_token` come first; the key file is read (to key
    the cache) but never parsed, so no cryptography is loaded.
    """
    checked_realm(challenge, host)
    try:
        key_bytes = read_key_file(_key_path(identity))
    except KeyNotFoundError:
        return None
    hit = cache.lookup(cache_key_for(challenge, key_bytes))
    return Token.from_entry(hit) if hit is not None else None


def _exchange(
    challenge: protocol.Challenge, realm: protocol.URL, ident: Identity, nonce: str | None, timeout: float, log: Log
) -> Exchanged:
    """Drive the one token flow (tokens.exchange) with transport.send, under one deadline."""
    from . import tokens, transport

    deadline = time.monotonic() + timeout
    flow = tokens.exchange(challenge, realm, ident, nonce)
    response = None
    while True:
        try:
            call = flow.send(response)  # the first send(None) starts it
        except StopIteration as done:
            token: Exchanged = done.value
            if token.note:  # success after a correction: worth one warning line
                _warn(f"the local clock is off; a corrected timestamp was used{token.note}")
            return token
        if response is not None:
            log("clock skew: retrying once with a corrected timestamp")
        request = call.request
        log(f"GET {request.token_url} (Host: {request.host_header}, Authorization: [redacted])")
        started = time.monotonic()
        try:
            response = transport.send(
                "GET",
                request.url,
                headers={"Authorization": call.authorization},
                host_header=request.host_header,
                timeout=max(deadline - started, 0.001),
            )
        except NetworkError as exc:
            flow.throw(exc)  # raises it again, with the flow's note
            raise  # pragma: no cover  (throw always raises here)
        log(f"token endpoint answered {response.status} in {time.monotonic() - started:.3f}s")


def _remaining(deadline: float) -> float:
    """Time left before ``deadline``; at least a moment, so a late start fails as a timeout."""
    return max(deadline - time.monotonic(), 0.05)


def _quiet(message: str) -> None:
    pass


def _warn(message: str) -> None:
    import sys

    sys.stderr.write(f"ollama-credential-helper: warning: {message}\n")


def sign_request(
    method: str,
    url: str,
    *,
    identity: str | os.PathLike[str] | Identity | None = None,
    ts: int | None = None,
) -> SignedRequest:
    """Sign one API request (scheme 2, api/client.go and server/cloud_proxy.go).

    Returns the URL to send (``ts`` set, query re-encoded) and the Authorization
    value. With no key file and ``OLLAMA_API_KEY`` set, returns ``Bearer <key>``
    and the URL unchanged.
    """
    if not isinstance(method, str) or not isinstance(url, str):
        raise InputError("method and url must be strings")
    parsed = protocol.parse_url(url)
    if not isinstance(identity, Identity):
        key_path = _key_path(identity)
        policy.check_cleartext(parsed, "a signature")
        protocol.check_method(method)  # input first, then the key
        key_bytes, api_key = _key_or_api_key(key_path, parsed)
        if api_key is not None:
            return SignedRequest(method.upper(), url, protocol.bearer(api_key), None, "api_key")
        assert key_bytes is not None  # load_credential gives the key or the API key
        identity = parse_private_key(key_bytes, key_path)
    plan, authorization = sign_parsed(method, parsed, identity, ts)
    return SignedRequest(plan.method, str(plan.url), authorization, plan.ts, "ed25519")


def sign_parsed(
    method: str, url: protocol.URL, identity: Identity, ts: int | None = None
) -> tuple[protocol.SignedRequestPlan, str]:
    """Scheme 2 for a parsed URL: (SignedRequestPlan, Authorization value).

    The one place every signer (``sign_request``, the HTTP-library adapters, the
    proxy) goes through. A scheme-2 signature does not name the host: one seen
    in clear text could be replayed against ollama.com until its ts goes stale,
    so it goes over https only (http to loopback).
    """
    policy.check_cleartext(url, "a signature")
    plan = protocol.build_signed_request(method, url, int(time.time()) if ts is None else ts)
    return plan, identity.sign(plan.signed_data)

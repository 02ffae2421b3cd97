"""The proxy's policy: who may use it, and the scheme-2 signature it adds. Pure but for the token file.

Any tool that takes a base URL and an API key points at ``http://127.0.0.1:PORT``
with the local access token as its key; each request it admits is forwarded
signed with scheme 2 over the exact request target sent upstream, as Ollama's
own ``server/cloud_proxy.go`` does.

Who may use it, checked in this order, each before anything is forwarded:
1. ``Host`` names the proxy's own loopback address: a web page that rebinds a
   DNS name to 127.0.0.1 sends its own name (Ollama's server checks Host for the
   same reason, server/routes.go allowedHost);
2. no browser cross-site marks (``Origin``, ``Sec-Fetch-Site``) unless
   ``--allow-origin`` names the origin: a web page must not drive the account;
3. the local access token, compared whole and in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .. import client, policy, protocol, system
from ..errors import HelperError, IdentityError, InputError
from .messages import Answer, Forward, Head, end_to_end

if TYPE_CHECKING:
    from ..identity import Identity

TOKEN_FILE = "proxy-token"
MIN_TOKEN_CHARS = 32
# Never forwarded besides hop-by-hop fields: the client's credentials (the local
# token), framing, and anything that tells the upstream about this machine.
NOT_FORWARDED = frozenset({"host", "authorization", "x-api-key", "expect", "forwarded", "x-real-ip", "via", "origin", "cookie"})
# Sec-Fetch-Site values a page other than the proxy's own sends (Fetch Metadata).
BROWSER_SITES = frozenset({"cross-site", "same-site"})


# --- the local access token ------------------------------------------------------------


def token_path() -> str:
    return os.path.join(system.config_dir(), TOKEN_FILE)


def local_token(create: bool = True) -> str:
    """The proxy's access token: read it, or make it once (0600, O_EXCL)."""
    path = token_path()
    problem = system.private_directory_problem(os.path.dirname(path), create=create)
    if problem is not None:
        raise IdentityError(f"cannot keep the proxy's access token: {problem}")
    try:
        data: bytes | None = system.read_file(path, 4096, follow=False, private=True)[0]
    except system.FileTooLarge:
        data = b""  # no token is that long
    except OSError:
        if os.path.lexists(path):
            raise IdentityError(
                f"{path} is not a private regular file of yours: remove it, or {system.permission_advice(path)}, and start again"
            ) from None
        data = None
    if data is not None:
        token = data.decode("ascii", "replace").strip()
        if len(token) >= MIN_TOKEN_CHARS and protocol.is_header_token(token):
            return token
        raise IdentityError(f"{path} does not hold a usable token: remove it and start again")
    token = policy.LOCAL_TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        fd = system.create_new(path, 0o600)
    except FileExistsError:
        return local_token(create=False)  # another proxy made it first
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return token


def presented_token(head: Head) -> str | None:
    """The client's local token: ``Authorization: Bearer <t>`` or ``x-api-key: <t>``."""
    value = head.get("authorization")
    if value is not None:
        return protocol.bearer_credential(value)
    return head.get("x-api-key")


def env_lines(base: str, token: str | None) -> list[str]:
    """Shell lines that point the common clients at the proxy."""
    key = token or "unused"  # clients insist on some key even when none is checked
    return [
        f"export OPENAI_BASE_URL={base}/v1",
        f"export OPENAI_API_KEY={key}",
        f"export OLLAMA_HOST={base}",
        f"export OLLAMA_API_KEY={key}",
        f"export OLLAMA_API_BASE={base}",  # LiteLLM's ollama_chat/
        f"export OLLAMA_BASE_URL={base}/v1",  # pydantic-ai's OllamaProvider
        f"export ANTHROPIC_BASE_URL={base}",
        f"export ANTHROPIC_API_KEY={key}",
    ]


# --- the credential it signs with --------------------------------------------------------------


class Signer:
    """Scheme 2 for the upstream with the identity loaded at start; or, with no
    key file at all, ``OLLAMA_API_KEY`` under the destination rule."""

    def __init__(self, upstream: protocol.URL, identity_path: str) -> None:
        self.upstream = upstream
        # load_credential never takes the local token for an API key (policy.check_not_local_token).
        key_bytes, api_key = client.load_credential(identity_path)
        self.identity: Identity | None
        self.api_key: str | None
        if api_key is not None:
            policy.check_api_key_destination(upstream)
            self.identity, self.api_key = None, api_key
            self.description = "OLLAMA_API_KEY (an API key)"
        else:
            from ..identity import parse_private_key

            assert key_bytes is not None  # load_credential gives the key or the API key
            self.identity, self.api_key = parse_private_key(key_bytes, identity_path), None
            self.description = f"key {self.identity.fingerprint}"
        self._lock = threading.Lock()

    def sign(self, method: str, target: str) -> tuple[str, str]:
        """(request target to send upstream, Authorization) for the client's target."""
        url = protocol.parse_url(f"{self.upstream}{target}", what="request URL")
        if self.api_key is not None:
            return url.request_target, protocol.bearer(self.api_key)
        assert self.identity is not None  # no API key: the key file's identity
        plan, authorization = client.sign_parsed(method, url, self.identity)
        return plan.url.request_target, authorization


# --- who may use it -------------------------------------------------------------------------


def own_hosts(address: tuple[str, int]) -> frozenset[str]:
    """The Host values that name this proxy (lower case): each name of the loopback
    address it bound (``policy.loopback_names``) with its port, and without it on
    port 80. Empty, so that every request is refused, for any other address."""
    host, port = address[0], address[1]
    names = policy.loopback_names(host)
    return frozenset([f"{name}:{port}" for name in names] + (list(names) if port == 80 else []))


def parse_origins(values: Iterable[str] | None) -> frozenset[tuple[str, str, int]]:
    """``--allow-origin`` values as comparable origins (scheme, host, port)."""
    found = set()
    for value in values or ():
        url = protocol.parse_url(value.rstrip("/"), what="--allow-origin")
        if url.path or url.raw_query:
            raise InputError(f"--allow-origin {value!r}: an origin is a scheme, host and port only")
        found.add(policy.url_origin(url))
    return frozenset(found)


def browser_problem(head: Head, allowed: frozenset) -> str | None:
    """Why a request that a web page sent must be refused, or None."""
    origins = head.get_all("origin")
    sites = [value.strip().lower() for value in head.get_all("sec-fetch-site")]
    if origins:
        try:
            url = protocol.parse_url(origins[0], what="Origin") if len(origins) == 1 else None
        except InputError:
            url = None
        if url is None or url.path or policy.url_origin(url) not in allowed:
            return "a web page's request (Origin) is refused; start the proxy with --allow-origin ORIGIN to admit that page"
        return None
    if any(site in BROWSER_SITES for site in sites):
        return "a web page's request (Sec-Fetch-Site) is refused; start the proxy with --allow-origin ORIGIN to admit that page"
    return None


class SigningPolicy:
    """The proxy: admit the local token holder, sign, forward."""

    def __init__(
        self,
        signer: Signer,
        token: str | None,
        address: tuple[str, int],
        allowed_origins: frozenset[tuple[str, str, int]] = frozenset(),
    ) -> None:
        self.signer = signer
        self.token = token.encode() if token is not None else None
        self.hosts = own_hosts(address)
        names = policy.loopback_names(address[0])
        self.shown_host = f"{names[0]}:{address[1]}" if names else "a loopback address"
        self.allowed_origins = allowed_origins

    def decide(self, head: Head) -> Forward | Answer:
        host = (head.get("host") or "").strip().lower()
        if host not in self.hosts:
            return Answer(
                403,
                f"the Host header must name this proxy ({self.shown_host}): a DNS name "
                "that points at loopback is how a web page would reach it",
                reason="origin",
            )
        problem = browser_problem(head, self.allowed_origins)
        if problem is not None:
            return Answer(403, problem, reason="origin")
        if self.token is not None:
            offered = presented_token(head)
            if offered is None or not hmac.compare_digest(offered.encode("latin-1", "replace"), self.token):
                return Answer(
                    401,
                    (
                        "missing or wrong local access token: send it as 'Authorization: Bearer <token>' or "
                        f"'x-api-key: <token>'; it is in {token_path()} ('ollama-credential-helper proxy --print-env' prints it)"
                    ),
                    headers=(("WWW-Authenticate", 'Bearer realm="ollama-credential-helper proxy"'),),
                    reason="token",
                )
        if not head.method.isalpha() or not head.method.isupper():
            # Signed as sent or not at all: ollama.com verifies METHOD,<target> with the method as sent.
            return Answer(
                400, "the method must be upper-case letters (methods are case-sensitive, RFC 9110 9.1)", reason="malformed"
            )
        try:
            target, authorization = self.signer.sign(head.method, head.target)
        except InputError as exc:
            return Answer(400, str(exc), reason="malformed")
        except HelperError as exc:
            return Answer(503, str(exc), reason="identity")
        headers = end_to_end(head.headers, NOT_FORWARDED)
        headers = [(n, v) for n, v in headers if not n.lower().startswith("x-forwarded-")]
        headers += [("Host", self.signer.upstream.host), ("Authorization", authorization)]
        return Forward(target, tuple(headers), secrets=(authorization,))

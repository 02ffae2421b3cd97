"""The gate's policies: admit a request when its Ollama key signature verifies
(serve/verify.py) for a key in authorized_keys that may call that endpoint.

Two policies on the one engine: ``GatePolicy`` forwards what it admits to a
self-hosted Ollama (reverse proxy); ``AuthOnlyPolicy`` only answers ``204`` (or
``200`` for Envoy) or the refusal, for nginx ``auth_request``, ingress-nginx,
Caddy ``forward_auth``, Traefik ``ForwardAuth`` and Envoy ``ext_authz``.
"""

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable

from ..sanitize import printable
from .authorized_keys import KeyFile
from .forwarded import authorization_header, forwarded_request, prefixed_request
from .messages import Answer, Forward, Head, end_to_end, request_has_body
from .verify import HEALTH_CHECK_NAME, Admitted, Refused, verify

# Never forwarded to Ollama besides hop-by-hop fields: the signature (replayable at
# ollama.com while its ts is fresh) and any client copy of what the gate asserts.
NOT_FORWARDED = frozenset({"host", "authorization", "x-ollama-user", "x-ollama-key", "expect"})
ASSERTED = frozenset({"x-ollama-user", "x-ollama-key"})
# Ollama's gin takes ClientIP() from X-Forwarded-For or X-Real-IP (gin's default RemoteIPHeaders, every proxy
# trusted): a client's own copies are dropped and the gate says whom it saw (Head.peer).
CLIENT_ADDRESS = frozenset({"x-forwarded-for", "x-real-ip", "forwarded"})
_DROPPED = ASSERTED | CLIENT_ADDRESS


def header_text(message: str) -> str:
    """A message as a header value nginx can paste into a JSON string: printable,
    one line, without quote or backslash."""
    return printable(message).replace('"', "'").replace("\\", "/")[:400]


def refusal(refused: Refused) -> Answer:
    message = header_text(refused.message)
    headers = [("X-Ollama-Error", message)]
    if refused.status == 401:
        headers.append(("WWW-Authenticate", 'Ollama realm="ollama-credential-helper gate"'))
    reason = refused.reason or ("malformed" if refused.status == 400 else "")
    return Answer(refused.status, message, headers=tuple(headers), keep_alive=True, who=refused.user or None,
                  key=refused.key, reason=reason, hint=refused.hint)


@functools.lru_cache(maxsize=4096)
def _user_header(name: str) -> str:
    # Names come from the key file (a bounded set): cleaned once each, not per request.
    return header_text(name)


def identity_headers(admitted: Admitted) -> list[tuple[str, str]]:
    headers = [("X-Ollama-User", _user_header(admitted.name))]
    if admitted.fingerprint:
        headers.append(("X-Ollama-Key", admitted.fingerprint))
    return headers


def label(admitted: Admitted) -> str:
    """The log's name for the caller: the key's name, else its fingerprint."""
    return admitted.name if admitted.name and admitted.name != admitted.fingerprint else (admitted.fingerprint or "-")


class _Verifying:
    def __init__(self, keys: KeyFile, max_skew: float, clock: Callable[[], float] = time.time) -> None:
        self.keys, self.max_skew, self.clock = keys, max_skew, clock

    def check(self, method: str, target: str, headers: Iterable[tuple[str, str]]) -> Admitted | Refused:
        authorization = authorization_header(list(headers))
        if isinstance(authorization, Refused):
            return authorization
        return verify(method, target, authorization, self.keys.current(), self.clock(), self.max_skew)


class GatePolicy(_Verifying):
    """Reverse proxy: verify the request as received, forward it unchanged but
    for Host, without Authorization, with who it is from."""

    def __init__(self, keys: KeyFile, max_skew: float, upstream_host: str, clock: Callable[[], float] = time.time) -> None:
        super().__init__(keys, max_skew, clock)
        self.upstream_host = upstream_host

    def decide(self, head: Head) -> Forward | Answer:
        result = self.check(head.method, head.target, head.headers)
        if isinstance(result, Admitted) and result.name == HEALTH_CHECK_NAME and not result.fingerprint and request_has_body(head):
            # The one unsigned request admitted must not carry anything to Ollama (or hold a slot while it trickles).
            result = Refused(401, "an unsigned HEAD / (a health check) carries no body; sign the request", "unsigned")
        if isinstance(result, Refused):
            return refusal(result)
        headers = end_to_end(head.headers, NOT_FORWARDED | _DROPPED)  # X_Ollama_User too (messages.field_key)
        # Ollama checks Host on loopback (server/routes.go allowedHostsMiddleware): name the upstream.
        headers += [("Host", self.upstream_host), *identity_headers(result)]
        if head.peer:
            headers.append(("X-Forwarded-For", head.peer))
        # An unsigned probe gets one answer per connection: queued probes must not hold request slots.
        probe = result.name == HEALTH_CHECK_NAME and not result.fingerprint
        return Forward(head.target, tuple(headers), who=label(result), close=probe, key=result.fingerprint)


class AuthOnlyPolicy(_Verifying):
    """Forward auth: the front server asks about the original request.

    Without ``path_prefix``: the method and target arrive in the front server's
    headers (nginx, ingress-nginx, Caddy, Traefik), and ``204`` admits. With it:
    they are the auth request's own method and target after the prefix (Envoy's
    ext_authz HTTP service, Gateway API ExternalAuth), and only ``200`` admits
    there: Envoy denies on any other status, 204 included
    (``ext_authz_http_impl.cc`` ``toResponse``: OK only for ``Http::Code::OK``).
    """

    def __init__(self, keys: KeyFile, max_skew: float, clock: Callable[[], float] = time.time,
                 path_prefix: str | None = None) -> None:
        super().__init__(keys, max_skew, clock)
        self.path_prefix = path_prefix

    def decide(self, head: Head) -> Answer:
        if self.path_prefix is None:
            original = forwarded_request(list(head.headers))
        else:
            original = prefixed_request(head.method, head.target, self.path_prefix)
        if isinstance(original, Refused):
            return refusal(original)
        method, target = original
        result = self.check(method, target, head.headers)
        if isinstance(result, Refused):
            answer = refusal(result)
            return dataclasses.replace(answer, about=(method, target))
        headers = identity_headers(result)
        if self.path_prefix is None:
            return Answer(204, headers=tuple(headers), keep_alive=True, who=label(result), about=(method, target),
                          key=result.fingerprint)
        # Envoy removes what this lists from the request it forwards (external_auth.proto,
        # OkHttpResponse.headers_to_remove): the signature, and for an unsigned health check
        # (no X-Ollama-Key of ours to override it) a client's own X-Ollama-Key.
        removed = "authorization" if result.fingerprint else "authorization, x-ollama-key"
        headers.append(("x-envoy-auth-headers-to-remove", removed))
        return Answer(200, headers=tuple(headers), keep_alive=True, who=label(result), about=(method, target), body=b"",
                      key=result.fingerprint)

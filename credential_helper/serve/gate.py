"""The gate's policies: admit a request when its Ollama key signature verifies
(serve/verify.py) for a key in authorized_keys that may call that endpoint.

Two policies on the one engine: ``GatePolicy`` forwards what it admits to a
self-hosted Ollama (reverse proxy); ``AuthOnlyPolicy`` only answers ``204`` (or
``200`` for Envoy) or the refusal, for nginx ``auth_request``, ingress-nginx,
Caddy ``forward_auth``, Traefik ``ForwardAuth`` and Envoy ``ext_authz``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import ipaddress
from collections.abc import Callable, Iterable

from ..sanitize import printable
from . import models, restrict
from .authorized_keys import Grant, KeyFile
from .forwarded import authorization_header, forwarded_request, prefixed_request
from .messages import Answer, Forward, Head, NeedBody, end_to_end, request_has_body
from .verify import (
    HEALTH_CHECK_NAME,
    Admitted,
    Refused,
    is_heartbeat,
    split_target,
    verify,
)

# A request body read to see which model it names (models=), and a listing read to filter
# it: bounded, as a body the gate holds in memory must be (over: 413, or 502 for a listing).
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_LISTING_BYTES = 8 * 1024 * 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network  # a --trusted-front range

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
    if refused.status == 429:
        headers.append(("Retry-After", "1"))  # RFC 6585 4: a slot frees when a request of the key ends
    reason = refused.reason or ("malformed" if refused.status == 400 else "")
    return Answer(
        refused.status,
        message,
        headers=tuple(headers),
        keep_alive=True,
        who=refused.user or None,
        key=refused.key,
        reason=reason,
        hint=refused.hint,
        model=refused.model,
    )


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
    enforceable: Callable[[Grant], bool] | None = None  # which lines this mode can enforce (None: every line)

    def __init__(self, keys: KeyFile, max_skew: float, clock: Callable[[], float] = time.time) -> None:
        self.keys, self.max_skew, self.clock = keys, max_skew, clock

    def live(self, admitted: Admitted, address: str) -> list | Refused:
        """The admitting lines whose from= and expiry-time let this client in now."""
        if not admitted.fingerprint:
            return []  # the unsigned health check: no key, no line
        lines = restrict.live_lines(admitted.grants, address, self.clock(), self.enforceable, who=_who(admitted))
        return _theirs(admitted, lines) if isinstance(lines, Refused) else lines

    def check(self, method: str, target: str, headers: Iterable[tuple[str, str]]) -> Admitted | Refused:
        authorization = authorization_header(list(headers))
        if isinstance(authorization, Refused):
            return authorization
        return verify(
            method, target, authorization, self.keys.current(), self.clock(), self.max_skew, options_checked_by_caller=True
        )


class GatePolicy(_Verifying):
    """Reverse proxy: verify the request as received, forward it unchanged but
    for Host, without Authorization, with who it is from."""

    def __init__(
        self,
        keys: KeyFile,
        max_skew: float,
        upstream_host: str,
        clock: Callable[[], float] = time.time,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        super().__init__(keys, max_skew, clock)
        self.upstream_host = upstream_host
        self.max_body = max_body
        self.in_flight = restrict.InFlight()

    def decide(self, head: Head) -> Forward | Answer | NeedBody:
        result = self.check(head.method, head.target, head.headers)
        if (
            isinstance(result, Admitted)
            and result.name == HEALTH_CHECK_NAME
            and not result.fingerprint
            and request_has_body(head)
        ):
            # The one unsigned request admitted must not carry anything to Ollama (or hold a slot while it trickles).
            result = Refused(401, "an unsigned HEAD / (a health check) carries no body; sign the request", "unsigned")
        if isinstance(result, Refused):
            return refusal(result)
        lines = self.live(result, head.peer)
        if isinstance(lines, Refused):
            return refusal(lines)
        headers = end_to_end(head.headers, NOT_FORWARDED | _DROPPED)  # X_Ollama_User too (messages.field_key)
        # Ollama checks Host on loopback (server/routes.go allowedHostsMiddleware): name the upstream.
        headers += [("Host", self.upstream_host), *identity_headers(result)]
        if head.peer:
            headers.append(("X-Forwarded-For", head.peer))
        # An unsigned probe gets one answer per connection: queued probes must not hold request slots.
        probe = result.name == HEALTH_CHECK_NAME and not result.fingerprint
        forward = Forward(head.target, tuple(headers), who=label(result), close=probe, key=result.fingerprint)
        if not lines or restrict.unrestricted(lines) or is_heartbeat(head.method, head.path):
            return self._count(result, forward)  # HEAD / names no model (server/routes.go: "Ollama is running")
        # models=: the model is named in the body (or the query, or the path): read it first.
        return NeedBody(
            self.max_body,
            lambda body: self._models(head, result, lines, forward, body),
            who=label(result),
            key=result.fingerprint,
        )

    def _models(self, head: Head, admitted: Admitted, lines: list, forward: Forward, body: bytes) -> Forward | Answer:
        """Every model the request names, read as Ollama would, allowed by one of the lines."""
        encodings = [value.strip().lower() for value in head.get_all("content-encoding")]
        if any(encoding not in ("", "identity") for encoding in encodings):
            # Ollama reads the bytes as sent (gin decodes no Content-Encoding): refuse what it would misread.
            return refusal(
                _theirs(
                    admitted,
                    Refused(
                        400, "a compressed request body cannot be checked for its model; send it uncompressed", reason="body"
                    ),
                )
            )
        path, query = split_target(head.target)
        named = models.models_named(
            head.method,
            path,
            query or "",
            head.get("content-type"),
            body,
            content_encoding=",".join(encodings) or None,
            limit=self.max_body,
        )
        if isinstance(named, models.Unreadable):
            return refusal(
                _theirs(
                    admitted,
                    Refused(named.status, f"the gate cannot read this request as Ollama would: {named.reason}", reason="body"),
                )
            )
        if not isinstance(named, models.Named):
            return refusal(
                _theirs(
                    admitted,
                    Refused(
                        403,
                        f"key {_who(admitted)} is restricted to some models, and the gate cannot tell "
                        f"which model {printable(path)[:120]} acts on ({named.reason}): not granted",
                        reason="model",
                    ),
                )
            )
        # The log names the model a refusal is about (record.Record.model), never one read from the query.
        logged = "" if any(m.in_query for m in named.models) else ",".join(named.subjects)
        denied = restrict.models_refusal(lines, named.subjects, _who(admitted)) if named.models else None
        if denied is not None:
            return refusal(_theirs(admitted, denied if logged else dataclasses.replace(denied, model="")))
        if (named.listing and head.method == "GET") or named.show:
            allowed = restrict.allowed_by(lines)

            def shown(status: int, data: bytes) -> bytes:
                if named.show:  # its errors are about the model asked for (model_answers.py)
                    return models.filter_show(data, allowed) if 200 <= status < 300 else data
                if not 200 <= status < 300:
                    return models.listing_error(path, status, data)
                return models.filter_listing(path, data, allowed)

            forward = dataclasses.replace(
                forward,
                # Ollama answers uncompressed, but a front between may not: ask for identity.
                headers=tuple((n, v) for n, v in forward.headers if n.lower() != "accept-encoding"),
                filter_answer=shown,
                # A verbose show holds the tokenizer's vocabulary: bounded as a request body is.
                filter_limit=MAX_BODY_BYTES if named.show else MAX_LISTING_BYTES,
            )
        return self._count(admitted, forward, logged)

    def _count(self, admitted: Admitted, forward: Forward, model: str = "") -> Forward | Answer:
        """max-concurrent: a slot in each counter of the key's lines (restrict.concurrency_counts)."""
        releases: list[Callable[[], None]] = []
        for counter, limit, whose in restrict.concurrency_counts(admitted.lines, admitted.fingerprint):
            release = self.in_flight.take(counter, limit)
            if release is None:
                for taken in releases:
                    taken()
                holder = whose or f"key {_who(admitted)}"
                return refusal(
                    _theirs(
                        admitted,
                        Refused(
                            429,
                            f"{holder} already has {limit} request(s) in flight (max-concurrent={limit}); retry when one ends",
                            reason="concurrency",
                            model=model,
                        ),
                    )
                )
            releases.append(release)
        if not releases:
            return forward
        if len(releases) == 1:
            return dataclasses.replace(forward, release=releases[0])

        def release_all() -> None:  # each release is idempotent (InFlight.take)
            for taken in releases:
                taken()

        return dataclasses.replace(forward, release=release_all)


def _theirs(admitted: Admitted, refused: Refused) -> Refused:
    """A refusal of a verified key names it in the log (observe's key and user)."""
    named = admitted.name if admitted.name != admitted.fingerprint else ""
    return dataclasses.replace(refused, key=admitted.fingerprint, user=named)


def _who(admitted: Admitted) -> str:
    name = label(admitted)
    return admitted.fingerprint if name == admitted.fingerprint else f"{admitted.fingerprint} ({printable(name)[:64]})"


class AuthOnlyPolicy(_Verifying):
    """Forward auth: the front server asks about the original request.

    Without ``path_prefix``: the method and target arrive in the front server's
    headers (nginx, ingress-nginx, Caddy, Traefik), and ``204`` admits. With it:
    they are the auth request's own method and target after the prefix (Envoy's
    ext_authz HTTP service, Gateway API ExternalAuth), and only ``200`` admits
    there: Envoy denies on any other status, 204 included
    (``ext_authz_http_impl.cc`` ``toResponse``: OK only for ``Http::Code::OK``).

    The front's auth request carries no body and sees no answer: a line with models= or
    max-concurrent= grants nothing here (the gate refuses to start with one). from= is
    matched against the address a trusted front reports (:func:`front_reported_address`).
    """

    def __init__(
        self,
        keys: KeyFile,
        max_skew: float,
        clock: Callable[[], float] = time.time,
        path_prefix: str | None = None,
        trusted_fronts: Iterable[IPNetwork] = (),
    ) -> None:
        super().__init__(keys, max_skew, clock)
        self.path_prefix = path_prefix
        self.trusted_fronts = tuple(trusted_fronts)
        can_see_address = bool(self.trusted_fronts)
        self.enforceable = lambda grant: (
            grant.options.models is None
            and grant.options.max_concurrent is None
            and (can_see_address or grant.options.from_patterns is None)
        )

    def decide(self, head: Head) -> Answer:
        if self.path_prefix is None:
            original = forwarded_request(list(head.headers))
        else:
            original = prefixed_request(head.method, head.target, self.path_prefix)
        if isinstance(original, Refused):
            return refusal(original)
        method, target = original
        result = self.check(method, target, head.headers)
        if isinstance(result, Admitted):
            lines = self.live(result, front_reported_address(head, self.trusted_fronts))
            if isinstance(lines, Refused):
                result = lines
        if isinstance(result, Refused):
            answer = refusal(result)
            return dataclasses.replace(answer, about=(method, target))
        headers = identity_headers(result)
        if self.path_prefix is None:
            return Answer(
                204, headers=tuple(headers), keep_alive=True, who=label(result), about=(method, target), key=result.fingerprint
            )
        # Envoy removes what this lists from the request it forwards (external_auth.proto,
        # OkHttpResponse.headers_to_remove): the signature, and for an unsigned health check
        # (no X-Ollama-Key of ours to override it) a client's own X-Ollama-Key.
        removed = "authorization" if result.fingerprint else "authorization, x-ollama-key"
        headers.append(("x-envoy-auth-headers-to-remove", removed))
        return Answer(
            200,
            headers=tuple(headers),
            keep_alive=True,
            who=label(result),
            about=(method, target),
            body=b"",
            key=result.fingerprint,
        )


def parse_trusted_fronts(text: str) -> tuple:
    """``--trusted-front CIDR[,CIDR]``: the addresses of the front servers whose
    ``X-Forwarded-For`` is believed (InputError otherwise)."""
    import ipaddress

    from ..errors import InputError

    networks = []
    for item in text.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise InputError(
                f"--trusted-front {printable(item)[:60]!r} is not an IP address or CIDR range (e.g. 127.0.0.1/32,10.0.0.0/8)"
            ) from None
    return tuple(networks)


def front_reported_address(head: Head, trusted: Iterable[IPNetwork]) -> str:
    """The client's address as a trusted front server reports it, else "".

    Only when the auth request itself comes from a trusted front (``head.peer``) is
    ``X-Forwarded-For`` read, and then only its last entry: the address the front
    saw, which nginx appends with ``$proxy_add_x_forwarded_for`` (and Caddy's
    forward_auth and Traefik's ForwardAuth set); entries before it are the client's
    own claims. A front that passes the client's header unchanged must not be named.
    """
    import ipaddress

    if not trusted or not head.peer:
        return ""
    try:
        peer = ipaddress.ip_address(head.peer.split("%", 1)[0])
    except ValueError:
        return ""
    if not any(peer in network for network in trusted):
        return ""
    values = head.get_all("x-forwarded-for")
    if not values:
        return ""
    last = values[-1].split(",")[-1].strip()
    try:
        address = ipaddress.ip_address(last)
    except ValueError:
        return ""  # a port, brackets or a name: not the address form a front writes
    if address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)

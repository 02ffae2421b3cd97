"""``--auth-only``: the request a front server asks the gate about.

A front server (nginx ``auth_request``, ingress-nginx, Caddy ``forward_auth``,
Traefik ``ForwardAuth``) describes the original request in headers it sets, and
passes the client's own headers along; Envoy's ext_authz HTTP service makes the
original request line the auth request's own, after a path prefix. This module
finds the (method, target) to verify, and the one ``Authorization`` value, or
refuses (400); :func:`verify.verify` then checks them like any request.
"""

from .target import path_problem
from .verify import Refused

# Each family: the method's header, then the headers that may carry the target.
# A front server sets its own family from the real request; every one of these
# names can also arrive from the client, because nginx, ingress-nginx, Caddy and
# Traefik all pass the client's headers to the auth request.
_FAMILIES = (
    # nginx auth_request (this README); ingress-nginx's external auth
    # (rootfs/etc/nginx/template/nginx.tmpl, the `location = {{ $authPath }}` block):
    # X-Original-URL ($scheme://$http_host$request_uri) and X-Original-Method always,
    # X-Original-URI only with the auth-method annotation.
    ("x-original-method", ("x-original-uri", "x-original-url")),
    ("x-forwarded-method", ("x-forwarded-uri",)),  # Caddy forward_auth, Traefik ForwardAuth
)
_ABSOLUTE = frozenset({"x-original-url"})
_WATCHED = {name for method, targets in _FAMILIES for name in (method, *targets)} | {"authorization"}


def _collect(headers: list[tuple[str, str]]) -> dict[str, str] | Refused:
    seen: dict[str, str] = {}
    for name, value in headers:
        if not isinstance(name, str) or not name.isascii():
            continue
        lowered = name.lower()
        if lowered not in _WATCHED:
            continue
        if lowered in seen:
            return Refused(400, f"the header {lowered} appears more than once")
        seen[lowered] = value.strip(" \t") if isinstance(value, str) else ""
    return seen


def _url_target(url: str) -> str | None:
    """The request target inside ingress-nginx's ``$scheme://$http_host$request_uri``.

    nginx refuses a Host holding ``/`` (``ngx_http_validate_host``), so the first
    ``/`` after ``://`` starts ``$request_uri``; whatever the host holds (``?``,
    ``#``, ``@``) cannot move it. None when the value is not that shape.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return None
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else None


def forwarded_request(headers: list[tuple[str, str]]) -> tuple[str, str] | Refused:
    """(method, target) of the request a front server asks about (``--auth-only``).

    nginx sends ``X-Original-Method``/``X-Original-URI``; ingress-nginx
    ``X-Original-Method``/``X-Original-URL`` (an absolute URL), and
    ``X-Original-URI`` as well under its ``auth-method`` annotation; Caddy and
    Traefik send ``X-Forwarded-Method``/``X-Forwarded-Uri``. All of them also
    pass the client's own headers to the auth request, so any of these names can
    be the client's. The front server's own names are always there (it replaces
    a client's copy), so the rule is that everything present must agree: a
    family that is present needs its method and a target, every target it
    carries must name the same request, two families must agree exactly, and a
    name that appears twice is refused (400). A client's copy can then only
    refuse, never pick the request: a client-sent ``X-Original-URI`` beside
    ingress-nginx's ``X-Original-URL`` is a disagreement, not a completed pair.
    The values are checked later by :func:`verify`.
    """
    seen = _collect(headers)
    if isinstance(seen, Refused):
        return seen
    found = []
    for method_name, target_names in _FAMILIES:
        present = [name for name in target_names if name in seen]
        if method_name not in seen and not present:
            continue
        if method_name not in seen:
            return Refused(400, f"the front server sent {present[0]} without {method_name}")
        if not present:
            return Refused(400, f"the front server sent {method_name} without {' or '.join(target_names)}")
        targets = set()
        for name in present:
            target = _url_target(seen[name]) if name in _ABSOLUTE else seen[name]
            if target is None:
                return Refused(400, f"the header {name} is not an http(s) URL with a path")
            targets.add(target)
        if len(targets) > 1:
            return Refused(400, f"the headers {' and '.join(present)} disagree about the request")
        found.append((seen[method_name], targets.pop()))
    if not found:
        return Refused(
            400,
            "no X-Original-Method with X-Original-URI or X-Original-URL (nginx, ingress-nginx) and no "
            "X-Forwarded-Method/X-Forwarded-Uri (Caddy, Traefik): configure the front server as the README shows",
        )
    if len(found) == 2 and found[0] != found[1]:
        return Refused(400, "the X-Original-* and X-Forwarded-* headers disagree about the request")
    return found[0]


def path_prefix_problem(prefix: str) -> str | None:
    """None when ``prefix`` can be ``--path-prefix`` (``/_gate``, ``/auth/ollama``); else why."""
    if not prefix.startswith("/") or prefix.endswith("/") or "?" in prefix:
        return "it must start with / and end without / or a query (e.g. /_gate)"
    return path_problem(prefix)


def prefixed_request(method: str, target: str, prefix: str) -> tuple[str, str] | Refused:
    """(method, target) of the request Envoy asks about (``--auth-only --path-prefix``).

    Envoy's ext_authz HTTP service (and the Gateway API's ExternalAuth, which
    Envoy Gateway builds on it) sends the auth request with the client's own
    method and ``path_prefix`` + the client's ``:path`` as its request line
    (``ext_authz.proto`` HttpService.path_prefix; ``ext_authz_http_impl.cc``
    ``RawHttpClientImpl::check``: ``absl::StrCat(config_->pathPrefix(),
    header.second)``). So the method is the request's own, and the target is
    what follows the prefix; a target outside the prefix is refused (400).
    No header is read for the method or target here.
    """
    if not target.startswith(prefix + "/"):
        return Refused(400, f"this gate answers auth requests under {prefix}/ only (--path-prefix)")
    return method, target[len(prefix) :]


def authorization_header(headers: list[tuple[str, str]]) -> str | Refused | None:
    """The one ``Authorization`` value, None when absent, Refused (400) when repeated."""
    seen = _collect(headers)
    if isinstance(seen, Refused):
        return seen
    return seen.get("authorization")

"""Where a credential may go: every such decision, once, as a pure function.

Each function takes parsed URLs (``protocol.URL``) and raises
:class:`~credential_helper.errors.RealmRefusedError` (exit 2) or returns. Every
caller (``get``, ``sign``, ``whoami``, the Python API and the HTTP-library
adapters) goes through these, so a test of a rule tests every caller at once.
No I/O, no clock, no environment reads: callers pass what they found.
"""

from __future__ import annotations

from .errors import InputError, RealmRefusedError
from .protocol import URL, encode_query, parse_query, parse_url

# Hosts that may receive a signature when the caller cannot say which host sent
# the challenge: Ollama's own registry and API hosts (and loopback, below).
KNOWN_REALM_HOSTS = frozenset({"ollama.com", "registry.ollama.ai"})
# Ollama's default cloud base (server/cloud_proxy.go defaultCloudProxyBaseURL).
DEFAULT_CLOUD_BASE = "https://ollama.com"


def is_loopback(hostname: str) -> bool:
    """THE loopback rule: who may get a credential over http, and who never uses a proxy.

    Decided without DNS, and used both by ``check_cleartext`` and by
    ``proxy_env.use_proxy``, so that a host that may receive a signature in clear
    text is exactly a host that is reached directly: a scheme-2 signature names
    neither host nor body, and one that reached an HTTP proxy could be replayed.

    - ``localhost``, any case, and nothing else: not ``localhost.`` (a resolver
      may send the fully qualified name to DNS), not ``evillocalhost``;
    - 127.0.0.0/8 in canonical dotted decimal only: four octets, each ``0`` or
      1-3 digits without a leading zero, each at most 255. ``127.000.000.001``,
      ``127.1``, ``0x7f.0.0.1`` and ``2130706433`` are not loopback (Go's
      net.ParseIP and Python's ipaddress refuse them, while the C resolver reads
      some of them as octal or hex, and passes ``127.0.0.099`` to DNS);
    - ``::1``, in any of its spellings, without a zone.
    """
    name = hostname.lower()
    if name == "localhost":
        return True
    octets = name.split(".")
    if len(octets) == 4 and all(_canonical_octet(o) for o in octets):
        return octets[0] == "127"
    if ":" in name and "%" not in name:
        import ipaddress  # only for IPv6 literals; kept off the common path

        try:
            return ipaddress.IPv6Address(name) == ipaddress.IPv6Address("::1")
        except ValueError:
            return False
    return False


def loopback_names(host: str) -> tuple[str, ...]:
    """THE names of a loopback address a server binds: what a client may send as
    ``Host`` (without the port, lower case, IPv6 in brackets), the first being
    the one to print and to bind. Empty when ``host`` is not loopback (see
    :func:`is_loopback`).

    ``proxy --listen`` and ``--print-env`` (``serve/commands.parse_listen``) and
    the proxy's Host check (``serve/sign.own_hosts``) all take their names from
    here, so the URL it prints is always one it answers to. A DNS name other
    than ``localhost`` is never one: a web page that rebinds its own name to
    127.0.0.1 sends that name (Ollama checks Host for the same reason,
    server/routes.go allowedHost). ``localhost`` names 127.0.0.1 and ::1, which
    it resolves to (RFC 6761 6.3); 127.0.0.2 is reached by its number only.
    """
    if not is_loopback(host):
        return ()
    name = host.lower()
    if name == "localhost" or name == "127.0.0.1":
        return ("127.0.0.1", "localhost")
    if ":" in name:  # any spelling of ::1 (is_loopback checked it)
        return ("[::1]", "localhost")
    return (name,)


def _canonical_octet(text: str) -> bool:
    """One dotted-decimal octet as Go's net.ParseIP accepts it (no leading zero)."""
    return 0 < len(text) <= 3 and text.isascii() and text.isdigit() and (text == "0" or text[0] != "0") and int(text) <= 255


def check_cleartext(url: URL, what: str) -> None:
    """https, or http only to loopback: a signature or token seen in clear text
    can be replayed (a scheme-2 signature does not even name the host)."""
    if url.scheme != "https" and not is_loopback(url.hostname):
        raise RealmRefusedError(
            f"refusing to send {what} to {url.scheme}://{url.host}: it must use https (http is allowed only to loopback)"
        )


def check_realm(realm: URL, host: str | None) -> None:
    """Refuse to send a signature where Ollama would not, before the key is read.

    - https, or http only to loopback;
    - when the host that sent the challenge is known, the realm's host[:port] must
      equal it exactly (server/auth.go, the 2026 cross-origin check);
    - otherwise the realm must be ollama.com, registry.ollama.ai or loopback;
    - the realm's query must not outlast ``ts`` (see check_realm_query).
    """
    check_cleartext(realm, "a signature")
    check_realm_query(realm)
    if host is not None:
        if realm.host != host:
            raise RealmRefusedError(
                f"refusing to send a signature to realm host {realm.host!r}: "
                f"the challenge came from {host!r} and the two must be equal"
            )
        return
    if realm.hostname.lower() not in KNOWN_REALM_HOSTS and not is_loopback(realm.hostname):
        raise RealmRefusedError(
            f"refusing to send a signature to realm host {realm.host!r} without "
            "knowing who sent the challenge: pass --host HOST (the host[:port] "
            "of the request that got the 401)"
        )


def check_realm_query(realm: URL) -> None:
    """Hardening beyond Ollama: the signed token URL must end in ``ts=<digits>``.

    The exchange signs ``GET,<realm>?...&ts=T&...,<digest>`` with the query keys
    sorted (url.Values.Encode). A realm query key that sorts after ``ts`` (say
    ``zzz=``) would swallow the rest of the string as one query value, and a
    server verifying scheme 2 over an absolute request target could then read
    the registry signature as ``GET /path``. Real realms have no query.
    """
    for key in parse_query(realm.raw_query):
        if key.encode("utf-8", "surrogateescape") > b"ts":
            raise RealmRefusedError(
                f"refusing the realm {realm.host}{realm.escaped_path}: its query key "
                f"{encode_query({key: ['']})[:-1]!r} would follow ts in the signed string"
            )


def may_receive_api_key(url: URL) -> bool:
    """OLLAMA_API_KEY is an ollama.com credential: ollama.com, registry.ollama.ai,
    a whole-label ``*.ollama.com`` name, or loopback; never another host.

    Unlike a signature, an API key is not bound to one request: handing it to a
    third-party realm would give that party the account.
    """
    name = url.hostname.lower().rstrip(".")
    return name in KNOWN_REALM_HOSTS or name.endswith(".ollama.com") or is_loopback(name)


def check_api_key_destination(url: URL) -> None:
    check_cleartext(url, "OLLAMA_API_KEY")
    if not may_receive_api_key(url):
        raise RealmRefusedError(
            f"no key file, and OLLAMA_API_KEY is an ollama.com credential: refusing to "
            f"hand it out for {url.host} (create a key with 'ollama-credential-helper key --generate')"
        )


def origin(scheme: str, hostname: str, port: int | None) -> tuple[str, str, int]:
    """(scheme, host name, port) with the scheme's default port filled in, lower-cased:
    how a request's destination is compared with the API hosts."""
    scheme = scheme.lower()
    name = hostname.lower().strip("[]").rstrip(".")
    return scheme, name, port if port is not None else (443 if scheme == "https" else 80)


def url_origin(url: URL) -> tuple[str, str, int]:
    return origin(url.scheme, url.hostname, url.port)


def cloud_base_url(value: str | None, source: str = "OLLAMA_CLOUD_BASE_URL") -> URL:
    """The API base under Ollama's resolveCloudProxyBaseURL rules (server/cloud_proxy.go).

    ``value`` is $OLLAMA_CLOUD_BASE_URL (empty or None: https://ollama.com), or
    what ``source`` names (``--upstream``, ``api_base``): every message names where
    the URL came from. A scheme and host only (a trailing '/' is allowed), https
    unless loopback.
    """
    text = (value or "").strip() or DEFAULT_CLOUD_BASE
    base = parse_url(text, what=source)
    check_cleartext(base, f"signed requests ({source})")
    if base.path not in ("", "/") or base.raw_query:
        raise InputError(f"{source} must be a scheme and host only, without a path or query")
    return URL(base.scheme, base.host, "", "")


# The proxy's local access tokens start with this (serve/sign.py makes them):
# recognisable, so that one exported as OLLAMA_API_KEY is never sent anywhere.
LOCAL_TOKEN_PREFIX = "och-"


def check_not_local_token(api_key: str) -> None:
    """OLLAMA_API_KEY must be an ollama.com key, never the proxy's local token
    (``proxy --print-env`` exports it as OLLAMA_API_KEY for the proxy's clients)."""
    if api_key.startswith(LOCAL_TOKEN_PREFIX):
        from .errors import IdentityError

        raise IdentityError(
            "OLLAMA_API_KEY holds the local access token of ollama-credential-helper's proxy (from --print-env), "
            "not an ollama.com key: it is for clients of the proxy only; unset OLLAMA_API_KEY here"
        )


def shared_server_warning(url: URL, default_identity: bool) -> str | None:
    """The warning for signing with the machine's default key toward a host that is
    not ollama.com (a shared server behind a gate), or None.

    A scheme-2 signature names neither host nor body: whoever receives one can
    replay it at ollama.com, as the key's account, while its ts is fresh.
    """
    if not default_identity or url.hostname.lower().rstrip(".") == "ollama.com":
        return None
    return (
        f"signing with your default key toward {url.host}: whoever runs it can replay each signature at "
        "ollama.com as you (same method and path, any body) while its ts is fresh; use a second key for "
        "shared servers (identity=/--identity, made with 'ollama-credential-helper key --generate --identity PATH')"
    )

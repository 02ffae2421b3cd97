"""Which proxy an outbound connection uses: Go's http.ProxyFromEnvironment, exactly.

Ollama is a Go program, so behind a corporate proxy it follows
golang.org/x/net/http/httpproxy (FromEnvironment, ProxyFunc, useProxy): the
helper follows the same rules, so that it works wherever Ollama does.

- ``HTTPS_PROXY`` (else ``https_proxy``) for https URLs, ``HTTP_PROXY`` (else
  ``http_proxy``) for http URLs; the upper-case name wins when both are set, and
  an https URL never falls back to ``HTTP_PROXY``.
- ``host:port`` without a scheme means ``http://host:port``.
- ``HTTP_PROXY`` is refused when ``REQUEST_METHOD`` is set (a CGI environment,
  where a client can set it through a ``Proxy:`` header).
- loopback never uses a proxy, under ``policy.is_loopback``: the same rule
  that allows http, so a credential sent in clear text never reaches a proxy.
- ``NO_PROXY`` (else ``no_proxy``): comma-separated; ``*`` matches everything;
  an IP, an IP with a port or a CIDR prefix matches IP hosts; ``example.com``
  matches it and its subdomains, ``.example.com`` (or ``*.example.com``) only
  subdomains; an entry may carry a ``:port``.

Pure: the caller passes the environment. Only http:// proxies are supported
(CONNECT for https URLs, the absolute form for http URLs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from .errors import NetworkError
from .policy import is_loopback
from .protocol import URL


class Proxy:
    """A proxy to connect through; ``str()`` never shows its credentials."""

    __slots__ = ("host", "port", "username", "password", "variable")

    def __init__(self, host: str, port: int, username: str | None, password: str | None, variable: str) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.variable = variable  # which environment variable named it

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    __repr__ = __str__

    def authorization(self) -> str | None:
        """``Proxy-Authorization`` for user info in the proxy URL (Basic, as Go sends it)."""
        if self.username is None:
            return None
        import base64

        pair = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def proxy_secrets(proxy: Proxy | None) -> tuple[str, ...]:
    """What must never be shown of ``proxy``'s credentials, for ``sanitize.redact``:
    the ``Proxy-Authorization`` value, the ``user:password`` pair and the password.

    The proxy engine passes these with its other secrets when it builds a message
    from anything the upstream proxy said (a 407 reason can echo the header).
    """
    if proxy is None or proxy.username is None:
        return ()
    password = proxy.password or ""
    return tuple(s for s in (proxy.authorization() or "", f"{proxy.username}:{password}", password) if s)


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")


def environment_secrets(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``proxy_secrets`` for every proxy variable set, whichever a request would use.

    A value that does not parse still has its user info (the text between
    ``://`` and the last ``@``) hidden, raw and %-decoded.
    """
    found: list[str] = []
    for name in PROXY_VARIABLES:
        value = environ.get(name, "").strip()
        if not value:
            continue
        try:
            found.extend(proxy_secrets(parse_proxy(value, name)))
        except NetworkError:
            pass
        userinfo = value.split("://", 1)[-1].rpartition("@")[0]
        if userinfo:
            found.extend((userinfo, unquote(userinfo)))
    return tuple(found)


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str]:
    for name in names:
        value = environ.get(name, "")
        if value:
            return value, name
    return "", ""


def proxy_for(url: URL, environ: Mapping[str, str]) -> Proxy | None:
    """The proxy for ``url`` under the environment, or None for a direct connection."""
    if url.scheme == "https":
        value, variable = _first(environ, "HTTPS_PROXY", "https_proxy")
    else:
        value, variable = _first(environ, "HTTP_PROXY", "http_proxy")
        if value and environ.get("REQUEST_METHOD"):
            raise NetworkError("refusing to use HTTP_PROXY in a CGI environment (REQUEST_METHOD is set)")
    if not value or not use_proxy(url.hostname, url.port, _first(environ, "NO_PROXY", "no_proxy")[0]):
        return None
    return parse_proxy(value, variable)


def parse_proxy(value: str, variable: str) -> Proxy:
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise NetworkError(f"{variable} is not a valid proxy address") from None
    if parts.scheme.lower() != "http":
        raise NetworkError(f"{variable} names a {parts.scheme}:// proxy; only http:// proxies are supported")
    if not host:
        raise NetworkError(f"{variable} has no proxy host")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Proxy(host, port if port is not None else 80, username, password, variable)


def use_proxy(hostname: str, port: int, no_proxy: str) -> bool:
    """httpproxy's useProxy: False for loopback and for hosts NO_PROXY names."""
    host = hostname.lower().strip("[]")
    if is_loopback(host):
        return False
    ip = _ip(host)
    port_text = str(port)
    for entry in no_proxy.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return False
        if "/" in entry:  # a CIDR prefix
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                network = None
            if network is not None:
                if ip is not None and ip.version == network.version and ip in network:
                    return False
                continue
        entry_host, entry_port = _split_host_port(entry)
        if not entry_host:
            continue
        entry_ip = _ip(entry_host)
        if entry_ip is not None:
            if ip is not None and ip == entry_ip and entry_port in ("", port_text):
                return False
            continue
        if entry_host.startswith("*."):
            entry_host = entry_host[1:]
        match_host = not entry_host.startswith(".")
        suffix = entry_host if not match_host else "." + entry_host
        if (host.endswith(suffix) or (match_host and host == suffix[1:])) and entry_port in ("", port_text):
            return False
    return True


def _split_host_port(entry: str) -> tuple[str, str]:
    """net.SplitHostPort where it succeeds, else the whole entry as a host."""
    if entry.startswith("["):
        close = entry.find("]")
        if close > 0 and entry[close + 1 : close + 2] == ":" and entry[close + 2 :].isdigit():
            return entry[1:close], entry[close + 2 :]
        return entry.strip("[]"), ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, port
    return entry, ""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None

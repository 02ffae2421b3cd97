"""One HTTP request, sent exactly as built, bounded in time and size.

The only module that imports urllib3. It sends the request target and Host header
byte for byte as the protocol module produced them (a connection pool would
re-encode the target), never follows a redirect, verifies TLS against the
operating system's trust store (``tls_context``: the Keychain on macOS, the
Windows certificate store, OpenSSL's store on Linux; SSL_CERT_FILE wins when
set), reads at most
``max_body`` bytes, and enforces one deadline over connect, send and receive.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import BaseHTTPResponse

from . import __version__, system
from .errors import NetworkError
from .protocol import URL
from .proxy_env import proxy_for
from .response import Response
from .sanitize import server_text

MAX_BODY_BYTES = 1024 * 1024
USER_AGENT = f"ollama-credential-helper/{__version__}"


def send(
    method: str,
    url: URL,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
    max_body: int = MAX_BODY_BYTES,
    host_header: str | None = None,
) -> Response:
    """Send one request; raise NetworkError for anything but an HTTP answer.

    ``host_header`` defaults to the URL's authority exactly as written, which is
    what Go's client sends (an explicit default port included).
    """
    deadline = time.monotonic() + timeout
    all_headers = {
        "Host": host_header if host_header is not None else url.host,
        "User-Agent": USER_AGENT,
        # Refuse compression: a small gzip body could expand past any limit.
        "Accept-Encoding": "identity",
        "Accept": "application/json",
    }
    all_headers.update(headers or {})
    if body is not None:
        all_headers.setdefault("Content-Length", str(len(body)))
    where = f"{url.host}"
    secrets = tuple(value for name, value in all_headers.items() if name.lower() == "authorization")
    context = tls_context() if url.scheme == "https" else None
    proxy = proxy_for(url, os.environ)  # Go's http.ProxyFromEnvironment rules
    target = url.request_target

    def connection(host: str, port: int | None) -> HTTPConnection:
        if context is not None:
            return HTTPSConnection(host, port, timeout=timeout, ssl_context=context, cert_reqs="CERT_REQUIRED")
        return HTTPConnection(host, port, timeout=timeout)

    if proxy is None:
        conn = connection(url.hostname, url.port)
    else:
        where = f"{url.host} (through the proxy {proxy} from {proxy.variable})"
        proxy_authorization = proxy.authorization()
        if proxy_authorization:
            secrets += (proxy_authorization, proxy.password or "")
        conn = connection(proxy.host, proxy.port)
        if url.scheme == "https":
            # CONNECT, then TLS to the origin inside the tunnel, verified end to end.
            tunnel_headers = {"Proxy-Authorization": proxy_authorization} if proxy_authorization else None
            conn.set_tunnel(url.hostname, url.port, headers=tunnel_headers)
        else:
            target = f"http://{url.host}{url.request_target}"  # the absolute form a proxy needs
            if proxy_authorization:
                all_headers["Proxy-Authorization"] = proxy_authorization
    # A hard deadline: a server that drips bytes slowly would otherwise reset the
    # socket timeout on every byte. Closing the socket ends any blocked call.
    fired = threading.Event()
    held: list[socket.socket] = []  # the socket, once connected: http.client lets go of it (below)
    watchdog = threading.Timer(timeout, _abort, args=(conn, held, fired))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request(method, target, body=body, headers=all_headers, preload_content=False, decode_content=False)
        if conn.sock is not None:
            # An answer delimited by the connection's close makes http.client drop
            # conn.sock and read through the response's own file: keep the socket
            # so the deadline can still cut a body dripped until close.
            held.append(conn.sock)
        response = conn.getresponse()
        status = response.status
        reason = server_text(response.reason or "", secrets, limit=60)
        response_headers: dict[str, list[str]] = {}
        for name, value in response.headers.items():
            response_headers.setdefault(name.lower(), []).append(value)
        if 300 <= status < 400:
            # Never follow: the signature would go wherever Location points.
            # Cleaned before the host is cut out, so no piece of an echoed secret survives.
            location = server_text(response.headers.get("location", ""), secrets, limit=None)
            location_host = server_text(_location_host(location), limit=80)
            raise NetworkError(
                f"{where} answered {status} {reason} (a redirect{location_host}); redirects are never followed with credentials",
                status,
            )
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            raise NetworkError(
                f"{where} sent a response of {int(length)} bytes, over the {max_body}-byte limit",
                status,
            )
        data = _read_bounded(response, max_body, deadline, where, status)
        if fired.is_set():  # the body ended because the watchdog cut it short
            raise TimeoutError("deadline")
        return Response(status, response.reason or "", response_headers, data, secrets)
    except NetworkError:
        raise
    except Exception as exc:  # urllib3, ssl, socket and http.client errors
        message, kind = (None, "timeout") if fired.is_set() else diagnose(exc, where)
        if message is None:
            message = f"timed out after {timeout:.3g}s talking to {where}"
        fix = FIXES["proxy"] if proxy is not None and kind in ("refused", "other") else FIXES[kind]
        # Exception texts quote what the server sent (a malformed status line).
        raise NetworkError(server_text(message, secrets, limit=300), fix=fix) from None
    finally:
        watchdog.cancel()
        conn.close()


def tls_context() -> ssl.SSLContext:
    """The one TLS client context for every outbound connection (get, the URL
    probe, whoami, doctor, and the proxy's upstream).

    The operating system's trust store through ``truststore`` (as pip does since
    24.2): the Keychain and its corporate CAs on macOS, where python.org builds
    ship no CA bundle; the Windows certificate store; on Linux OpenSSL's store,
    which SSL_CERT_DIR can point elsewhere. When SSL_CERT_FILE is set it wins on
    every system: OpenSSL's store exactly as before (that file, and SSL_CERT_DIR
    or OpenSSL's default directory), no system store. Hostname checking and
    certificate verification are on in both. Imported lazily: truststore loads
    the platform's verifier, which a cache hit never needs.
    """
    check_ca_file()
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context()
    import truststore

    return truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def check_ca_file() -> None:
    """OpenSSL reads SSL_CERT_FILE with a blocking open: a FIFO there would hang
    past any deadline. Anything but a regular file is refused up front, opened
    as every file is (system.open_file: without blocking, checked by fstat)."""
    path = os.environ.get("SSL_CERT_FILE")
    if not path:
        return
    try:
        fd, _ = system.open_file(path)
    except system.RefusedFile:
        raise NetworkError(f"SSL_CERT_FILE={path!r} is not a regular file; point it at a PEM bundle") from None
    except OSError:
        return  # missing or unreadable: OpenSSL ignores it, and verification fails clearly
    os.close(fd)


def _read_bounded(response: BaseHTTPResponse, max_body: int, deadline: float, where: str, status: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() >= deadline:
            raise TimeoutError("deadline")
        chunk = response.read(65536, decode_content=False)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_body:
            raise NetworkError(f"{where} sent a response over the {max_body}-byte limit", status)
        chunks.append(chunk)


def _abort(conn: HTTPConnection, held: list[socket.socket], fired: threading.Event) -> None:
    fired.set()
    for sock in [getattr(conn, "sock", None), *held]:
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _location_host(location: str) -> str:
    if "://" in location:
        return " to " + location.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    return ""


# What to do about each kind of failure (NetworkError.fix; doctor shows it).
FIXES = {
    "dns": "check DNS; behind a proxy set HTTPS_PROXY (and NO_PROXY for hosts to reach directly)",
    "tls": "for a private CA or a TLS-inspecting proxy: SSL_CERT_FILE=/path/to/ca.pem",
    "proxy": "check HTTPS_PROXY / HTTP_PROXY (host, port, credentials) and NO_PROXY",
    "timeout": "check the network or firewall; behind a proxy set HTTPS_PROXY; or rerun with a larger --timeout",
    "refused": "check the network or firewall; behind a proxy set HTTPS_PROXY",
    "other": "check the network or firewall; behind a proxy set HTTPS_PROXY",
}


def describe_failure(exc: BaseException, where: str) -> str | None:
    """One line naming the host and the kind of failure, or None for a timeout."""
    return diagnose(exc, where)[0]


def diagnose(exc: BaseException, where: str) -> tuple[str | None, str]:
    """(one line naming the host and the failure, or None for a timeout; its kind, a key of FIXES).

    Never includes a header value. Checked from the most specific cause out:
    urllib3's NewConnectionError subclasses its ConnectTimeoutError, so a refused
    connection must be recognised before anything that looks like a timeout.
    """
    chain = _chain(exc)
    for err in chain:
        if isinstance(err, urllib3.exceptions.NameResolutionError) or isinstance(err, socket.gaierror):
            return f"cannot resolve {where}: DNS lookup failed", "dns"
    tls = tls_failure(exc, where)
    if tls is not None:
        return tls, "tls"
    for err in chain:
        if "Tunnel connection failed" in str(err):
            return f"the proxy refused the tunnel to {where}: {_first_line(err).split('failed: ', 1)[-1]}", "proxy"
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return f"cannot connect to {where}: connection refused (is the server running?)", "refused"
    for err in chain:
        if isinstance(err, (socket.timeout, TimeoutError, urllib3.exceptions.ReadTimeoutError)):
            return None, "timeout"
        if isinstance(err, urllib3.exceptions.ConnectTimeoutError) and not isinstance(err, urllib3.exceptions.NewConnectionError):
            return None, "timeout"
    for err in chain:
        if isinstance(err, (ConnectionError, urllib3.exceptions.ProtocolError)):
            return f"connection to {where} failed: {_first_line(err)}", "other"
    return f"request to {where} failed: {_first_line(exc)}", "other"


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def tls_failure(exc: BaseException, where: str) -> str | None:
    """'TLS failure talking to WHERE: ...' when a TLS error caused ``exc``, else None.

    The one wording for the command line and the adapters (integrations/), whose
    libraries report the same failure as a connection error (ollama-python: "Failed
    to connect to Ollama").
    """
    for err in _chain(exc):
        if isinstance(err, ssl.SSLCertVerificationError):
            detail = err.verify_message or str(err.reason or "certificate not trusted")
            return f"TLS failure talking to {where}: certificate verification failed ({detail})"
        if isinstance(err, (ssl.SSLError, urllib3.exceptions.SSLError)):
            return f"TLS failure talking to {where}: {_first_line(err)}"
        if type(err).__name__ == "CertificateError":
            return f"TLS failure talking to {where}: certificate does not match the host"
    return None


def _first_line(exc: BaseException) -> str:
    # Not shortened here: the caller's sanitiser redacts, then shortens.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

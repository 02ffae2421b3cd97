"""Connections to the one upstream an intermediary forwards to, kept alive in a pool.

Each connection is a socket and an h11 client state machine. h11 knows which
answer belongs to which request (interim ``1xx`` answers included), when a body
ends, and whether the connection may carry another request: a connection goes
back to the pool only when both sides finished their messages cleanly. Its
socket is non-blocking, served by the server's loop (loop.py), which also makes
each connection (only a name lookup runs on a worker thread).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import h11

from .. import protocol, system
from ..errors import NetworkError
from .loop import Task
from .steps import connect, handshake, recv_into, run_blocking, send_all

if TYPE_CHECKING:
    from ..proxy_env import Proxy

CONNECT_TIMEOUT = 10.0
MAX_IDLE_UPSTREAM = 32
MAX_IDLE_SECONDS = 20.0  # servers drop idle connections; do not find out mid-request
MAX_HEAD_BYTES = 64 * 1024  # an upstream's answer head


class Connection:
    __slots__ = ("sock", "h11", "idle_since", "timeout")

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock  # non-blocking
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.idle_since = 0.0
        self.timeout = timeout  # --timeout: a write the upstream does not take

    def send(self, event: h11.Event) -> Task[None]:
        data = self.h11.send(event)
        if data:
            yield from send_all(self.sock, data, self.timeout)

    def quiet(self) -> bool:
        """Nothing arrived while idle: no close, and no stray bytes (an answer to
        nobody must never be read as the answer to the next request)."""
        if self.h11.trailing_data[0] or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return False
        return not system.readable_now(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Upstream:
    """Where requests go: ``url`` (scheme and host), through ``HTTPS_PROXY`` /
    ``HTTP_PROXY`` when Go's rules say so (proxy_env)."""

    def __init__(self, url: protocol.URL, read_timeout: float, environ: Mapping[str, str] | None = None) -> None:
        from ..proxy_env import proxy_for

        self.url = url
        self.read_timeout = read_timeout
        self.via = proxy_for(url, os.environ if environ is None else environ)
        self.context: ssl.SSLContext | None = None
        if url.scheme == "https":
            from ..transport import tls_context

            self.context = tls_context()
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def secrets(self) -> tuple[str, ...]:
        """What to redact from messages about this upstream: the proxy's credentials."""
        from ..proxy_env import proxy_secrets

        return proxy_secrets(self.via)

    def request_target(self, target: str) -> str:
        """The absolute form through an http:// proxy for http URLs (RFC 9112 3.2.2)."""
        if self.via is not None and self.url.scheme == "http":
            return f"http://{self.url.host}{target}"
        return target

    def take(self) -> Task[tuple[Connection, bool]]:
        """(connection, reused): the most recently idle quiet one, else a new one."""
        now = time.monotonic()
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return (yield from self.connect()), False
            if now - conn.idle_since < MAX_IDLE_SECONDS and conn.quiet():
                return conn, True
            conn.close()

    def give_back(self, conn: Connection) -> None:
        """Pool the connection if both messages ended cleanly; otherwise close it."""
        # Bytes after the answer belong to no request: such a connection is never reused.
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and not conn.h11.trailing_data[0]:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            with self._lock:
                if len(self._idle) < MAX_IDLE_UPSTREAM:
                    self._idle.append(conn)
                    return
        conn.close()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def connect(self) -> Task[Connection]:
        """A new connection, made on the loop within CONNECT_TIMEOUT in all: the name
        looked up on a worker thread (an address needs none), then the TCP connect,
        a CONNECT tunnel and the TLS handshake each waited for without blocking (a
        hung upstream holds its own request, never a thread other requests need)."""
        host, port = self.url.hostname, self.url.port or (443 if self.url.scheme == "https" else 80)
        first = (self.via.host, self.via.port) if self.via is not None else (host, port)
        deadline = time.monotonic() + CONNECT_TIMEOUT
        failure: OSError = OSError(f"no address for {first[0]}")
        for family, kind, proto, _, address in (yield from resolve(first[0], first[1], deadline)):
            sock = socket.socket(family, kind, proto)
            try:
                yield from connect(sock, address, deadline)
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:  # refused, unreachable: the next address, as socket.create_connection does
                sock.close()
                failure = exc
                continue
            try:
                # Head and body go out in separate writes: without this, Nagle's
                # algorithm holds the body until the server's delayed ACK (~40 ms).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.context is not None:  # https
                    if self.via is not None:
                        yield from self._tunnel(sock, f"{host}:{port}", self.via, deadline)
                    tls = self.context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                    sock = tls
                    yield from handshake(tls, deadline)
            except BaseException:
                sock.close()
                raise
            return Connection(sock, self.read_timeout)
        raise failure

    def _tunnel(self, sock: socket.socket, authority: str, via: Proxy, deadline: float) -> Task[None]:
        """CONNECT through the http:// proxy ``via`` (RFC 9110 9.3.6), with h11 reading its answer."""
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        headers = [("Host", authority)]
        authorization = via.authorization()
        if authorization:
            headers.append(("Proxy-Authorization", authorization))
        request = conn.send(h11.Request(method="CONNECT", target=authority, headers=headers)) or b""
        buffer = memoryview(bytearray(65536))
        try:
            yield from send_all(sock, request + (conn.send(h11.EndOfMessage()) or b""), max(0.0, deadline - time.monotonic()))
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    # Not shown: the proxy's own bytes can echo its credentials.
                    raise NetworkError(f"the proxy {via} ({via.variable}) sent a malformed answer to CONNECT") from None
                if event is h11.NEED_DATA:
                    read = yield from recv_into(sock, buffer, deadline)
                    conn.receive_data(bytes(buffer[:read]))
                    continue
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    if 200 <= event.status_code < 300 and not conn.trailing_data[0]:
                        return
                    # Its reason phrase is not shown: a proxy can echo the credentials in it.
                    hint = " (check the user and password in the proxy URL)" if event.status_code == 407 else ""
                    raise NetworkError(
                        f"the proxy {via} ({via.variable}) refused the tunnel to {authority} with status {event.status_code}{hint}"
                    )
                raise NetworkError(f"the proxy {via} closed the tunnel to {authority}")
        except TimeoutError:
            raise TimeoutError("the proxy did not answer CONNECT in time") from None


def resolve(host: str, port: int, deadline: float) -> Task[list[tuple[Any, ...]]]:
    """getaddrinfo: at once for an address; on a worker thread for a name (resolving
    blocks), within ``deadline``."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return (yield from run_blocking(lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), deadline))
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)

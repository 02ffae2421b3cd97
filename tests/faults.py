"""Misbehaving servers on loopback, and a throwaway certificate authority.

``ScriptedServer`` is a raw socket server: each connection's request head is
recorded and handed to a script that writes whatever bytes the test wants
(a 5xx, a redirect, an endless body, nothing at all).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class ScriptedServer:
    def __init__(self, script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def realm_challenge(self) -> str:
        return f'Bearer realm="http://{self.host}/token",service="s",scope="repository:x:pull"'

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopped.set()
        # close() alone does not wake a thread blocked in accept() on Linux: the
        # thread (and the listening socket it holds) would outlive the test.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        head = b""
        try:
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.requests.append(head)
            self.script(conn, head)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


def reply(status: str, body: bytes = b"", headers: dict[str, str] | None = None):
    """A script that answers once with a complete response."""

    def script(conn: socket.socket, head: bytes) -> None:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return script


def endless_body(conn: socket.socket, head: bytes) -> None:
    """200 with no length, then bytes until the client hangs up (bounded to 60 s)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    chunk = b"x" * 65536
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conn.sendall(chunk)


def silent(conn: socket.socket, head: bytes) -> None:
    """Accept, read the request, never answer (bounded to 60 s)."""
    time.sleep(60)


def slow_drip(conn: socket.socket, head: bytes) -> None:
    """Headers one byte at a time, each inside any per-read timeout."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b'{"token": "t"}      '
    for byte in response:
        conn.sendall(bytes([byte]))
        time.sleep(0.4)


def drip_until_close(conn: socket.socket, head: bytes) -> None:
    """A complete head, then a body delimited by the connection's close (no
    Content-Length), one byte at a time for up to 10 s: http.client lets go of
    the connection's socket once it knows the connection will close."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn.sendall(b" ")
        time.sleep(0.2)


class CertificateAuthority:
    """A private CA that issues leaf certificates for loopback test servers."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ollama-credential-helper test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, names: list[str], ips: list[str]):
        import ssl

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (names or ips)[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = self.directory / f"leaf-{x509.random_serial_number()}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


class ConnectProxy:
    """A loopback forward proxy that records what passes through it.

    CONNECT host:port opens a tunnel (bytes relayed both ways, TLS untouched);
    an absolute-form request (GET http://host/...) is forwarded as is. Host
    names are resolved through ``names`` (so tests can use names no DNS knows,
    as a real proxy resolves them for its clients). With ``credentials`` set,
    a request without the matching Basic Proxy-Authorization gets 407.
    """

    def __init__(self, names: dict[str, str] | None = None, credentials: tuple[str, str] | None = None) -> None:
        self.names = names or {}
        self.credentials = credentials
        self.requests: list[bytes] = []  # each request head as received
        self.server = ScriptedServer(self._handle)
        self.host = self.server.host

    def __enter__(self) -> ConnectProxy:
        self.server.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.__exit__(*exc_info)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def connects(self) -> list[str]:
        return [h.split(b" ", 2)[1].decode() for h in self.requests if h.startswith(b"CONNECT ")]

    def _authorized(self, head: bytes) -> bool:
        if self.credentials is None:
            return True
        import base64

        expected = base64.b64encode(":".join(self.credentials).encode())
        return b"\r\nproxy-authorization: basic " + expected.lower() in head.lower()

    def _handle(self, conn: socket.socket, head: bytes) -> None:
        request_line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(head.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        if not self._authorized(head):
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        method, target, _ = request_line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((self.names.get(host, host), int(port)), timeout=10)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            leftover = head.split(b"\r\n\r\n", 1)[1]
            if leftover:
                upstream.sendall(leftover)
        else:
            rest = target.split("://", 1)[1]
            authority, _, path = rest.partition("/")
            host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "80")
            upstream = socket.create_connection((self.names.get(host, host), int(port)), timeout=10)
            upstream.sendall(head.replace(target.encode(), b"/" + path.encode(), 1))
        self._relay(conn, upstream)

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> None:
        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while True:
                    data = source.recv(65536)
                    if not data:
                        break
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    sink.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        other = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        other.start()
        pump(client, upstream)
        other.join(timeout=30)
        upstream.close()


class KeepAliveServer:
    """A raw upstream that reads request after request on each connection and
    answers each with whatever bytes ``respond(head, body, index)`` returns
    (``index`` counts requests on that connection from 0; ``None`` closes the
    connection without answering). Records (connection number, head, body)."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.requests: list[tuple[int, bytes, bytes]] = []
        self.connections = 0
        self.inner = ScriptedServer(self._script)

    @property
    def host(self) -> str:
        return self.inner.host

    def __enter__(self) -> KeepAliveServer:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.inner.__exit__(*exc_info)

    def _script(self, conn: socket.socket, head: bytes) -> None:
        self.inner.requests.clear()
        self.connections += 1
        number, index, buffered = self.connections, 0, head
        while True:
            while b"\r\n\r\n" not in buffered:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffered += chunk
            head, _, rest = buffered.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
            body, buffered = rest[:length], rest[length:]
            self.requests.append((number, head, body))
            answer = self.respond(head, body, index)
            if answer is None:
                return
            conn.sendall(answer)
            index += 1

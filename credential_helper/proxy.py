"""``ollama-credential-helper proxy``: a loopback signing proxy to Ollama Cloud.

Any tool that takes a base URL and an API key (OpenAI- and Ollama-compatible
SDKs, editors, agents, curl) points at ``http://127.0.0.1:PORT`` with the local
access token as its key; every request is forwarded to the upstream (ollama.com)
signed with scheme 2 over the exact request target sent, as Ollama's own
``server/cloud_proxy.go`` does, and the answer streams back as it arrives.

Machinery, chosen on purpose: the standard library only (socketserver threads
and http.client), so the proxy adds no dependency. One thread per client
connection streams both ways with no buffering; a semaphore bounds requests in
flight; the request parser is strict (``http11``); upstream connections are kept
alive in a small pool and go through HTTPS_PROXY as Go's client would.
"""


import hmac
import http.client
import json
import os
import secrets
import select
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time

from . import client, policy, protocol
from .cache import open_own_file, private_directory_problem
from .errors import HelperError, IdentityError, InputError
from .http11 import (
    HOP_BY_HOP,
    MAX_CHUNK_LINE,
    MAX_HEAD_BYTES,
    MAX_REQUEST_LINE,
    BadRequest,
    body_framing,
    connection_tokens,
    parse_chunk_size,
    parse_request_head,
)
from .identity import parse_private_key

DEFAULT_PORT = 11470  # not Ollama's 11434
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
TOKEN_FILE = "proxy-token"
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0  # a keep-alive client connection with nothing to say
CLIENT_READ_TIMEOUT = 60.0  # a request body that stops arriving
MAX_IDLE_UPSTREAM = 32
MAX_IDLE_SECONDS = 20.0
MAX_CONNECTIONS = 512
# Never forwarded: hop-by-hop fields, the client's credentials (the local token),
# and anything that would tell the upstream about this machine.
NOT_FORWARDED = HOP_BY_HOP | {"host", "authorization", "x-api-key", "expect", "forwarded", "x-real-ip", "via"}


# --- the local access token ------------------------------------------------------------


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative path
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "ollama-credential-helper")


def token_path() -> str:
    return os.path.join(config_dir(), TOKEN_FILE)


def local_token(create: bool = True) -> str:
    """The proxy's access token: read it, or make it once (0600, O_EXCL)."""
    path = token_path()
    problem = private_directory_problem(os.path.dirname(path), create=create)
    if problem is not None:
        raise IdentityError(f"cannot keep the proxy's access token: {problem}")
    fd = open_own_file(path, os.O_RDONLY)
    if fd is None and os.path.lexists(path):
        raise IdentityError(
            f"{path} is not a private regular file of yours: remove it, or run chmod 600 {path}, and start again"
        )
    if fd is not None:
        try:
            token = os.read(fd, 4096).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if len(token) >= 32 and protocol.is_header_token(token):
            return token
        raise IdentityError(f"{path} does not hold a usable token: remove it and start again")
    token = "och-" + secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        return local_token(create=False)  # another proxy made it first
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    return token


def presented_token(head) -> str | None:
    """The client's local token: ``Authorization: Bearer <t>`` or ``x-api-key: <t>``."""
    value = head.get("authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return head.get("x-api-key")


def env_lines(base: str, token: str | None) -> list[str]:
    """Shell lines that point the common clients at the proxy."""
    key = token or "unused"  # clients insist on some key even when none is checked
    return [
        f"export OPENAI_BASE_URL={base}/v1",
        f"export OPENAI_API_KEY={key}",
        f"export OLLAMA_HOST={base}",
        f"export OLLAMA_API_KEY={key}",
        f"export ANTHROPIC_BASE_URL={base}",
        f"export ANTHROPIC_API_KEY={key}",
    ]


# --- signing -------------------------------------------------------------------------------


class Signer:
    """Scheme 2 for the upstream, the identity loaded once (on first success)."""

    def __init__(self, upstream: protocol.URL, identity_path: str) -> None:
        self.upstream = upstream
        self.identity_path = identity_path
        self._loaded = None
        self._lock = threading.Lock()

    def _credential(self):
        with self._lock:
            if self._loaded is None:
                key_bytes, api_key = client.load_credential(self.identity_path)
                if api_key is not None:
                    policy.check_api_key_destination(self.upstream)
                    self._loaded = ("api_key", api_key)
                else:
                    self._loaded = ("ed25519", parse_private_key(key_bytes, self.identity_path))
            return self._loaded

    def sign(self, method: str, target: str) -> tuple[str, str]:
        """(request target to send upstream, Authorization) for the client's target."""
        url = protocol.parse_url(f"{self.upstream}{target}", what="request URL")
        kind, credential = self._credential()
        if kind == "api_key":
            return url.request_target, f"Bearer {credential}"
        plan, authorization = client.sign_parsed(method, url, credential)
        return plan.url.request_target, authorization


# --- upstream connections --------------------------------------------------------------------


class UpstreamPool:
    """Idle keep-alive connections to the upstream, through HTTPS_PROXY when set."""

    def __init__(self, upstream: protocol.URL, read_timeout: float) -> None:
        from .proxy_env import proxy_for
        from .transport import check_ca_file

        self.upstream = upstream
        self.read_timeout = read_timeout
        self.via = proxy_for(upstream, os.environ)
        self.context = None
        if upstream.scheme == "https":
            check_ca_file()
            self.context = ssl.create_default_context()
        self._idle: list = []  # (connection, when it became idle)
        self._lock = threading.Lock()

    def get(self):
        """(connection, reused): the most recently idle one, unless it idled too long."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since < MAX_IDLE_SECONDS:
                    return conn, True
                conn.close()  # servers drop idle connections; do not find out mid-request
        return self._connect(), False

    def _connect(self):
        host, port = self.upstream.hostname, self.upstream.port
        if self.via is not None:
            host, port = self.via.host, self.via.port
        if self.upstream.scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=CONNECT_TIMEOUT, context=self.context)
            if self.via is not None:
                authorization = self.via.authorization()
                conn.set_tunnel(self.upstream.hostname, self.upstream.port, headers={"Proxy-Authorization": authorization} if authorization else None)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=CONNECT_TIMEOUT)
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        # Headers and body go out in separate writes: without this, Nagle's
        # algorithm holds the body until the server's delayed ACK (~40 ms).
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def put(self, conn) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_UPSTREAM:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


# --- the server ------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client closed its connection; stop, and close the upstream request."""


class ProxyServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    # socketserver's default listen backlog is 5: a burst of clients (an agent
    # opening parallel streams) would overflow it, and the kernel would drop their
    # handshakes into seconds of retransmission. The connection cap is enforced
    # after accept (MAX_CONNECTIONS); the backlog only has to absorb a burst.
    request_queue_size = 128

    def __init__(self, address, *, upstream, signer, token, timeout, max_in_flight, log, verbose) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.upstream = upstream
        self.signer = signer
        self.token = token
        self.pool = UpstreamPool(upstream, timeout)
        self.slots = threading.BoundedSemaphore(max_in_flight)
        self.log = log
        self.verbose = verbose
        self.stopping = threading.Event()
        self.connections = 0
        self.in_flight = 0
        self.counter_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self.counter_lock:
            full = self.connections >= MAX_CONNECTIONS
            if not full:
                self.connections += 1
        if full:
            request.close()
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address) -> None:
        """One line, no traceback: a handler's unexpected error never floods the log."""
        kind = sys.exc_info()[0]
        if kind is not None and not issubclass(kind, OSError):
            self.log(f"internal error ({kind.__name__}) while serving a request; rerun with --verbose and report it")


class _Handler(socketserver.StreamRequestHandler):
    server: ProxyServer
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        with self.server.counter_lock:
            self.server.connections -= 1

    def handle(self) -> None:
        while not self.server.stopping.is_set():
            try:
                lines = self._read_head()
            except (socket.timeout, OSError):
                return
            except BadRequest as exc:
                self._refuse(400, str(exc))
                return
            if lines is None:
                return  # the client closed the connection between requests
            started = time.monotonic()
            try:
                head = parse_request_head(lines)
                framing = body_framing(head)
            except BadRequest as exc:
                self._refuse(400, str(exc), lines[0])
                return
            try:
                keep_alive = self._one_request(head, framing, started)
            except ClientGone:
                return
            if not keep_alive:
                return

    # -- reading the client's request -------------------------------------------------------

    def _read_line(self, limit: int) -> bytes:
        line = self.rfile.readline(limit + 1)
        if len(line) > limit:
            raise BadRequest("a line of the request head is too long")
        if line and not line.endswith(b"\r\n"):
            raise BadRequest("a line ends in a bare LF" if line.endswith(b"\n") else "the request was cut short")
        return line

    def _read_head(self) -> list[bytes] | None:
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        for _ in range(4):  # RFC 9112 2.2: ignore at least one empty line before a request
            if line != b"\r\n":
                break
            line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_REQUEST_LINE:
            raise BadRequest("the request line is too long")
        if not line.endswith(b"\r\n"):
            raise BadRequest("the request line does not end in CRLF")
        lines = [line[:-2]]
        total = len(line)
        self.connection.settimeout(CLIENT_READ_TIMEOUT)
        while True:
            line = self._read_line(MAX_HEAD_BYTES)
            total += len(line)
            if total > MAX_HEAD_BYTES:
                raise BadRequest("the request head is too large")
            if not line:
                raise BadRequest("the request head was cut short")
            if line == b"\r\n":
                return lines
            lines.append(line[:-2])

    def _body_pieces(self, framing: tuple[str, int]):
        """The request body as it arrives: bytes for the upstream's own framing."""
        kind, length = framing
        if kind == "length":
            left = length
            while left:
                data = self.rfile.read1(min(left, 65536)) if hasattr(self.rfile, "read1") else self.rfile.read(min(left, 65536))
                if not data:
                    raise ClientGone()
                left -= len(data)
                yield data
        elif kind == "chunked":
            while True:
                size = parse_chunk_size(self._read_line(MAX_CHUNK_LINE)[:-2])
                if size == 0:
                    break
                left = size
                while left:
                    data = self.rfile.read(min(left, 65536))
                    if not data:
                        raise ClientGone()
                    left -= len(data)
                    yield b"%x\r\n%s\r\n" % (len(data), data)
                if self.rfile.read(2) != b"\r\n":
                    raise BadRequest("a chunk does not end in CRLF")
            trailer_bytes = 0
            while True:  # trailers: read and drop (never forwarded)
                line = self._read_line(MAX_CHUNK_LINE * 8)
                trailer_bytes += len(line)
                if trailer_bytes > MAX_HEAD_BYTES:
                    raise BadRequest("the trailer section is too large")
                if line == b"\r\n":
                    break
            yield b"0\r\n\r\n"

    # -- one request ----------------------------------------------------------------------------

    def _one_request(self, head, framing, started: float) -> bool:
        server = self.server
        path = head.target.split("?", 1)[0]
        if server.token is not None:
            offered = presented_token(head)
            if offered is None or not hmac.compare_digest(offered.encode("latin-1", "replace"), server.token.encode()):
                where = token_path()
                self._refuse(
                    401,
                    "missing or wrong local access token: send it as 'Authorization: Bearer <token>' or "
                    f"'x-api-key: <token>'; it is in {where} ('ollama-credential-helper proxy --print-env' prints it)",
                    head=head,
                )
                return False
        if not server.slots.acquire(blocking=False):
            self._refuse(503, "the proxy is at its concurrency limit; try again shortly", head=head)
            return False
        with server.counter_lock:
            server.in_flight += 1
        try:
            return self._forward(head, framing, path, started)
        finally:
            with server.counter_lock:
                server.in_flight -= 1
            server.slots.release()

    def _forward(self, head, framing, path: str, started: float) -> bool:
        server = self.server
        try:
            target, authorization = server.signer.sign(head.method, head.target)
        except InputError as exc:
            self._refuse(400, str(exc), head=head)
            return False
        except HelperError as exc:  # no usable identity: the CLI's message
            self._refuse(503, str(exc), head=head)
            return False
        dropped = NOT_FORWARDED | connection_tokens(head.headers)
        headers = [(n, v) for n, v in head.headers if n.lower() not in dropped and not n.lower().startswith("x-forwarded-")]
        headers.append(("Host", server.upstream.host))
        headers.append(("Authorization", authorization))
        kind, length = framing
        if kind == "length":
            headers.append(("Content-Length", str(length)))
        elif kind == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        if kind != "none" and (head.get("expect") or "").lower() == "100-continue":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            conn, reused = server.pool.get()
        except (OSError, http.client.HTTPException) as exc:
            return self._upstream_failed(head, path, started, exc, authorization)
        try:
            response = self._send_upstream(conn, head.method, target, headers, framing, reused)
        except BadRequest as exc:
            conn.close()
            self._refuse(400, str(exc), head=head)
            return False
        except ClientGone:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return self._upstream_failed(head, path, started, exc, authorization)
        return self._relay(conn, response, head, path, started)

    def _send_upstream(self, conn, method, target, headers, framing, reused):
        for attempt in (1, 2):
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    conn.putheader(name, value)
                conn.endheaders()
                for piece in self._body_pieces(framing):
                    conn.send(piece)
                return conn.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # A kept-alive connection the upstream had closed: one fresh try,
                # when nothing of the body has been consumed yet.
                if not (reused and attempt == 1 and framing[0] == "none"):
                    raise
                conn.close()
                conn.connect()
                conn.sock.settimeout(self.server.pool.read_timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    def _relay(self, conn, response, head, path: str, started: float) -> bool:
        server = self.server
        status = response.status
        no_body = head.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        length = response.getheader("content-length")
        chunked_upstream = (response.getheader("transfer-encoding") or "").lower().strip() == "chunked"
        keep_alive = head.keep_alive and not server.stopping.is_set()
        dropped = HOP_BY_HOP | connection_tokens(response.getheaders())
        lines = [f"HTTP/1.1 {status} {_reason(response.reason)}"]
        lines += [f"{n}: {v}" for n, v in response.getheaders() if n.lower() not in dropped and n.lower() != "content-length"]
        if no_body:
            framing = "none"
            if length is not None and head.method == "HEAD":
                lines.append(f"Content-Length: {length}")
        elif length is not None and not chunked_upstream:
            framing = "length"
            lines.append(f"Content-Length: {length}")
        elif head.version == "HTTP/1.1":
            framing = "chunked"
            lines.append("Transfer-Encoding: chunked")
        else:
            framing = "close"
            keep_alive = False
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        sent = 0
        watcher = None
        try:
            self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
            if framing != "none":
                if framing in ("chunked", "close"):
                    watcher = _ClientWatch(self.connection, conn)  # a client gone mid-stream ends it promptly
                while True:
                    data = response.read1(65536)
                    if not data:
                        break
                    sent += len(data)
                    self._write(b"%x\r\n%s\r\n" % (len(data), data) if framing == "chunked" else data)
                if framing == "chunked":
                    self._write(b"0\r\n\r\n")
        except ClientGone:
            conn.close()
            self._log(head.method, path, status, sent, started, note="client gone")
            raise
        except (OSError, http.client.HTTPException):
            conn.close()  # the upstream broke off mid-body (or we cut it): the client sees a cut stream
            gone = watcher is not None and watcher.gone
            self._log(head.method, path, status, sent, started, note="client gone" if gone else "upstream broke off")
            return False
        finally:
            if watcher is not None:
                watcher.stop()
        if watcher is not None and watcher.gone:
            conn.close()
            self._log(head.method, path, status, sent, started, note="client gone")
            return False
        response.close()  # read to the end; http.client needs it closed to reuse the connection
        if response.will_close or framing == "close":
            conn.close()
        else:
            server.pool.put(conn)
        self._log(head.method, path, status, sent, started)
        return keep_alive

    # -- answers of our own --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            raise ClientGone() from None

    def _refuse(self, status: int, message: str, request_line: bytes | None = None, *, head=None) -> None:
        body = json.dumps({"error": message}).encode()
        reason = {400: "Bad Request", 401: "Unauthorized", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
        extra = "WWW-Authenticate: Bearer realm=\"ollama-credential-helper proxy\"\r\n" if status == 401 else ""
        try:
            self._write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n".encode() + body
            )
        except ClientGone:
            pass
        method, path = ("-", "-")
        if head is not None:
            method, path = head.method, head.target.split("?", 1)[0]
        elif request_line:
            parts = request_line.decode("latin-1").split(" ")
            method, path = (parts[0][:16], parts[1].split("?", 1)[0][:200]) if len(parts) > 1 else (parts[0][:16], "-")
        self._log(method, path, status, 0, time.monotonic(), note=message if self.server.verbose else None)

    def _upstream_failed(self, head, path: str, started: float, exc: BaseException, authorization: str) -> bool:
        timed_out = isinstance(exc, (socket.timeout, TimeoutError))
        where = self.server.upstream.host
        if timed_out:
            self._refuse(504, f"the upstream {where} did not answer in time", head=head)
        else:
            from .sanitize import server_text
            from .transport import describe_failure

            # Exception texts can quote what the upstream sent (a malformed status line).
            detail = server_text(describe_failure(exc, where) or f"timed out talking to {where}", (authorization,), limit=300)
            self._refuse(502, detail, head=head)
        return False

    def _log(self, method: str, path: str, status: int, size: int, started: float, note: str | None = None) -> None:
        from .sanitize import printable

        milliseconds = (time.monotonic() - started) * 1000
        line = f"{printable(method)} {printable(path)[:200]} {status} {size}B {milliseconds:.0f}ms"
        if note:
            line += f" ({printable(note)[:200]})"
        self.server.log(line)


class _ClientWatch:
    """While a response streams, notice a client that hangs up, and cut the
    upstream request at once instead of at the next chunk."""

    def __init__(self, client_sock: socket.socket, upstream_conn) -> None:
        self.client_sock = client_sock
        self.upstream_conn = upstream_conn
        self.gone = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            try:
                readable, _, _ = select.select([self.client_sock], [], [], 0.2)
                if readable and self.client_sock.recv(1, socket.MSG_PEEK) == b"":
                    self._hang_up()
                    return
            except (OSError, ValueError):
                self._hang_up()
                return
            if readable:
                self._stop.wait(0.25)  # pipelined bytes, not a hang-up: look again later

    def _hang_up(self) -> None:
        self.gone = True
        sock = getattr(self.upstream_conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)


def _reason(text: str) -> str:
    from .sanitize import printable

    return printable(text or "")[:100] or "-"


# --- starting and stopping ---------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """host:port on loopback only: a personal credential must not serve a network."""
    if text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise InputError(f"--listen {text!r} is not host:port (e.g. 127.0.0.1:{DEFAULT_PORT})")
    if not policy.is_loopback(host):
        raise InputError(f"--listen {host}: the proxy listens on loopback only (127.0.0.1, ::1 or localhost)")
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


def serve(*, listen: str, upstream_text: str | None, identity_path: str, require_token: bool, timeout: float,
          max_in_flight: int, grace: float, verbose: bool, ready=None) -> int:
    """Run until SIGINT or SIGTERM; then stop accepting, let requests in flight
    finish for up to ``grace`` seconds, and return 0."""
    address = parse_listen(listen)
    upstream = policy.cloud_base_url(upstream_text)
    token = local_token() if require_token else None
    log_lock = threading.Lock()

    def log(line: str) -> None:
        with log_lock:
            sys.stderr.write(f"{line}\n")
            sys.stderr.flush()

    signer = Signer(upstream, identity_path)
    server = ProxyServer(address, upstream=upstream, signer=signer, token=token, timeout=timeout,
                         max_in_flight=max_in_flight, log=log, verbose=verbose)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    log(f"listening on http://{shown}:{port} (upstream {upstream})")
    if token is None:
        log("warning: --no-local-token: any program on this machine can use your ollama.com account through this proxy")
    try:
        signer._credential()
    except HelperError as exc:
        log(f"warning: {exc} (requests will get 503 until this is fixed)")
    if server.pool.via is not None and verbose:
        log(f"upstream through the proxy {server.pool.via} ({server.pool.via.variable})")

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    # Handlers can be set only from the main thread (tests may serve from another).
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    loop.start()
    if ready is not None:
        ready(server)
    try:
        while not stop.wait(0.2):
            pass
    finally:
        server.stopping.set()
        server.shutdown()  # stop accepting
        deadline = time.monotonic() + grace
        while server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.in_flight:
            log(f"stopping with {server.in_flight} request(s) still in flight after {grace:g}s")
        server.server_close()
        server.pool.close_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("stopped")
    return 0

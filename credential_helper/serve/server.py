"""Listening for an intermediary: accept, the connection cap, requests in flight,
and a graceful stop. Each accepted connection is an engine.ClientConnection on
its own thread."""

import socket
import ssl
import threading
import time
from collections import OrderedDict

from .engine import ClientConnection
from .upstream import Upstream

MAX_CONNECTIONS = 512
LISTEN_BACKLOG = 128  # absorbs a burst of clients; the cap is enforced after accept


class Server:
    def __init__(self, address, policy, *, upstream: Upstream | None, log, timeout: float = 300.0,
                 max_in_flight: int = 128, max_connections: int = MAX_CONNECTIONS, verbose: bool = False,
                 tls_context: ssl.SSLContext | None = None, prepare_socket=None) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if prepare_socket is not None:
            prepare_socket(self.sock)
        self.sock.bind(address)
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()[:2]
        self.policy, self.upstream, self.log = policy, upstream, log
        self.timeout, self.verbose, self.tls_context = timeout, verbose, tls_context
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_in_flight)
        self.stopping = threading.Event()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._open: set = set()
        self._idle: OrderedDict = OrderedDict()  # connections waiting for a request head, oldest first

    # -- accepting ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, peer = self.sock.accept()
            except (socket.timeout, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                time.sleep(0.05)  # out of file descriptors: let others finish
                continue
            sock.settimeout(None)
            # An answer's head and body can leave in separate writes (one per upstream
            # read): without this, Nagle's algorithm holds the second until the client's
            # delayed ACK, about 40 ms on Linux (RFC 1122 4.2.3.4, 4.2.3.2).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = ClientConnection(self, sock)
            with self._lock:
                if len(self._open) >= self.max_connections:
                    victim = next(iter(self._idle), None)
                    if victim is None:
                        sock.close()  # every connection is mid-request: refuse this one
                        continue
                    del self._idle[victim]
                    victim.evict()
                self._open.add(client)
                self._idle[client] = None
            threading.Thread(target=client.run, daemon=True).start()

    def idle(self, client, waiting: bool) -> None:
        with self._lock:
            if waiting:
                self._idle[client] = None
            else:
                self._idle.pop(client, None)

    def closed(self, client) -> None:
        with self._lock:
            self._open.discard(client)
            self._idle.pop(client, None)

    def stop_accepting(self) -> None:
        """Stop accepting; connections waiting for a request close now."""
        self.stopping.set()
        with self._lock:
            idle, self._idle = list(self._idle), OrderedDict()
        for client in idle:
            client.evict()

    def close_listening(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self) -> None:
        self.close_listening()
        if self.upstream is not None:
            self.upstream.close_all()

    def count_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta


def run(server: Server, *, grace: float, log, stop_signals, ready=None, on_reload=None) -> int:
    """Serve until a stop signal; then stop accepting, let requests in flight
    finish within ``grace`` seconds, and return 0. ``SIGHUP`` (where it exists)
    calls ``on_reload`` from this thread, not from the signal handler."""
    import signal

    stop, reload = threading.Event(), threading.Event()
    handlers = {sig: (lambda signum, frame: stop.set()) for sig in stop_signals}
    if on_reload is not None and hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = lambda signum, frame: reload.set()
    # Handlers can be set only from the main thread (tests may serve from another).
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()} if in_main else {}
    loop = threading.Thread(target=server.serve_forever, daemon=True)
    loop.start()
    if ready is not None:
        ready(server)
    try:
        while not stop.wait(0.2):
            if reload.is_set():
                reload.clear()
                on_reload()
    finally:
        server.stop_accepting()
        loop.join(timeout=2)
        # Closed now, not after the grace period: the kernel would otherwise go on
        # accepting connections that nobody serves, and reset them at exit.
        server.close_listening()
        deadline = time.monotonic() + grace
        while server.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.in_flight:
            log(f"stopping with {server.in_flight} request(s) still in flight after {grace:g}s")
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log("stopped")
    return 0

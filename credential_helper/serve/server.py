"""Listening for an intermediary: accept, the connection cap, requests in flight,
and a graceful stop. One thread serves every connection: each accepted one is
an engine.ClientConnection whose ``run`` is a task on the server's loop
(loop.py), which also accepts."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

from .. import system
from ..errors import InputError, ListenError
from . import record
from .engine import ClientConnection
from .limits import Limits
from .loop import Loop, Task, Wait
from .messages import Answer, Forward, Head, NeedBody
from .upstream import Upstream


class Policy(Protocol):
    """What decides each request (sign.SigningPolicy, gate.GatePolicy, gate.AuthOnlyPolicy)."""

    def decide(self, head: Head) -> Forward | Answer | NeedBody: ...


LISTEN_BACKLOG = 128  # absorbs a burst of clients; the cap is enforced after accept
ACCEPT_BURST = 32  # connections taken per wake before the loop serves the others


def listening_socket(address: tuple[str, int], prepare_socket: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A socket bound and listening on ``address``; a failure is one line with its
    exit code (errors.py), never an internal error: a port in use, an address this
    machine does not have, a privileged port, a host name that does not resolve."""
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICSERV)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(
            f"cannot listen on {shown}: {host!r} is not an address or a host name this machine "
            f"can resolve ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if prepare_socket is not None:
            prepare_socket(sock)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(listen_problem(shown, exc)) from None
    return sock


def listen_problem(shown: str, exc: OSError) -> str:
    import errno

    why = {
        errno.EADDRINUSE: "the port is in use by another program (another gate or proxy?): choose another port, "
        "or stop that program (ss -ltnp shows which)",
        errno.EACCES: "permission denied (ports below 1024 need privileges): choose a port from 1024 up",
        errno.EADDRNOTAVAIL: "this machine has no such address: listen on one of its own addresses, or 0.0.0.0",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return f"cannot listen on {shown}: {why}"


class Budget:
    """Bytes held across connections, bounded by ``total``."""

    def __init__(self, total: int) -> None:
        self.total, self.held = total, 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.total:
                return False
            self.held += size
            return True

    def give(self, size: int) -> None:
        with self._lock:
            self.held -= size


class Server:
    policy: Policy  # None at construction when it needs the bound port: set before run()

    def __init__(
        self,
        address: tuple[str, int],
        policy: Policy | None,
        *,
        upstream: Upstream | None,
        log: Callable[[str], None],
        limits: Limits | None = None,
        verbose: bool = False,
        tls_context: ssl.SSLContext | None = None,
        prepare_socket: Callable[[socket.socket], None] | None = None,
        observe: record.Observer | None = None,
        count_usage: bool = False,
    ) -> None:
        self.sock = listening_socket(address, prepare_socket)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        if policy is not None:
            self.policy = policy
        self.upstream, self.log = upstream, log
        # Each request's record goes to one observer: the log line, and metrics when asked for.
        self.observe = observe if observe is not None else record.Logger(log)
        self.count_usage = count_usage  # read token counts from answers (the JSON log, metrics)
        self.flight = _no_flight  # (user, +1/-1) around each relayed request: metrics' in-flight gauge
        self.limits = limits if limits is not None else Limits()  # every bound, handed in (limits.py)
        # Where one select() watches every socket (Windows: 512 at most), two per connection.
        capacity = system.selector_capacity()
        self.connection_cap = self.limits.connections if capacity is None else min(self.limits.connections, capacity // 2 - 8)
        self.loop = Loop(system.selector_class()(), on_error=self._ended)
        self.verbose, self.tls_context = verbose, tls_context
        self.slots = threading.BoundedSemaphore(self.limits.in_flight)
        self.body_budget = Budget(self.limits.held_bodies)  # request bodies held whole for the policy (models=)
        self.stopping = threading.Event()
        self.in_flight = 0
        self._lock = threading.Lock()
        self._open: set[ClientConnection] = set()
        self._idle: OrderedDict[ClientConnection, None] = OrderedDict()  # connections waiting for a request head, oldest first

    # -- accepting ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Accept and serve on this thread until close()."""
        self.loop.run(start=self._start_accepting)

    def _start_accepting(self) -> None:
        # A stop may have come first (and closed the socket from its thread).
        if not self.stopping.is_set() and self.sock.fileno() != -1:
            try:
                self.loop.add_reader(self.sock, self._accept)
            except (ValueError, OSError):
                pass  # closed by a stop between the check and here

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            if self.stopping.is_set():
                self.loop.remove_reader(self.sock)
                return
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                if not self.stopping.is_set():  # out of file descriptors: let others finish
                    self.loop.remove_reader(self.sock)
                    self.loop.spawn(self._accept_later(0.05), self._ended)
                return
            sock.setblocking(False)
            # An answer's head and body can leave in separate writes (one per upstream
            # read): without this, Nagle's algorithm holds the second until the client's
            # delayed ACK, about 40 ms on Linux (RFC 1122 4.2.3.4, 4.2.3.2).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = ClientConnection(self, sock)
            with self._lock:
                if len(self._open) >= self.connection_cap:
                    victim = next(iter(self._idle), None)
                    if victim is None:
                        sock.close()  # every connection is mid-request: refuse this one
                        continue
                    del self._idle[victim]
                    victim.evict()
                self._open.add(client)
                self._idle[client] = None
            self.loop.spawn(client.run(), self._ended)

    def _accept_later(self, seconds: float) -> Task[None]:
        yield Wait(deadline=time.monotonic() + seconds)
        if not self.stopping.is_set():
            self.loop.add_reader(self.sock, self._accept)

    def _ended(self, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, GeneratorExit):  # ClientConnection.run catches the rest
            self.log(f"internal error ({type(error).__name__}) while serving a request; rerun with --verbose and report it")

    def idle(self, client: ClientConnection, waiting: bool) -> None:
        with self._lock:
            if waiting:
                self._idle[client] = None
            else:
                self._idle.pop(client, None)

    def closed(self, client: ClientConnection) -> None:
        with self._lock:
            self._open.discard(client)
            self._idle.pop(client, None)

    def stop_accepting(self) -> None:
        """Stop accepting; connections waiting for a request close now (any thread)."""
        self.stopping.set()
        with self._lock:
            idle, self._idle = list(self._idle), OrderedDict()
        for client in idle:
            client.evict()  # a shutdown(): its task sees the end of the stream
        self.loop.wake()

    def close_listening(self) -> None:
        """Close the listening socket (any thread): the loop stops watching it first."""
        self._in_loop(self._close_listening_now)

    def _close_listening_now(self) -> None:
        self.loop.remove_reader(self.sock)
        try:
            self.sock.close()
        except OSError:
            pass

    def close(self) -> None:
        """Close the listening socket and the upstream's pool, and end the loop:
        connections still open are closed with it."""
        self.close_listening()
        if self.upstream is not None:
            self.upstream.close_all()
        self.loop.stop()
        thread = self.loop.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _in_loop(self, call: Callable[[], None]) -> None:
        """``call`` on the loop's thread while it runs (and wait for it), else here."""
        thread = self.loop.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            done = threading.Event()

            def then() -> None:
                try:
                    call()
                finally:
                    done.set()

            self.loop.call_soon_threadsafe(then)
            if done.wait(2):
                return
        call()

    def count_in_flight(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta


def run(
    server: Server,
    *,
    grace: float,
    log: Callable[[str], None],
    stop_signals: Iterable[int],
    ready: Callable[[Server], None] | None = None,
    on_reload: Callable[[], None] | None = None,
) -> int:
    """Serve until a stop signal; then stop accepting, let requests in flight
    finish within ``grace`` seconds, and return 0. ``SIGHUP`` (where it exists)
    calls ``on_reload`` from this thread, not from the signal handler."""
    import signal

    asked = SignalRequests()
    handlers: dict[int, Callable[[int, object], None]] = dict.fromkeys(stop_signals, asked.stop_handler)
    if on_reload is not None and hasattr(signal, "SIGHUP"):
        handlers[signal.SIGHUP] = asked.reload_handler
    # Handlers can be set only from the main thread (tests may serve from another).
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()} if in_main else {}
    loop = threading.Thread(target=server.serve_forever, daemon=True, name="serve-loop")
    loop.start()
    if ready is not None:
        ready(server)
    try:
        while not asked.stop:
            time.sleep(0.2)  # a signal's handler runs here; the flag is read within 0.2 s
            if asked.reload:
                asked.reload = False
                if on_reload is not None:  # always: reload is set only then
                    on_reload()
    finally:
        server.stop_accepting()
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


class SignalRequests:
    """What the stop and reload signals ask for, as two flags. A handler runs in the
    main thread between any two of its bytecodes, even while that thread holds a
    lock, so it must take none: with ``threading.Event.set`` a second SIGTERM that
    landed inside the first handler's ``set()`` waited forever for the Event's own
    lock (a new user's gate under GNU timeout, which signals the process and its
    group: it never stopped). Setting an attribute takes no lock."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False

    def stop_handler(self, signum: int, frame: object) -> None:
        self.stop = True

    def reload_handler(self, signum: int, frame: object) -> None:
        self.reload = True


def _no_flight(user: str, delta: int) -> None:
    pass

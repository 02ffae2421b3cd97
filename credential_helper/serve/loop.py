"""One thread serves every connection: a selector loop driving each connection
as a generator (issue 21's throughput).

A thread per connection spent more of each request handing the GIL from thread
to thread than serving it: about 16 context switches a request, and the gate's
CPU per request 600 us where its work is about 350 (measured with
``benchmarks/gate_bench.py``; the note of issue 21). Here a connection's code
stays written in order, as before, but each place it would block yields what it
waits for instead:

- ``Wait(read=..., write=..., deadline=...)``: resumed with the set of sockets
  ready, an empty set once ``deadline`` (``time.monotonic()``) has passed;
- ``Blocking(call, deadline, pool)``: ``call()`` runs on a worker thread (what
  cannot be made non-blocking: a name lookup; what would hold the loop too long:
  parsing a large body); resumed with its result, or its exception thrown in;
- ``Turn``: resumed once every other task that is ready has run (a task whose
  sockets never make it wait, steps.fair).

The I/O steps every connection uses (read, write all, connect, a TLS
handshake, a fair turn) are in steps.py, once.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Generator
from typing import Any, TypeVar

T = TypeVar("T")

LOOKUP_WORKERS = 16  # name lookups at once (each bounded by the connect deadline); more wait their turn
CPU_WORKERS = 2  # large bodies parsed at once (the GIL runs one at a time anyway)


class Wait:
    """Wait until one of ``read`` is readable or ``write`` writable, or ``deadline`` passes (None: never)."""

    __slots__ = ("read", "write", "deadline")

    def __init__(
        self, read: Collection[socket.socket] = (), write: Collection[socket.socket] = (), deadline: float | None = None
    ) -> None:
        self.read, self.write, self.deadline = read, write, deadline


class Blocking:
    """Run ``call`` on a worker thread; the task resumes with what it returns or raises,
    or with TimeoutError once ``deadline`` has passed (a late result is dropped).
    ``pool``: "lookup" (name lookups, waiting on the network) or "cpu" (parsing a
    large body): the two never wait for each other's threads."""

    __slots__ = ("call", "deadline", "pool")

    def __init__(self, call: Callable[[], Any], deadline: float | None = None, pool: str = "lookup") -> None:
        self.call, self.deadline, self.pool = call, deadline, pool


class Turn:
    """Let every other task that is ready run once, then go on (see ``fair``)."""

    __slots__ = ()


TURN = Turn()
SLICE = 0.002  # seconds a task may hold the loop without waiting before the others get a turn
_running = threading.local()  # .since: when this thread's loop resumed the task now running


def held_for() -> float:
    """Seconds since this thread's loop resumed the task now running (steps.fair)."""
    return time.monotonic() - _running.since


Step = Wait | Blocking | Turn
Task = Generator[Step, Any, T]


class _Workers:
    """Daemon threads for ``Blocking`` work, started as needed up to ``most``: a stop
    never waits for an upstream connect in progress (concurrent.futures' threads
    are joined at exit)."""

    def __init__(self, most: int) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]] | None]
        self._queue = queue.SimpleQueue()
        self._most, self._started, self._idle = most, 0, 0
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        with self._lock:
            start = self._idle == 0 and self._started < self._most
            if start:
                self._started += 1
        self._queue.put((call, done))
        if start:
            threading.Thread(target=self._work, daemon=True, name="serve-blocking").start()

    def stop(self) -> None:
        for _ in range(self._started):
            self._queue.put(None)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
            if item is None:
                return
            call, done = item
            try:
                result = call()
            except BaseException as exc:  # handed to the task that asked
                done(None, exc)
            else:
                done(result, None)


class _Running:
    __slots__ = ("gen", "socks", "timer", "blocking", "on_exit")

    def __init__(self, gen: Task[None], on_exit: Callable[[BaseException | None], None]) -> None:
        self.gen = gen
        self.socks: list[socket.socket] = []  # registered for this task's current Wait
        self.timer = 0  # the sequence number of its current deadline; 0: none
        self.blocking = 0  # the sequence number of the Blocking call it waits for; 0: none
        self.on_exit = on_exit


class Loop:
    """The selector loop. ``spawn`` from the loop's thread; ``call_soon_threadsafe``
    from any thread; ``run`` until ``stop`` is called."""

    def __init__(
        self, selector: selectors.BaseSelector | None = None, on_error: Callable[[BaseException], None] | None = None
    ) -> None:
        self._on_error = on_error  # a callback that raised (a bug): reported, and the loop goes on
        self._selector = selector if selector is not None else selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._calls: deque[Callable[[], None]] = deque()
        self._turned: deque[_Running] = deque()  # tasks that gave the others a turn (fair)
        self._timers: list[tuple[float, int, _Running]] = []
        self._sequence = itertools.count(1)
        self._workers = {"lookup": _Workers(LOOKUP_WORKERS), "cpu": _Workers(CPU_WORKERS)}
        self._stopped = self._closed = False
        self._live: set[_Running] = set()
        self.thread: threading.Thread | None = None

    # -- from any thread -------------------------------------------------------------------------

    def call_soon_threadsafe(self, call: Callable[[], None]) -> None:
        self._calls.append(call)
        self.wake()

    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # already full (a wake is pending) or closed (stopped)

    def stop(self) -> None:
        """End run() (any thread); a loop that never ran lets go of its selector now."""
        self._stopped = True
        if self.thread is None:
            self._close()
        else:
            self.wake()

    @property
    def tasks(self) -> int:
        return len(self._live)

    # -- from the loop's thread ------------------------------------------------------------------

    def add_reader(self, sock: socket.socket, callback: Callable[[], None]) -> None:
        self._selector.register(sock, selectors.EVENT_READ, callback)

    def remove_reader(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def spawn(self, gen: Task[None], on_exit: Callable[[BaseException | None], None]) -> None:
        """Start ``gen`` now; ``on_exit(None)`` when it returns, ``on_exit(exc)`` when it raises."""
        task = _Running(gen, on_exit)
        self._live.add(task)
        self._step(task, None, None)

    def run(self, start: Callable[[], None] | None = None) -> None:
        """Serve until stop(); ``start`` is called first, on this thread (from here on,
        other threads hand their calls to it: call_soon_threadsafe)."""
        self.thread = threading.current_thread()
        if self._closed:
            return
        if start is not None:
            self._call(start)
        select = self._selector.select
        try:
            while not self._stopped:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                if self._calls or self._turned:
                    timeout = 0.0
                ready = select(timeout)
                woken: dict[_Running, set[socket.socket]] = {}
                for key, _ in ready:
                    data = key.data
                    if data is None:
                        self._drain_wake()
                    elif isinstance(data, _Running):
                        woken.setdefault(data, set()).add(key.fileobj)  # type: ignore[arg-type]
                    else:
                        self._call(data)  # a reader: the listening socket
                for task, socks in woken.items():
                    self._resume(task, socks, None)
                # Only what was queued when this pass began: a task that turns again, or a
                # deadline already past when it waits again, runs in the next pass, after
                # select() has seen everyone else.
                for _ in range(len(self._turned)):
                    self._step(self._turned.popleft(), None, None)
                for _ in range(len(self._calls)):
                    self._call(self._calls.popleft())
                if self._timers:
                    now = time.monotonic()
                    due = []
                    while self._timers and self._timers[0][0] <= now:
                        due.append(heapq.heappop(self._timers))
                    for _, sequence, task in due:
                        if task.timer != sequence:
                            continue
                        if task.blocking == sequence:  # a Blocking call past its deadline
                            task.blocking = task.timer = 0
                            self._step(task, None, TimeoutError())
                        else:
                            self._resume(task, set(), None)
                    if len(self._timers) > 2 * len(self._live) + 64:
                        # Deadlines of waits that ended early stay until they pass (300 s for
                        # --timeout): under load that is thousands a second. Keep the live ones.
                        self._timers = [entry for entry in self._timers if entry[2].timer == entry[1]]
                        heapq.heapify(self._timers)
        finally:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._live):  # each closes its sockets (its finally clauses run)
            self._live.discard(task)
            try:
                task.gen.close()
            except Exception:  # at exit, one task's failure must not keep the others open
                pass
        for workers in self._workers.values():
            workers.stop()
        try:
            self._selector.close()
        except OSError:
            pass
        self._wake_r.close()
        self._wake_w.close()

    def _call(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as exc:  # a bug costs that call, never the server
            if self._on_error is not None:
                self._on_error(exc)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _resume(self, task: _Running, value: Any, error: BaseException | None) -> None:
        for sock in task.socks:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass  # closed meanwhile by another thread (a stop)
        task.socks = []
        task.timer = 0
        self._step(task, value, error)

    def _step(self, task: _Running, value: Any, error: BaseException | None) -> None:
        _running.since = time.monotonic()
        try:
            step = task.gen.send(value) if error is None else task.gen.throw(error)
        except StopIteration:
            self._exit(task, None)
            return
        except BaseException as exc:  # handed to on_exit; the loop goes on
            self._exit(task, exc)
            return
        if isinstance(step, Wait):
            if not step.read and not step.write and step.deadline is None:  # would never resume
                self._step(task, None, TypeError("a Wait for nothing and no deadline"))
                return
            events: dict[socket.socket, int] = {}
            for sock in step.read:
                events[sock] = events.get(sock, 0) | selectors.EVENT_READ
            for sock in step.write:
                events[sock] = events.get(sock, 0) | selectors.EVENT_WRITE
            try:
                for sock, mask in events.items():
                    self._selector.register(sock, mask, task)
                    task.socks.append(sock)
            except (ValueError, KeyError, OSError) as exc:  # a socket closed under it (an eviction, a stop)
                self._resume(task, None, exc if isinstance(exc, OSError) else OSError(str(exc)))
                return
            if step.deadline is not None:
                task.timer = next(self._sequence)
                heapq.heappush(self._timers, (step.deadline, task.timer, task))
        elif isinstance(step, Turn):
            self._turned.append(task)
        elif isinstance(step, Blocking):
            token = task.blocking = next(self._sequence)
            if step.deadline is not None:
                task.timer = token
                heapq.heappush(self._timers, (step.deadline, token, task))
            self._workers[step.pool].submit(
                step.call,
                lambda result, error: self.call_soon_threadsafe(lambda: self._blocking_done(task, token, result, error)),
            )
        else:  # a bug in a task: end it, never the loop
            self._resume(task, None, TypeError(f"a task yielded {type(step).__name__}"))

    def _blocking_done(self, task: _Running, token: int, result: Any, error: BaseException | None) -> None:
        if task.blocking != token:
            return  # it timed out (or the task is gone): the result is not wanted
        task.blocking = task.timer = 0
        self._step(task, result, error)

    def _exit(self, task: _Running, error: BaseException | None) -> None:
        self._live.discard(task)
        self._call(lambda: task.on_exit(error))

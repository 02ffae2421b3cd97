"""serve/loop.py: one thread serving every connection (issue 21's throughput).

The loop and its I/O steps on real loopback sockets in this process: what a
task waits for, deadlines, work handed to a worker thread, a task that fails,
a stop, and the bound on deadlines left behind by waits that ended early
(without it, memory grew with every request under load)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from credential_helper.serve import steps
from credential_helper.serve.loop import Blocking, Loop, Wait

pytestmark = pytest.mark.process  # socketpairs


class Running:
    """A Loop on its own thread; ``call`` runs a function on it and returns its result."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.loop = Loop(on_error=self.errors.append)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def call(self, fn):
        done, box = threading.Event(), []
        self.loop.call_soon_threadsafe(lambda: (box.append(fn()), done.set()))
        assert done.wait(5), "the loop did not run the call"
        return box[0]

    def spawn(self, gen) -> list:
        """Start ``gen``; the list gets ("exit", error) when it ends."""
        ended: list = []
        self.call(lambda: self.loop.spawn(gen, lambda error: ended.append(("exit", error))))
        return ended

    def close(self) -> None:
        self.loop.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()


def runs_before_a_ready_reader(running: Running, hog) -> list[str]:
    """Start ``hog`` and a task whose socket is readable at once, in one loop call (no
    pass between them); the order they finished in ("reader", then "hog")."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.send(b"x")
    order: list[str] = []
    ended: list = []

    def hogging():
        yield from hog()
        order.append("hog")

    def reader():
        yield Wait(read=(a,))
        order.append("reader")

    def both():
        running.loop.spawn(hogging(), ended.append)
        running.loop.spawn(reader(), ended.append)

    running.call(both)
    until(lambda: len(ended) == 2)
    a.close(), b.close()
    return order


@pytest.fixture
def running():
    r = Running()
    yield r
    r.close()


def until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_task_resumes_when_its_socket_is_readable_with_the_socket(running):
    a, b = socket.socketpair()
    a.setblocking(False)
    seen: list = []

    def task():
        ready = yield Wait(read=(a,))
        seen.append(ready)
        seen.append(a.recv(10))

    ended = running.spawn(task())
    time.sleep(0.05)
    assert seen == []  # nothing to read yet: still waiting
    b.send(b"hi")
    until(lambda: ended)
    assert seen == [{a}, b"hi"] and ended == [("exit", None)]
    a.close(), b.close()


def test_a_deadline_resumes_with_nothing_ready_and_recv_into_raises_timeout(running):
    a, b = socket.socketpair()
    a.setblocking(False)
    seen: list = []

    def task():
        started = time.monotonic()
        seen.append((yield Wait(read=(a,), deadline=started + 0.05)))
        try:
            yield from steps.recv_into(a, memoryview(bytearray(8)), time.monotonic() + 0.05)
        except TimeoutError:
            seen.append("timeout")
        seen.append(time.monotonic() - started)

    ended = running.spawn(task())
    until(lambda: ended)
    assert seen[0] == set() and seen[1] == "timeout"
    assert 0.1 <= seen[2] < 2
    a.close(), b.close()


def test_send_all_gives_up_on_a_peer_that_reads_nothing_within_its_timeout(running):
    a, b = socket.socketpair()
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    outcome: list = []

    def task():
        started = time.monotonic()
        try:
            yield from steps.send_all(a, b"x" * (8 << 20), 0.2)
        except TimeoutError:
            outcome.append(time.monotonic() - started)

    ended = running.spawn(task())
    until(lambda: ended)
    assert outcome and 0.2 <= outcome[0] < 3
    a.close(), b.close()


def test_send_all_writes_everything_to_a_peer_that_reads_slowly(running):
    a, b = socket.socketpair()
    a.setblocking(False)
    data = bytes(range(256)) * 4096  # 1 MiB: more than a socket buffer
    received = bytearray()

    def reader():
        while len(received) < len(data):
            chunk = b.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    ended = running.spawn(steps.send_all(a, data, 5))
    threading.Thread(target=reader, daemon=True).start()
    until(lambda: ended and len(received) == len(data))
    assert bytes(received) == data and ended == [("exit", None)]
    a.close(), b.close()


def test_blocking_work_runs_on_another_thread_and_its_result_or_error_comes_back(running):
    seen: list = []

    def fails():
        raise ValueError("from the worker")

    def task():
        seen.append((yield Blocking(threading.current_thread)))
        try:
            yield Blocking(fails)
        except ValueError as exc:
            seen.append(str(exc))

    ended = running.spawn(task())
    until(lambda: ended)
    assert seen[0] is not running.thread and seen[1] == "from the worker"


def test_a_failing_task_ends_alone_and_the_loop_serves_the_others(running):
    a, b = socket.socketpair()
    a.setblocking(False)

    def broken():
        yield Wait(deadline=time.monotonic())
        raise RuntimeError("a bug")

    def healthy():
        yield Wait(read=(a,))

    failed = running.spawn(broken())
    fine = running.spawn(healthy())
    until(lambda: failed)
    assert isinstance(failed[0][1], RuntimeError)
    b.send(b"x")
    until(lambda: fine)
    assert fine == [("exit", None)]
    a.close(), b.close()


def test_a_task_yielding_something_else_is_ended_with_an_error(running):
    def wrong():
        yield "not a Wait"

    ended = running.spawn(wrong())
    until(lambda: ended)
    assert isinstance(ended[0][1], TypeError)


def test_a_wait_on_a_closed_socket_is_an_error_in_the_task_not_the_loop(running):
    a, b = socket.socketpair()
    a.close()
    seen: list = []

    def task():
        try:
            yield Wait(read=(a,))
        except OSError:
            seen.append("oserror")

    ended = running.spawn(task())
    until(lambda: ended)
    assert seen == ["oserror"] and ended == [("exit", None)]
    b.close()


def test_stop_ends_the_loop_and_closes_the_tasks_still_waiting():
    r = Running()
    a, b = socket.socketpair()
    closed: list = []

    def task():
        try:
            yield Wait(read=(a,))
        finally:
            closed.append("finally")

    r.spawn(task())
    r.close()
    assert closed == ["finally"]
    a.close(), b.close()


def test_deadlines_of_waits_that_ended_early_do_not_pile_up(running):
    # Each request sets a deadline (--timeout: 300 s) and usually ends long before
    # it: at thousands of requests a second, kept until they pass, they would be
    # hundreds of thousands of heap entries.
    a, b = socket.socketpair()
    a.setblocking(False)
    rounds = 5000

    def task():
        for _ in range(rounds):
            yield Wait(read=(a,), deadline=time.monotonic() + 300)  # ready at once: b wrote

    b.send(b"x")  # never read: a stays readable
    ended = running.spawn(task())
    until(lambda: ended, 30)
    assert ended == [("exit", None)]
    assert running.call(lambda: len(running.loop._timers)) <= 2 * running.loop.tasks + 64
    a.close(), b.close()


def test_a_loop_that_never_ran_lets_go_of_its_sockets_on_stop():
    loop = Loop()
    wake = loop._wake_r
    loop.stop()
    assert wake.fileno() == -1


def test_a_stop_does_not_wait_for_blocking_work_in_progress():
    # An upstream connect can take its whole 10 s timeout: a stopping server must
    # not wait for it, in the loop or at the interpreter's exit (daemon threads).
    r = Running()
    started = threading.Event()
    workers: list = []

    def slow():
        workers.append(threading.current_thread())
        started.set()
        time.sleep(3)

    def task():
        yield Blocking(slow)

    r.spawn(task())
    assert started.wait(5)
    began = time.monotonic()
    r.close()
    assert time.monotonic() - began < 1.5
    assert workers[0].daemon


def test_the_stop_and_reload_signal_handlers_take_no_lock():
    # A handler runs between any two bytecodes of the main thread, also inside a lock
    # that thread holds: a handler that takes a lock (threading.Event.set) can wait
    # for itself forever. Seen once: two SIGTERMs microseconds apart (GNU timeout
    # signals the process and its group) left a gate that never stopped.
    import sys

    from credential_helper.serve.server import SignalRequests

    asked = SignalRequests()
    called: list[str] = []

    def watch(frame, event, arg):
        if event == "c_call":
            called.append(getattr(arg, "__qualname__", repr(arg)))
        elif event == "call":
            called.append(frame.f_code.co_qualname if hasattr(frame.f_code, "co_qualname") else frame.f_code.co_name)

    sys.setprofile(watch)
    try:
        asked.stop_handler(15, None)
        asked.reload_handler(1, None)
    finally:
        sys.setprofile(None)
    assert asked.stop and asked.reload
    # A lock's acquire, a with-block's __enter__, or an Event or Condition method (they take theirs).
    locking = [name for name in called if any(word in name for word in ("acquire", "__enter__", "Event.", "Condition."))]
    assert locking == [], called


def test_a_task_that_never_waits_gives_the_others_a_turn(running):
    # Review of the loop: a stream whose sockets are always ready (an upstream of a
    # million 1-byte chunks) never waited, and every other connection waited 16 s.
    def busy():
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # one second of work that never waits
            time.sleep(0.0005)
            yield from steps.fair()

    assert runs_before_a_ready_reader(running, busy) == ["reader", "hog"]


def test_a_deadline_already_past_does_not_hold_the_loop(running):
    # A task that waits again with a deadline already past is resumed in the next
    # pass, after select() has seen the others, not again and again in this one.
    def expiring():
        for _ in range(200):
            yield Wait(deadline=time.monotonic() - 1)

    assert runs_before_a_ready_reader(running, expiring) == ["reader", "hog"]


def test_blocking_work_past_its_deadline_ends_the_wait_and_its_late_result_is_dropped(running):
    seen: list = []
    release = threading.Event()

    def task():
        try:
            yield Blocking(lambda: release.wait(5), deadline=time.monotonic() + 0.1)
        except TimeoutError:
            seen.append("timeout")
        seen.append((yield Wait(deadline=time.monotonic() + 0.2)))  # the late result must not land here

    ended = running.spawn(task())
    until(lambda: ended)
    release.set()
    assert seen == ["timeout", set()]


def test_an_upstream_named_by_address_is_connected_on_the_loop_without_a_worker():
    # A connect that hangs must hold only its own request: the loop connects itself
    # (only a name lookup uses a worker thread).
    from credential_helper import protocol
    from credential_helper.serve.upstream import Upstream

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    upstream = Upstream(protocol.URL("http", f"127.0.0.1:{listener.getsockname()[1]}", "", ""), 5, environ={})
    r = Running()
    made: list = []

    def task():
        made.append((yield from upstream.connect()))

    try:
        ended = r.spawn(task())
        until(lambda: ended)
        assert ended == [("exit", None)] and made and made[0].sock.getblocking() is False
        assert all(workers._started == 0 for workers in r.loop._workers.values())
        made[0].close()
    finally:
        r.close()
        listener.close()


def test_a_server_stopped_before_its_loop_starts_ends_without_a_traceback():
    # A stop signal right after start (the listening socket closed from the main
    # thread before the loop's thread got going) printed a thread traceback.
    from credential_helper.serve import server as server_module
    from credential_helper.serve.messages import Answer

    class Answering:
        def decide(self, head):
            return Answer(200, "ok")

    failures: list = []
    previous = threading.excepthook
    threading.excepthook = failures.append
    try:
        for _ in range(20):
            server = server_module.Server(("127.0.0.1", 0), Answering(), upstream=None, log=lambda line: None)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            server.close_listening()  # the socket closed before the loop's thread registers it
            thread.start()
            server.close()
            thread.join(5)
            assert not thread.is_alive()
    finally:
        threading.excepthook = previous
    assert failures == []


def test_a_wait_for_nothing_and_no_deadline_is_an_error_not_a_task_stuck_forever(running):
    def task():
        yield Wait()

    ended = running.spawn(task())
    until(lambda: ended)
    assert isinstance(ended[0][1], TypeError)


# --- second look, from the mutation run over the loop (each a behaviour a survivor changed) ---------


def test_fair_lets_a_task_that_just_resumed_go_on(running):
    seen: list = []

    def task():
        yield Wait(deadline=time.monotonic())  # resumed by the loop (a deadline at once)
        seen.append(list(steps.fair()))  # its turn has just begun: nothing to yield

    ended = running.spawn(task())
    until(lambda: ended)
    assert seen == [[]]


def test_cpu_work_runs_on_at_most_two_threads_and_a_second_starts_while_the_first_is_busy(running):
    from credential_helper.serve.loop import CPU_WORKERS

    busy, most, lock = [0], [0], threading.Lock()
    second_started = threading.Event()

    def work(first: bool):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
            if busy[0] >= 2:
                second_started.set()
        if first:
            second_started.wait(5)  # only a second worker can let the first finish
        time.sleep(0.05)
        with lock:
            busy[0] -= 1

    ends = [running.spawn(steps.run_blocking(lambda first=(i == 0): work(first), pool="cpu")) for i in range(6)]
    until(lambda: all(ends), 10)
    assert all(end == [("exit", None)] for end in ends)
    assert second_started.is_set() and most[0] == CPU_WORKERS == 2


def test_run_blocking_uses_the_lookup_workers_by_default(running):
    seen: list = []

    def task():
        seen.append((yield from steps.run_blocking(lambda: threading.current_thread().name)))

    ended = running.spawn(task())
    until(lambda: ended)
    assert ended == [("exit", None)] and seen == ["serve-blocking"]


def test_a_call_that_raises_is_reported_and_the_loop_goes_on(running):
    running.loop.call_soon_threadsafe(lambda: 1 / 0)
    assert running.call(lambda: "still serving") == "still serving"
    assert [type(error) for error in running.errors] == [ZeroDivisionError]


def test_a_removed_reader_is_not_called_again(running):
    a, b = socket.socketpair()
    a.setblocking(False)
    calls: list = []
    running.call(lambda: running.loop.add_reader(a, lambda: calls.append(1)))
    running.call(lambda: running.loop.remove_reader(a))
    b.send(b"x")
    time.sleep(0.1)
    assert calls == []
    a.close(), b.close()


def test_the_loop_counts_the_tasks_it_runs(running):
    a, b = socket.socketpair()
    a.setblocking(False)

    def task():
        yield Wait(read=(a,))

    ended = running.spawn(task())
    assert running.call(lambda: running.loop.tasks) == 1
    b.send(b"x")
    until(lambda: ended)
    assert running.call(lambda: running.loop.tasks) == 0
    a.close(), b.close()


def test_the_deadline_of_a_wait_that_ended_early_never_ends_a_later_wait(running):
    a, b = socket.socketpair()
    a.setblocking(False)
    seen: list = []

    def task():
        yield Wait(read=(a,), deadline=time.monotonic() + 0.1)  # ends early: b writes at once
        a.recv(10)
        started = time.monotonic()
        ready = yield Wait(read=(a,), deadline=time.monotonic() + 0.6)  # nothing comes
        seen.append((ready, time.monotonic() - started))

    b.send(b"x")
    ended = running.spawn(task())
    until(lambda: ended)
    (ready, waited) = seen[0]
    assert ready == set() and waited >= 0.55, seen
    a.close(), b.close()


def test_a_refused_connect_is_a_connection_refused_error():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there now
    r = Running()
    failures: list = []

    def task():
        sock = socket.socket()
        try:
            yield from steps.connect(sock, ("127.0.0.1", port), time.monotonic() + 5)
        except OSError as exc:
            failures.append(exc)
        finally:
            sock.close()

    try:
        ended = r.spawn(task())
        until(lambda: ended)
    finally:
        r.close()
    assert len(failures) == 1 and isinstance(failures[0], ConnectionRefusedError), failures

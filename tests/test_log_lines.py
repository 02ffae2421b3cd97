"""The server's log lines leave through one writer thread (serve/log_lines.py):
in order, all of them, a bounded number waiting, and nothing lost at exit."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest

from credential_helper.serve.log_lines import LineWriter


class SlowStream(io.StringIO):
    """A stderr whose reader is slow: each write waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.writes = 0

    def write(self, text: str) -> int:
        self.go.wait(10)
        self.writes += 1
        return super().write(text)


def test_lines_from_many_threads_are_all_written_whole_and_in_each_threads_order():
    stream = io.StringIO()
    write = LineWriter(stream)

    def say(n: int) -> None:
        for i in range(500):
            write(f"thread {n} line {i}")

    threads = [threading.Thread(target=say, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    write.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8 * 500
    for n in range(8):
        assert [line for line in lines if line.startswith(f"thread {n} ")] == [f"thread {n} line {i}" for i in range(500)]


def test_a_stalled_stderr_holds_at_most_the_limit_then_the_caller_waits():
    stream = SlowStream()
    write = LineWriter(stream, limit=3)
    write("first")  # taken by the writer thread, which now waits in write()
    time.sleep(0.1)
    for line in ("a", "b", "c"):
        write(line)  # three wait: the limit
    blocked = threading.Thread(target=write, args=("d",))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # back-pressure, not memory
    stream.go.set()
    blocked.join(5)
    assert not blocked.is_alive()
    write.flush()
    assert stream.getvalue().splitlines() == ["first", "a", "b", "c", "d"]
    assert stream.writes < 5  # the waiting lines left together


def test_flush_returns_only_after_the_line_in_hand_is_written():
    stream = SlowStream()
    write = LineWriter(stream)
    write("x")
    threading.Timer(0.2, stream.go.set).start()
    write.flush()
    assert stream.getvalue() == "x\n"


@pytest.mark.process
def test_every_line_is_written_before_the_process_exits():
    program = (
        "from credential_helper.serve.log_lines import LineWriter\nw = LineWriter()\nfor i in range(20000): w(f'line {i}')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [f"line {i}" for i in range(20000)]


@pytest.mark.process
@pytest.mark.parametrize("nonblocking", [False, True])
def test_lines_wait_for_a_slow_reader_at_exit_and_a_full_nonblocking_stderr_loses_none(nonblocking):
    # The attack review: with stderr a pipe nobody read for 7 s, 299 of 2,001 lines arrived (the
    # exit flush gave up after 5 s), and a non-blocking stderr that was full dropped a batch.
    program = (
        "import os, sys\n"
        f"if {nonblocking}: os.set_blocking(2, False)\n"
        "from credential_helper.serve.log_lines import LineWriter\n"
        "w = LineWriter()\n"
        "for i in range(5000): w(f'line {i} ' + 'x' * 40)\n"  # under LineWriter's limit, over a pipe's 64 KiB
        "w('stopped')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", program], stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # past the old 5 s exit flush; the pipe (64 KiB) is full long before
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0
    assert err.splitlines() == [f"line {i} " + "x" * 40 for i in range(5000)] + ["stopped"]

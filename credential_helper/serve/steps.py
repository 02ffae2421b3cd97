"""The I/O steps every connection's task uses, once (loop.py runs the tasks):
read, write all, connect, a TLS handshake, work on a worker thread, and a fair
turn. Each waits by yielding to the loop, and raises ``TimeoutError`` when its
deadline passes."""

from __future__ import annotations

import errno
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .loop import SLICE, TURN, Blocking, Task, Wait, held_for

T = TypeVar("T")


def wait_read(sock: socket.socket, deadline: float | None) -> Task[None]:
    """Until ``sock`` is readable; TimeoutError once ``deadline`` has passed."""
    if not (yield Wait(read=(sock,), deadline=deadline)):
        raise TimeoutError()


def recv_into(sock: socket.socket, buffer: memoryview, deadline: float | None) -> Task[int]:
    """One read into ``buffer`` (0: the end of the stream), waiting until ``deadline``."""
    while True:
        try:
            return sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            yield from wait_read(sock, deadline)
        except ssl.SSLWantWriteError:
            if not (yield Wait(write=(sock,), deadline=deadline)):
                raise TimeoutError() from None


def send_all(sock: socket.socket, data: bytes | bytearray | memoryview, timeout: float) -> Task[None]:
    """All of ``data`` within ``timeout`` seconds in total (as socket.sendall with a
    timeout, Python 3.5 on), else TimeoutError."""
    view = memoryview(data)
    deadline: float | None = None
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            deadline = deadline or time.monotonic() + timeout
            if not (yield Wait(write=(sock,), deadline=deadline)):
                raise TimeoutError() from None
            continue
        except ssl.SSLWantReadError:
            deadline = deadline or time.monotonic() + timeout
            yield from wait_read(sock, deadline)
            continue
        view = view[sent:]


def handshake(sock: ssl.SSLSocket, deadline: float) -> Task[None]:
    """A TLS handshake on a non-blocking socket, within ``deadline``."""
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            yield from wait_read(sock, deadline)
        except ssl.SSLWantWriteError:
            if not (yield Wait(write=(sock,), deadline=deadline)):
                raise TimeoutError() from None


def fair() -> Task[None]:
    """Give the other connections a turn when the running task has held the loop for
    SLICE seconds without waiting: one whose sockets are always ready (a fast stream
    both ways, an upstream sending a million 1-byte chunks) would otherwise never let
    go of the one thread (review of issue 21: others waited 16 s)."""
    if held_for() >= SLICE:
        yield TURN


def run_blocking(call: Callable[[], T], deadline: float | None = None, pool: str = "lookup") -> Task[T]:
    """``call()`` on a worker thread: its result, or its exception raised here
    (TimeoutError once ``deadline`` has passed)."""
    result = yield Blocking(call, deadline, pool)
    return result


def connect(sock: socket.socket, address: Any, deadline: float) -> Task[None]:
    """A TCP connect without blocking, within ``deadline``; its failure as the OSError
    the system named (ECONNREFUSED is a ConnectionRefusedError, PEP 3151)."""
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code in _CONNECTING:
        if not (yield Wait(write=(sock,), deadline=deadline)):
            raise TimeoutError("timed out")
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


# connect_ex on a non-blocking socket: POSIX says EINPROGRESS; Windows WSAEWOULDBLOCK (10035).
_CONNECTING = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", 10035)}


OFF_LOOP_BYTES = 256 * 1024  # a body this large is parsed on a worker thread


def off_loop(size: int, call: Callable[[], T]) -> Task[T]:
    """``call()``, which reads ``size`` bytes: at once when small; on a worker thread
    when large (a 32 MiB body read by Go's JSON rules is tenths of a second of CPU),
    so that the loop goes on serving the other connections meanwhile."""
    if size <= OFF_LOOP_BYTES:
        return call()
    return (yield from run_blocking(call, pool="cpu"))

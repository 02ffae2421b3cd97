"""Socket reads and writes that cannot block and keep the GIL (POSIX; system.py
loads this on first use, never on Windows, whose versions are in system_windows).

In a server with a thread per connection, every system call made through
``socket`` or ``os`` lets go of the GIL, and under load another thread takes it:
the caller then waits to get it back (futex calls and context switches that cost
more than the call itself; issue 21 measured 67 futex calls per relayed request
with 8 clients). libc's ``send``/``recv`` called through ``ctypes.PyDLL`` keep
the GIL, which is safe only because every call here passes ``MSG_DONTWAIT``
(send(2), recv(2)): none can wait. Python ignores SIGPIPE, so a write to a
closed peer is EPIPE, not a signal (and ``MSG_NOSIGNAL`` is passed where it
exists). Where ctypes or libc cannot be loaded (a Python built without libffi
has no ``_ctypes``) the ``os`` versions are used, as before this module: they
let go of the GIL, and return None for a blocking socket, which a plain read or
write would wait on without any deadline.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Any, Protocol

# POSIX names, read with getattr: system.py never loads this module on Windows,
# but mypy checks it for win32 too, and only system.py looks at the platform.
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)  # Linux; macOS has none (SIGPIPE is ignored by Python)
_readv: Callable[[int, list[memoryview]], int] = getattr(os, "readv")  # noqa: B009
_poll: Callable[[], Any] = getattr(select, "poll")  # noqa: B009
_POLLIN: int = getattr(select, "POLLIN", 1)
_WOULD_WAIT = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})
_EMPTY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


class _Socket(Protocol):
    def fileno(self) -> int: ...

    def gettimeout(self) -> float | None: ...


class _Libc:
    """libc's send and recv, called with the GIL kept, and the ctypes they need."""

    def __init__(self) -> None:
        import ctypes  # here, not at the top: a Python without _ctypes still serves (the os versions)

        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the call keeps the GIL
        self.send, self.recv = libc.send, libc.recv
        for call in (self.send, self.recv):
            call.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            call.restype = ctypes.c_ssize_t
        self.ctypes = ctypes

    def errno(self) -> int:
        return int(self.ctypes.get_errno())

    def address(self, buffer: memoryview) -> int:
        return int(self.ctypes.addressof(self.ctypes.c_char.from_buffer(buffer)))


def _load() -> _Libc | None:
    if not _DONTWAIT:
        return None
    try:
        return _Libc()
    except (ImportError, OSError, AttributeError):
        return None


_LIBC = _load()


def _is_tls(sock: _Socket) -> bool:
    return hasattr(sock, "pending")  # an ssl.SSLSocket: its bytes are records, not the stream


def _raise_unless_it_would_wait(libc: _Libc) -> None:
    code = libc.errno()
    if code not in _WOULD_WAIT:
        raise OSError(code, os.strerror(code))


def readable_now(sock: _Socket) -> bool:
    """True when ``sock`` has a byte, a close or an error to read at once (a one-byte
    ``MSG_PEEK``; of a TLS socket, its raw stream). Only "nothing yet" is quiet."""
    libc = _LIBC
    if libc is None:
        poller = _poll()  # poll(2), not select(): any fd number
        poller.register(sock.fileno(), _POLLIN)
        return bool(poller.poll(0))
    probe = libc.ctypes.create_string_buffer(1)
    got = libc.recv(sock.fileno(), probe, 1, socket.MSG_PEEK | _DONTWAIT)
    if got >= 0:
        return True  # a byte, or the end of the stream
    return libc.errno() not in _EMPTY  # an error (or an interruption): not a connection to reuse


def write_now(sock: _Socket, data: bytes | memoryview) -> int | None:
    """Bytes written at once, 0 if none fit; None for a TLS socket or a memoryview
    (the caller writes those through the socket's own timed path), and, without
    libc, for a blocking socket."""
    if _is_tls(sock) or not isinstance(data, bytes):
        return None
    libc = _LIBC
    if libc is None:
        if sock.gettimeout() is None:
            return None  # os.write would wait on it with no deadline
        try:
            return os.write(sock.fileno(), data)
        except BlockingIOError:
            return 0
    sent = libc.send(sock.fileno(), data, len(data), _DONTWAIT | _NOSIGNAL)
    if sent < 0:
        _raise_unless_it_would_wait(libc)
        return 0
    return int(sent)


def read_now(sock: _Socket, buffer: memoryview) -> int | None:
    """Bytes read into ``buffer`` at once (0: the end of the stream); None when
    nothing is there yet, for a TLS socket, for an empty buffer, and, without
    libc, for a blocking socket."""
    if _is_tls(sock) or not buffer.nbytes:
        return None
    libc = _LIBC
    if libc is None:
        if sock.gettimeout() is None:
            return None  # os.readv would wait on it with no deadline
        try:
            return _readv(sock.fileno(), [buffer])
        except BlockingIOError:
            return None
    got = libc.recv(sock.fileno(), libc.address(buffer), buffer.nbytes, _DONTWAIT)
    if got < 0:
        _raise_unless_it_would_wait(libc)
        return None
    return int(got)

"""Socket reads and writes that cannot block and keep the GIL (POSIX; system.py
loads this on first use, never on Windows, whose versions are in system_windows).

In a server with a thread per connection, every system call made through
``socket`` or ``os`` lets go of the GIL, and under load another thread takes it:
the caller then waits to get it back (futex calls and context switches that cost
more than the call itself; issue 21 measured 67 futex calls per relayed request
with 8 clients). libc's ``send``/``recv`` called through ``ctypes.PyDLL`` keep
the GIL, which is safe only because every call here passes ``MSG_DONTWAIT``
(send(2), recv(2)): none can wait. Python ignores SIGPIPE, so a write to a
closed peer is EPIPE, not a signal. Where libc cannot be loaded the ``os``
versions are used (they let go of the GIL, nothing else differs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
from collections.abc import Callable
from typing import Any, Protocol

# POSIX names, read with getattr: system.py never loads this module on Windows,
# but mypy checks it for win32 too, and only system.py looks at the platform.
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_readv: Callable[[int, list[memoryview]], int] = getattr(os, "readv")  # noqa: B009
_poll: Callable[[], Any] = getattr(select, "poll")  # noqa: B009
_POLLIN: int = getattr(select, "POLLIN", 1)
_WOULD_WAIT = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})


class _Socket(Protocol):
    def fileno(self) -> int: ...


def _libc_calls() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    try:
        libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the call keeps the GIL
        send, recv = libc.send, libc.recv
    except (OSError, AttributeError):
        return None
    for call in (send, recv):
        call.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        call.restype = ctypes.c_ssize_t
    return send, recv


_CALLS = _libc_calls() if _DONTWAIT else None


def _is_tls(sock: _Socket) -> bool:
    return hasattr(sock, "pending")  # an ssl.SSLSocket: its bytes are records, not the stream


def _raise_unless_it_would_wait() -> None:
    code = ctypes.get_errno()
    if code not in _WOULD_WAIT:
        raise OSError(code, os.strerror(code))


def readable_now(sock: _Socket) -> bool:
    """True when ``sock`` has a byte, a close or an error to read at once (a one-byte
    ``MSG_PEEK``; of a TLS socket, its raw stream)."""
    if _CALLS is None:
        poller = _poll()  # poll(2), not select(): any fd number
        poller.register(sock.fileno(), _POLLIN)
        return bool(poller.poll(0))
    probe = ctypes.create_string_buffer(1)
    got = _CALLS[1](sock.fileno(), probe, 1, socket.MSG_PEEK | _DONTWAIT)
    if got >= 0:
        return True  # a byte, or the end of the stream
    return ctypes.get_errno() not in _WOULD_WAIT  # an error: for the next read to meet


def write_now(sock: _Socket, data: bytes | memoryview) -> int | None:
    """Bytes written at once, 0 if none fit; None for a TLS socket or a memoryview
    (the caller writes those through the socket's own timed path)."""
    if _is_tls(sock) or not isinstance(data, bytes):
        return None
    if _CALLS is None:
        try:
            return os.write(sock.fileno(), data)
        except BlockingIOError:
            return 0
    sent = _CALLS[0](sock.fileno(), data, len(data), _DONTWAIT)
    if sent < 0:
        _raise_unless_it_would_wait()
        return 0
    return int(sent)


def read_now(sock: _Socket, buffer: memoryview) -> int | None:
    """Bytes read into ``buffer`` at once (0: the end of the stream); None when
    nothing is there yet, for a TLS socket, or for an empty buffer."""
    if _is_tls(sock) or not len(buffer):
        return None
    if _CALLS is None:
        try:
            return _readv(sock.fileno(), [buffer])
        except BlockingIOError:
            return None
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    got = _CALLS[1](sock.fileno(), address, len(buffer), _DONTWAIT)
    if got < 0:
        _raise_unless_it_would_wait()
        return None
    return int(got)

"""The OS seam's common ground: the primitives each implementation provides
(``Implementation``: ``Posix`` in system.py, ``Windows`` in system_windows.py)
and what is built alike on them: the one open, check and bounded read of a
file, and the all-or-nothing write of a new one.

Callers never import this module: they write ``system.read_file(...)``, and
system.py passes ``system.current`` as ``impl``, so a test that puts another
implementation there reaches these functions too. Kept lean like system.py (a
cache hit imports it): ``os``, ``stat`` and ``errno`` only.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see system.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from socket import socket as Socket
    from typing import Protocol

    # A caller's own policy, run on the opened file's fstat: raises to refuse it.
    Check = Callable[[os.stat_result], None]

    class Implementation(Protocol):
        """The primitives Posix (system.py) and Windows (system_windows.py) each
        provide; ``system.current`` is one of them."""

        name: str
        READ_FLAGS: int  # what a read opens with: never blocking, never taking a terminal

        def cache_dir(self) -> str: ...
        def config_dir(self) -> str: ...
        def is_mine(self, info: os.stat_result) -> bool: ...
        def is_private(self, info: os.stat_result) -> bool: ...
        def too_open(self, info: os.stat_result) -> bool: ...
        def others_may_write(self, info: os.stat_result) -> bool: ...
        def permission_advice(self, path: str) -> str: ...
        def private_directory_problem(self, directory: str, create: bool = False) -> str | None: ...
        def open_regular(self, path: str, flags: int, mode: int = 0o600) -> int: ...
        def create_new(self, path: str, mode: int) -> int: ...
        def set_mode(self, fd: int, mode: int) -> None: ...
        def replace(self, source: str, target: str) -> None: ...
        def publish_new(self, source: str, target: str) -> None: ...
        def can_lock(self) -> bool: ...
        def try_lock(self, fd: int) -> bool | None: ...
        def unlock(self, fd: int) -> None: ...
        def stop_signals(self) -> tuple[int, ...]: ...
        def prepare_listening_socket(self, sock: Socket) -> None: ...
        def limitations(self) -> list[str]: ...


APP_DIR = "ollama-credential-helper"
CHUNK = 65536


class RefusedFile(OSError):
    """A file the seam will not read: not a regular file (a FIFO, a device, a
    directory) or not private, found on the opened descriptor before a byte is
    read; or larger than the caller's limit (FileTooLarge). ``strerror`` says
    which; ``info`` is its fstat (None when the open itself showed it)."""

    def __init__(self, path: str, reason: str, info: os.stat_result | None = None, code: int = errno.EINVAL) -> None:
        super().__init__(code, reason, path)
        self.info = info


class FileTooLarge(RefusedFile):
    """More than the caller's limit: found by reading at most limit + 1 bytes."""


def open_file(
    impl: Implementation,
    path: str,
    *,
    follow: bool = True,
    private: bool = False,
    check: Check | None = None,
    flags: int | None = None,
    mode: int = 0o600,
) -> tuple[int, os.stat_result]:
    """The open-and-check that every use of a file goes through; see system.open_file."""
    flags = impl.READ_FLAGS if flags is None else flags
    try:
        # follow=False: impl.open_regular adds O_NONBLOCK | O_NOFOLLOW (POSIX) or
        # compares lstat with fstat (Windows); READ_FLAGS already holds O_NONBLOCK.
        fd = os.open(path, flags, mode) if follow else impl.open_regular(path, flags, mode)
    except PermissionError:
        # Windows cannot open a directory at all (EACCES): say what it is.
        if os.path.isdir(path):
            raise RefusedFile(path, "not a regular file", code=errno.EISDIR) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile(path, "not a regular file", info)
        if private and not impl.is_private(info):
            raise RefusedFile(path, "not a private file of yours", info, errno.EACCES)
        if check is not None:
            check(info)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_file(
    impl: Implementation,
    path: str,
    limit: int,
    *,
    follow: bool = True,
    private: bool = False,
    check: Check | None = None,
) -> tuple[bytes, os.stat_result]:
    """The one safe read; see system.read_file."""
    fd, _ = open_file(impl, path, follow=follow, private=private, check=check)
    try:
        chunks, size = [], 0
        # At most limit + 1 bytes, whatever st_size says (/proc files report 0, a
        # file may grow while it is read): the extra byte tells "too large".
        while size <= limit:
            chunk = os.read(fd, min(CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLarge(path, f"larger than {limit} bytes", after, errno.EFBIG)
    return b"".join(chunks), after


def write_new_file(impl: Implementation, path: str, data: bytes, mode: int) -> None:
    """See system.write_new_file."""
    directory, base = os.path.split(os.path.abspath(path))
    for _ in range(8):
        temporary = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = impl.create_new(temporary, mode)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", path)
    try:
        try:
            impl.set_mode(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        impl.publish_new(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise

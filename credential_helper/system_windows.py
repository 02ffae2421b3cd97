"""The Windows implementation of the OS seam (``system.current`` on win32).

Windows has no uid or mode bits to check (``st_mode`` only reflects the
read-only attribute), no ``O_NOFOLLOW`` and no ``fcntl``. What it does instead:
symlinks and junctions (reparse points) are refused by ``lstat`` before an open
and the opened file is compared with what ``lstat`` saw (same volume and file
index), files are created with ``O_EXCL`` (which never follows a link), locks
use ``msvcrt.locking``, and privacy rests on the profile directory's default
ACL (only the user, SYSTEM and Administrators), which every file under
``%LOCALAPPDATA%`` and ``%APPDATA%`` inherits. ``limitations()`` says so.
The engine waits with ``select()`` (``selector_class``, ``readable_now``).

Only names every system has are used here (Windows-only ones through
``getattr`` or a module passed in), so this logic runs in the tests on Linux
too; ``system.py`` imports it on win32, elsewhere only when a test asks for
``system.Windows``. Nothing here looks at the platform: ``system.py`` chooses.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from .system_common import APP_DIR

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see system.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from selectors import BaseSelector
    from socket import socket as Socket
    from types import ModuleType

# Win32 winnt.h: FILE_ATTRIBUTE_REPARSE_POINT; Python exposes it as
# stat.FILE_ATTRIBUTE_REPARSE_POINT on every system since 3.5.
_REPARSE_POINT = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0x400)
# signal.SIGBREAK exists only on Windows (Ctrl+Break); its value there is 21.
_SIGBREAK = 21
# pip's utils/filesystem.py retries os.replace for about a second on Windows,
# where a file another process holds open (an antivirus scan, a reader) cannot
# be replaced: PermissionError, WinError 5 or 32.
REPLACE_RETRY_SECONDS = 1.0
REPLACE_RETRY_DELAY = 0.05


def _is_link_or_reparse(info: os.stat_result) -> bool:
    return stat.S_ISLNK(info.st_mode) or bool(getattr(info, "st_file_attributes", 0) & _REPARSE_POINT)


def _same_file(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)


def _xdg(variable: str, fallback: str) -> str:
    base = os.environ.get(variable, "")
    if not os.path.isabs(base):  # the XDG Base Directory spec: ignore a relative path
        base = os.path.join(os.path.expanduser("~"), fallback)
    return os.path.join(base, APP_DIR)


class Windows:
    """Win32 semantics. ``msvcrt`` is a seam: tests pass a fake that behaves as
    Microsoft documents ``_locking`` (LK_NBLCK fails at once with EACCES when
    another handle holds the region; LK_UNLCK releases it)."""

    name = "windows"
    # What a read opens with (system_common.open_file). No FIFOs in Windows file
    # systems and no O_NONBLOCK in its os; kept where it exists, so that this
    # logic run on Linux (the tests) can never hang on one either.
    READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_NONBLOCK", 0)

    def __init__(
        self,
        msvcrt_module: ModuleType | None = None,
        *,
        replace: Callable[[str, str], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._msvcrt = msvcrt_module
        self._replace = replace or os.replace
        self._sleep = sleep or time.sleep
        self._clock = clock or time.monotonic

    # --- where things live -------------------------------------------------------

    @staticmethod
    def _known_folder(variable: str, fallback: str) -> str:
        base = os.environ.get(variable, "")
        if not os.path.isabs(base):  # unset or relative: the profile's default place
            base = os.path.join(os.path.expanduser("~"), *fallback.split("\\"))
        return os.path.join(base, APP_DIR)

    def cache_dir(self) -> str:
        # Local, not roaming: tokens belong to this machine.
        return self._known_folder("LOCALAPPDATA", "AppData\\Local")

    def config_dir(self) -> str:
        return self._known_folder("APPDATA", "AppData\\Roaming")

    # --- ownership ---------------------------------------------------------------

    def is_mine(self, info: os.stat_result) -> bool:
        # stat reports no owner on Windows; the directory's inherited ACL is what
        # keeps others out (see limitations()).
        return True

    def is_private(self, info: os.stat_result) -> bool:
        return stat.S_ISREG(info.st_mode) and not _is_link_or_reparse(info)

    def too_open(self, info: os.stat_result) -> bool:
        return False  # mode bits mean nothing here; Ollama checks none either

    def others_may_write(self, info: os.stat_result) -> bool:
        return False  # st_mode reports 0o666 for every writable file; the ACL decides (limitations())

    def permission_advice(self, path: str) -> str:
        return f'run: icacls "{path}" /inheritance:r /grant:r "%USERNAME%:F"'

    # --- directories and files -----------------------------------------------------

    def private_directory_problem(self, directory: str, create: bool = False) -> str | None:
        try:
            if create:
                os.makedirs(directory, exist_ok=True)
            info = os.lstat(directory)
        except FileNotFoundError:
            return f"{directory} does not exist"
        except OSError as exc:
            return f"{directory} cannot be opened ({exc.strerror})"
        if _is_link_or_reparse(info):
            return f"{directory} is a symlink or junction"
        if not stat.S_ISDIR(info.st_mode):
            return f"{directory} is not a directory"
        return None

    def open_regular(self, path: str, flags: int, mode: int = 0o600) -> int:
        """No O_NOFOLLOW on Windows: create with O_EXCL (never follows), else
        lstat first (a link or junction is refused) and check that the file
        opened is the one lstat saw, so a link swapped in between is caught."""
        # O_NONBLOCK does not exist on Windows (nor do FIFOs in its file system);
        # kept where it exists so that a FIFO can never hang an open.
        flags |= getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_NONBLOCK", 0)
        if flags & os.O_CREAT:
            try:
                return os.open(path, flags | os.O_EXCL, mode)
            except FileExistsError:
                flags &= ~os.O_CREAT
        before = os.lstat(path)
        if _is_link_or_reparse(before) or not stat.S_ISREG(before.st_mode):
            raise OSError(errno.ELOOP, "not a regular file", path)
        fd = os.open(path, flags, mode)
        try:
            if not _same_file(before, os.fstat(fd)):
                raise OSError(errno.ELOOP, "replaced while opening", path)
        except OSError:
            os.close(fd)
            raise
        return fd

    def create_new(self, path: str, mode: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        return os.open(path, flags | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0), mode)

    def set_mode(self, fd: int, mode: int) -> None:
        pass  # no os.fchmod before Python 3.13, and the ACL, not the mode, decides

    def replace(self, source: str, target: str) -> None:
        deadline = self._clock() + REPLACE_RETRY_SECONDS
        while True:
            try:
                self._replace(source, target)
                return
            except PermissionError:
                if self._clock() >= deadline:
                    raise
                self._sleep(REPLACE_RETRY_DELAY)

    def publish_new(self, source: str, target: str) -> None:
        # A hard link (CreateHardLinkW) never replaces, as on POSIX. FAT and some
        # network shares have none; there Windows rename (MoveFileEx without
        # MOVEFILE_REPLACE_EXISTING) refuses an existing target just the same.
        try:
            os.link(source, target)
        except FileExistsError:
            raise
        except OSError:
            os.rename(source, target)
            return
        os.unlink(source)

    # --- locks -------------------------------------------------------------------

    def can_lock(self) -> bool:
        return self._msvcrt is not None

    def try_lock(self, fd: int) -> bool | None:
        """Byte 0 of the lock file, as filelock's Windows backend does."""
        if self._msvcrt is None:
            return None
        try:
            os.lseek(fd, 0, os.SEEK_SET)  # _locking starts at the current position
            self._msvcrt.locking(fd, self._msvcrt.LK_NBLCK, 1)
            return True
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False
            return None

    def unlock(self, fd: int) -> None:
        # Windows releases a closed handle's locks "at the system's discretion":
        # unlock explicitly before closing, so a waiter is not left waiting.
        if self._msvcrt is None:
            return
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            self._msvcrt.locking(fd, self._msvcrt.LK_UNLCK, 1)
        except OSError:
            pass

    # --- processes and sockets -------------------------------------------------------

    def stop_signals(self) -> tuple[int, ...]:
        import signal

        # SIGTERM is never delivered on Windows; Ctrl+Break is SIGBREAK.
        return (signal.SIGINT, getattr(signal, "SIGBREAK", _SIGBREAK))

    def prepare_listening_socket(self, sock: Socket) -> None:
        import socket

        # Windows SO_REUSEADDR lets another process bind the same port and take
        # our connections (and the local token); SO_EXCLUSIVEADDRUSE forbids it.
        # Microsoft: "Using SO_REUSEADDR and SO_EXCLUSIVEADDRUSE". Value: ~SO_REUSEADDR.
        option = getattr(socket, "SO_EXCLUSIVEADDRUSE", ~socket.SO_REUSEADDR)
        sock.setsockopt(socket.SOL_SOCKET, option, 1)

    def limitations(self) -> list[str]:
        found = [
            "Windows: file owners and ACLs are not checked; the cache, config and key rely on "
            "your profile directory's default ACL (you, SYSTEM, Administrators)",
        ]
        if self._msvcrt is None:
            found.append("no file locking here: concurrent get calls may each exchange a token")
        return found


# The engine's waits on Windows (system.py has the POSIX ones).


def selector_class() -> type[BaseSelector]:
    """select(): Windows has neither poll nor epoll. There it takes sockets only
    and CPython's build caps each set at FD_SETSIZE = 512 (PC/pyconfig.h; a
    ValueError beyond, Modules/selectmodule.c): see selector_capacity."""
    import selectors

    return selectors.SelectSelector


def selector_capacity() -> int | None:
    """FD_SETSIZE in CPython's Windows build: the serving loop watches every
    connection in one select(), so the connection cap is lowered to fit."""
    return 512


def readable_now(sock: Socket) -> bool:
    """True when ``sock`` has bytes (or a close) to read at once."""
    import select

    return bool(select.select([sock], [], [], 0)[0])

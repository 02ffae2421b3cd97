"""What differs by operating system, and only that.

Private directories and files, "is this file only mine", non-blocking opens,
exclusive locks, atomic replacement, the default cache and config directories,
the stop signals and how a listening socket is prepared. Every other module
calls the functions at the bottom; nothing else in the package looks at
``sys.platform``. The implementation is chosen once, at import.

POSIX (Linux, macOS, the BSDs) checks what the kernel reports: owner uid, mode
bits, ``O_NOFOLLOW``, ``O_DIRECTORY``, ``flock``.

Windows has no uid or mode bits to check (``st_mode`` only reflects the
read-only attribute), no ``O_NOFOLLOW`` and no ``fcntl``. What it does instead:
symlinks and junctions (reparse points) are refused by ``lstat`` before an open
and the opened file is compared with what ``lstat`` saw (same volume and file
index), files are created with ``O_EXCL`` (which never follows a link), locks
use ``msvcrt.locking``, and privacy rests on the profile directory's default
ACL (only the user, SYSTEM and Administrators), which every file under
``%LOCALAPPDATA%`` and ``%APPDATA%`` inherits. ``limitations()`` says so.

What exists on one system only sits under a module-level ``if sys.platform ==
"win32":`` (or ``!=``) branch, as in CPython's own library and typeshed, so that
``mypy --platform win32|linux|darwin`` checks each system's branch against what
that system's ``os`` really has: ``class Posix`` is not even defined on Windows,
where ``os.O_NONBLOCK``, ``os.getuid`` and ``os.fchmod`` do not exist. ``Windows``
uses only names every system has, so its logic runs in the tests on Linux too.

Kept lean: ``get``'s cache hit imports this module, so it imports only ``os``,
``stat``, ``sys``, ``errno`` and ``time`` (not ``typing``: see TYPE_CHECKING).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

# typing.TYPE_CHECKING without importing typing at run time; mypy treats any name
# TYPE_CHECKING as true (PEP 484 "Runtime or type checking?").
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from selectors import BaseSelector
    from socket import socket as Socket
    from types import ModuleType
    from typing import Protocol

    class Implementation(Protocol):
        """What Posix and Windows each provide; ``current`` is one of them."""

        name: str

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


# Defined only where it can work: its body reads os.O_NONBLOCK, which Windows's
# os lacks (the os docs: "Availability: Unix"), and the type checker reads this
# branch only for POSIX platforms.
if sys.platform != "win32":

    class Posix:
        """The kernel's own checks: uid, mode bits, O_NOFOLLOW, flock."""

        name = "posix"
        # Opened files must never block (a FIFO) or follow a planted symlink.
        OPEN_FLAGS = os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)

        def __init__(self, fcntl_module: ModuleType | None = None) -> None:
            self._fcntl = fcntl_module

        # --- where things live -------------------------------------------------------

        def cache_dir(self) -> str:
            return _xdg("XDG_CACHE_HOME", ".cache")

        def config_dir(self) -> str:
            return _xdg("XDG_CONFIG_HOME", ".config")

        # --- ownership ---------------------------------------------------------------

        def is_mine(self, info: os.stat_result) -> bool:
            return info.st_uid == os.getuid()

        def is_private(self, info: os.stat_result) -> bool:
            """A regular file of ours that group and others cannot touch (ssh's rule)."""
            return stat.S_ISREG(info.st_mode) and self.is_mine(info) and not info.st_mode & 0o077

        def too_open(self, info: os.stat_result) -> bool:
            return bool(info.st_mode & 0o077)

        def others_may_write(self, info: os.stat_result) -> bool:
            # A sticky directory (/tmp) lets others add files but not replace ours.
            sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
            return bool(info.st_mode & 0o022) and not sticky

        def permission_advice(self, path: str) -> str:
            return f"run: chmod 600 {path}"

        # --- directories and files -----------------------------------------------------

        def private_directory_problem(self, directory: str, create: bool = False) -> str | None:
            """Why ``directory`` cannot hold private files (None: it can), tightened to 0700.

            Opened with O_DIRECTORY | O_NOFOLLOW and checked on the descriptor, so a
            symlink or someone else's directory is refused with no race.
            """
            try:
                if create:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | self.OPEN_FLAGS)
            except FileNotFoundError:
                return f"{directory} does not exist"
            except OSError as exc:
                if os.path.islink(directory):
                    return f"{directory} is a symlink"
                return f"{directory} cannot be opened ({exc.strerror})"
            try:
                info = os.fstat(fd)
                if not stat.S_ISDIR(info.st_mode):
                    return f"{directory} is not a directory"
                if not self.is_mine(info):
                    return f"{directory} belongs to another user"
                if info.st_mode & 0o077:
                    os.fchmod(fd, 0o700)  # on the opened directory: no symlink race
                return None
            except OSError as exc:
                return f"{directory} cannot be made private ({exc.strerror})"
            finally:
                os.close(fd)

        def open_regular(self, path: str, flags: int, mode: int = 0o600) -> int:
            """os.open that never blocks on a FIFO nor follows a symlink; the caller
            checks what it got with fstat. Raises OSError."""
            return os.open(path, flags | self.OPEN_FLAGS, mode)

        def create_new(self, path: str, mode: int) -> int:
            """A new file: O_CREAT | O_EXCL (never through a planted file or link)."""
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)

        def set_mode(self, fd: int, mode: int) -> None:
            os.fchmod(fd, mode)  # the umask may have removed bits the caller wants

        def replace(self, source: str, target: str) -> None:
            os.replace(source, target)

        def publish_new(self, source: str, target: str) -> None:
            """Move a finished file to ``target`` only if nothing is there (FileExistsError
            otherwise): a hard link is atomic and never replaces, rename(2) would."""
            os.link(source, target)
            os.unlink(source)
            self._sync_directory(os.path.dirname(os.path.abspath(target)))

        @staticmethod
        def _sync_directory(directory: str) -> None:
            try:
                fd = os.open(directory, os.O_RDONLY)
            except OSError:
                return
            try:
                os.fsync(fd)  # the new name survives a crash, not only the data
            except OSError:
                pass
            finally:
                os.close(fd)

        # --- locks -------------------------------------------------------------------

        def can_lock(self) -> bool:
            return self._fcntl is not None

        def try_lock(self, fd: int) -> bool | None:
            """An exclusive lock without waiting: True taken, False held elsewhere,
            None when this system cannot lock. Closing the fd releases it."""
            if self._fcntl is None:
                return None
            try:
                self._fcntl.flock(fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError:
                return None

        def unlock(self, fd: int) -> None:
            pass  # flock belongs to the open file description: os.close releases it

        # --- processes and sockets -------------------------------------------------------

        def stop_signals(self) -> tuple[int, ...]:
            import signal

            return (signal.SIGINT, signal.SIGTERM)

        def prepare_listening_socket(self, sock: Socket) -> None:
            import socket

            # Rebind at once after a restart (TIME_WAIT). On POSIX this never lets
            # another process bind the same port while we listen.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

        def limitations(self) -> list[str]:
            found = []
            if self._fcntl is None:
                found.append("no file locking here: concurrent get calls may each exchange a token")
            if not hasattr(os, "O_NOFOLLOW"):
                found.append("no O_NOFOLLOW here: a symlink planted in the cache could be followed")
            return found


def _fcntl() -> ModuleType | None:
    try:
        import fcntl
    except ImportError:  # a POSIX build without fcntl (some embedded ones): no locks
        return None
    return fcntl


current: Implementation  # tests put the other implementation here
if sys.platform == "win32":
    import msvcrt  # every CPython on Windows has it

    current = Windows(msvcrt)
    # What a read that must never block opens with: no FIFOs in Windows file systems.
    READ_NONBLOCKING = os.O_RDONLY | os.O_BINARY | os.O_NOINHERIT
else:
    current = Posix(_fcntl())
    READ_NONBLOCKING = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# The package's interface: module-level names, so callers write system.cache_dir().


if sys.platform == "win32":

    def selector_class() -> type[BaseSelector]:
        """select(): Windows has neither poll nor epoll. There it takes sockets only
        and CPython's build caps each set at FD_SETSIZE = 512 (PC/pyconfig.h; a
        ValueError beyond, Modules/selectmodule.c). An engine wait watches at most
        two sockets (client, upstream), so the cap never binds; the number of
        connections is bounded by serve/limits.Limits.connections, not by select()."""
        import selectors

        return selectors.SelectSelector

    def readable_now(sock: Socket) -> bool:
        """True when ``sock`` has bytes (or a close) to read at once."""
        import select

        return bool(select.select([sock], [], [], 0)[0])

else:

    def selector_class() -> type[BaseSelector]:
        """poll(2): any fd number (select() fails above 1024) and, unlike epoll or
        kqueue, no kernel object to create, register with and close on every use."""
        import selectors

        return selectors.PollSelector

    def readable_now(sock: Socket) -> bool:
        """True when ``sock`` has bytes (or a close) to read at once: poll(2) directly,
        once per relayed request (about 10x cheaper than a selectors object)."""
        import select

        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))


if sys.platform == "win32":

    def write_now(sock: Socket, data: bytes | memoryview) -> int | None:
        """None: a Windows socket is a handle, not a file descriptor (os.write cannot
        take it), so the caller writes through the socket's own timed path."""
        return None

    def read_now(sock: Socket, buffer: memoryview) -> int | None:
        return None

else:

    def write_now(sock: Socket, data: bytes | memoryview) -> int | None:
        """Write what the socket takes at once, without the poll(2) CPython makes
        before every send on a socket with a timeout (Modules/socketmodule.c
        sock_call_ex): the bytes written, 0 if none fit now, None when this socket
        cannot be written so (TLS, or blocking). Each system call a thread makes
        hands the GIL over; under load fewer of them is more requests a second."""
        if sock.gettimeout() is None or hasattr(sock, "pending"):  # blocking, or an SSLSocket
            return None
        try:
            return os.write(sock.fileno(), data)
        except BlockingIOError:
            return 0

    def read_now(sock: Socket, buffer: memoryview) -> int | None:
        """Read what is there into ``buffer`` without a poll first (see write_now):
        the bytes read (0 at end of stream), None when this socket cannot be read
        so or has nothing yet."""
        if sock.gettimeout() is None or hasattr(sock, "pending"):
            return None
        try:
            return os.readv(sock.fileno(), [buffer])
        except BlockingIOError:
            return None


def cache_dir() -> str:
    """``$XDG_CACHE_HOME/ollama-credential-helper`` (default ~/.cache/...) on
    POSIX; ``%LOCALAPPDATA%\\ollama-credential-helper`` on Windows."""
    return current.cache_dir()


def config_dir() -> str:
    """``$XDG_CONFIG_HOME/ollama-credential-helper`` (default ~/.config/...) on
    POSIX; ``%APPDATA%\\ollama-credential-helper`` on Windows."""
    return current.config_dir()


def private_directory_problem(directory: str, create: bool = False) -> str | None:
    """Why ``directory`` cannot hold private files, or None."""
    return current.private_directory_problem(directory, create)


def open_own_file(path: str, flags: int, mode: int = 0o600) -> int | None:
    """An fd for a regular file of ours that others cannot access, or None
    (missing, a FIFO or link planted there, someone else's, too open)."""
    try:
        fd = current.open_regular(path, flags, mode)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
    except OSError:
        info = None
    if info is None or not current.is_private(info):
        os.close(fd)
        return None
    return fd


def open_regular(path: str, flags: int) -> int:
    """An fd for whatever regular file is at ``path`` (never blocking on a FIFO,
    never through a symlink on the last component). Raises OSError."""
    return current.open_regular(path, flags)


def is_mine(info: os.stat_result) -> bool:
    return current.is_mine(info)


def too_open(info: os.stat_result) -> bool:
    """Group or others may read or write it (always False where modes mean nothing)."""
    return current.too_open(info)


def others_may_write(info: os.stat_result) -> bool:
    """Group or others may change it: a file's mode 0o022, or a non-sticky directory's
    (always False where modes mean nothing)."""
    return current.others_may_write(info)


def permission_advice(path: str) -> str:
    """How to make ``path`` private: chmod on POSIX, icacls on Windows."""
    return current.permission_advice(path)


def create_new(path: str, mode: int) -> int:
    return current.create_new(path, mode)


def replace(source: str, target: str) -> None:
    return current.replace(source, target)


def write_new_file(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data``, completely or not at all.

    Written to a temporary file beside it (O_EXCL, unpredictable name), synced,
    then published without replacing anything: FileExistsError when ``path``
    exists. A crash or a full disk leaves no file at ``path``, never an empty
    or truncated one (docker/genai-stack#153: an empty id_ed25519 stops Ollama).
    """
    directory, base = os.path.split(os.path.abspath(path))
    for _ in range(8):
        temporary = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            fd = current.create_new(temporary, mode)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", path)
    try:
        try:
            current.set_mode(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        current.publish_new(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def can_lock() -> bool:
    return current.can_lock()


def try_lock(fd: int) -> bool | None:
    """Exclusive, without waiting: True taken, False busy, None impossible here."""
    return current.try_lock(fd)


def unlock(fd: int) -> None:
    current.unlock(fd)


def stop_signals() -> tuple[int, ...]:
    """SIGINT and SIGTERM on POSIX; SIGINT and SIGBREAK (Ctrl+Break) on Windows."""
    return current.stop_signals()


def prepare_listening_socket(sock: Socket) -> None:
    """Before bind(): SO_REUSEADDR on POSIX; SO_EXCLUSIVEADDRUSE on Windows,
    never SO_REUSEADDR there."""
    current.prepare_listening_socket(sock)


def limitations() -> list[str]:
    """One line for each guarantee that cannot hold on this system (for
    ``--verbose`` and ``doctor``); empty on an ordinary Linux or macOS."""
    return current.limitations()


def platform_name() -> str:
    return current.name

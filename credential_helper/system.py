"""What differs by operating system, and only that: private directories and
files, "is this file only mine", the one safe open and read of a file, locks,
atomic replacement, the default directories, stop signals, listening sockets and
the engine's socket waits. Other modules call the functions here
(``system.read_file(...)``); none looks at ``sys.platform``. Three files, one seam:

- ``system.py``: the choice (once, at import), the interface, and ``class Posix``
  (Linux, macOS, the BSDs): owner uid, mode bits, ``O_NOFOLLOW``, ``flock``.
- ``system_windows.py``: ``class Windows`` (reparse points refused by ``lstat``,
  ``msvcrt.locking``, privacy from the profile's ACL) and its socket functions.
- ``system_common.py``: the primitives each provides (``Implementation``) and
  what is built alike on them (the checked, bounded read; the all-or-nothing write).

What exists on one system only sits under a module-level ``if sys.platform ==
"win32":`` (or ``!=``) branch, as in CPython's library and typeshed, so that
``mypy --platform win32|linux|darwin`` checks each branch against that system's
``os``. ``Windows`` uses only names every system has, so its logic runs in the
tests on Linux too. Kept lean: ``get``'s cache hit imports the three, which
import only ``os``, ``stat``, ``sys``, ``errno`` and ``time``.
"""

from __future__ import annotations

import os
import stat
import sys

from . import system_common as _common
from .system_common import APP_DIR as APP_DIR, FileTooLarge as FileTooLarge, RefusedFile as RefusedFile

# typing.TYPE_CHECKING without importing typing at run time; mypy treats any name
# TYPE_CHECKING as true (PEP 484 "Runtime or type checking?").
TYPE_CHECKING = False
if TYPE_CHECKING:
    from selectors import BaseSelector
    from socket import socket as Socket
    from types import ModuleType

    from .system_common import Check, Implementation


def _xdg(variable: str, fallback: str) -> str:
    base = os.environ.get(variable, "")
    if not os.path.isabs(base):  # the XDG Base Directory spec: ignore a relative path
        base = os.path.join(os.path.expanduser("~"), fallback)
    return os.path.join(base, APP_DIR)


# Defined only where it can work: its body reads os.O_NONBLOCK, which Windows's
# os lacks (the os docs: "Availability: Unix"), and the type checker reads this
# branch only for POSIX platforms.
if sys.platform != "win32":

    class Posix:
        """The kernel's own checks: uid, mode bits, O_NOFOLLOW, flock."""

        name = "posix"
        # Opened files must never block (a FIFO) or follow a planted symlink.
        OPEN_FLAGS = os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
        # A read (system_common.open_file): a FIFO opens at once and a terminal
        # planted at the path never becomes our controlling terminal (open(2)).
        READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

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

    from .system_windows import REPLACE_RETRY_DELAY as REPLACE_RETRY_DELAY, REPLACE_RETRY_SECONDS as REPLACE_RETRY_SECONDS
    from .system_windows import Windows as Windows, readable_now as readable_now, selector_class as selector_class
    from .system_windows import selector_capacity as selector_capacity

    current = Windows(msvcrt)
else:
    current = Posix(_fcntl())

if not TYPE_CHECKING:  # (mypy would take any system.name for one of these)

    def __getattr__(name: str) -> object:
        # system.Windows elsewhere, for the tests that run its logic there: loaded
        # on first use, so a cache hit on Linux or macOS never reads it (PEP 562).
        if name in ("Windows", "REPLACE_RETRY_SECONDS", "REPLACE_RETRY_DELAY"):
            from . import system_windows

            return getattr(system_windows, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The package's interface: module-level names, so callers write system.cache_dir().
# The socket functions come from system_windows on Windows.
if sys.platform != "win32":

    def selector_class() -> type[BaseSelector]:
        """The serving loop's selector (serve/loop.py): epoll on Linux, kqueue on
        macOS and the BSDs (selectors.DefaultSelector): one kernel object for the
        server's life, any fd number, no cost per idle connection."""
        import selectors

        return selectors.DefaultSelector

    def selector_capacity() -> int | None:
        """How many sockets one selector may watch: no bound here."""
        return None

    def readable_now(sock: Socket) -> bool:
        """True when ``sock`` has a byte, a close or an error to read at once (of a
        TLS socket, its raw stream): a pooled upstream connection that is not quiet."""
        import select

        poller = select.poll()  # poll(2), not select(): any fd number
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))


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


def open_file(path: str, *, follow: bool = True, private: bool = False, check: Check | None = None) -> tuple[int, os.stat_result]:
    """An open descriptor for the regular file at ``path`` and its fstat; the
    caller closes it. For a path another reader (OpenSSL) will open: to read it
    yourself, use ``read_file``.

    Never blocks or takes a terminal (O_NONBLOCK | O_NOCTTY where they exist): a
    FIFO or a device is opened at once and refused by fstat (RefusedFile), as is
    a directory. ``follow=False`` refuses a symlink at the last component
    (O_NOFOLLOW; Windows: lstat, then the opened file compared with it).
    ``private=True`` refuses a file not yours or open to group or others (ssh's
    rule; Windows relies on the ACL: limitations()). Then ``check(info)``, the
    caller's own policy on the same fstat, whose exception comes out unchanged.
    Raises OSError: open(2)'s (FileNotFoundError, PermissionError, ELOOP for a
    refused link), RefusedFile, or what ``check`` raised.
    """
    return _common.open_file(current, path, follow=follow, private=private, check=check)


def read_file(
    path: str,
    limit: int,
    *,
    follow: bool = True,
    private: bool = False,
    check: Check | None = None,
) -> tuple[bytes, os.stat_result]:
    """The bytes of the regular file at ``path`` and its fstat after reading: the
    one way the package reads a file it did not just write (the key, the gate's
    authorized_keys, a cache entry, the proxy's token, Ollama's service key).
    Opened and checked as ``open_file`` says, then read to the end: a file of
    more than ``limit`` bytes raises FileTooLarge (a RefusedFile) once ``limit``
    + 1 are read. Each caller keeps its policy in ``check``, and its own words.
    """
    return _common.read_file(current, path, limit, follow=follow, private=private, check=check)


def open_own_file(path: str, flags: int, mode: int = 0o600) -> int | None:
    """An fd for a regular file of ours that others cannot access, opened with
    ``flags`` (O_CREAT makes it, 0600), or None (missing, a FIFO or link planted
    there, someone else's, too open). For a file kept open: the cache's lock."""
    try:
        return _common.open_file(current, path, follow=False, private=True, flags=flags, mode=mode)[0]
    except OSError:
        return None


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
    _common.write_new_file(current, path, data, mode)


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

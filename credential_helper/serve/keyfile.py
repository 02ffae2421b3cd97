"""The gate's authorized_keys file on disk: where it really is, whether it is safe
to trust, and when a change in it takes effect (issue 19, "the key file never
widens a grant").

The rules, applied on every request (``KeyFile.current``: a ``stat`` of the
path, and the walk of rule 1 whenever that changes and at least every
``WALK_EVERY_NS``):

1. **A safe path, sshd's StrictModes.** The path is resolved one component at a
   time from the root. The file must be a regular file owned by the user or
   root and not writable by group or others; every directory passed through on
   the way (those above the real file *and* those holding a symlink that was
   followed) must be owned by the user or root and not writable by group or
   others; every symlink followed must be the user's or root's. This is
   OpenSSH's ``safe_path`` (``misc.c``; ``auth_secure_path`` in ``auth.c``
   before 2017: "all components of the path to the file must be owned by either
   the owner of the file or root and no directories must be group or world
   writable"), with two differences, both explained in the README: sshd stops
   the walk at the user's home directory and checks only ``realpath()``; here
   the walk goes up to ``/`` and includes the directories of the links, so a
   link kept in a directory others can write cannot be swung to an older copy.
   And sshd refuses any directory with mode bits 022, ``/tmp`` included; here a
   sticky directory (``system.others_may_write``) is accepted, because in it
   others may add names but not rename or remove ours (POSIX ``rename``,
   ``unlink``: ``EPERM`` in a sticky directory unless the caller owns the entry
   or the directory).
2. **An unusable file admits nobody.** When the path is unsafe, the file is
   missing or cannot be read, the set in force becomes
   ``AuthorizedKeys.unusable(problem)``: no key is granted, every signed
   request is refused (503, reason ``keyfile-unusable``) with the problem and
   its fix, and the gate warns once per state of the file. sshd does the same
   (``auth2-pubkeyfile.c`` ``auth_openfile``: "Authentication refused"). It
   recovers by itself on the first request after the fixed file has settled
   (rule 3: at once after a ``chmod`` of a file written earlier).
3. **A write in progress takes no effect.** A changed file is read, parsed and
   put in force only once it has settled: its mtime is at least ``RACY_NS``
   old, or (for a clock that stamps the future) this process has seen the very
   same ``stat`` for ``RACY_NS``. Until then the previous set stays in force,
   neither narrower nor wider: ``cp``, ``>`` and editors that rewrite in place
   truncate and then write, and a read in between sees an empty or cut file.
   The mtime alone is not enough: a ``stat`` taken during a truncate can show
   the new size with the old mtime, so a settled-looking read that is empty,
   shorter than the bytes in force or unterminated is used only when a second
   look ``CONFIRM_SECONDS`` later sees the same ``stat``. A change applies on
   the next request once it has settled (a revocation about ``RACY_NS`` after
   the edit). ``SIGHUP`` (``reload``) reads at once.
4. **An unterminated last line is never read.** Cut mid-write,
   ``ssh-ed25519 AAAA... bob /api/tags`` becomes ``ssh-ed25519 AAAA... bob``,
   which would mean every endpoint; a writer can stall longer than any window
   (a full disk, a killed copy), so the last line counts only when it ends with
   a newline, settled or not, and a warning names it.
"""

import os
import threading
import time
from collections.abc import Callable

from .. import system
from ..errors import IdentityError
from ..sanitize import printable
from .authorized_keys import _GO_SPACE_CHARS, AuthorizedKeys, parse
from .safe_path import Look, _mark, file_problem, look, marks

MAX_FILE_BYTES = 1024 * 1024
# git's "racy git" window: a file modified this recently may still be being
# written, and may change again with no visible change in its stat (FAT and some
# network file systems stamp whole seconds, or two).
RACY_NS = 2_000_000_000
# Between two walks a request costs one stat() of the path: a directory made unsafe
# is seen within this time, and anything swapped through it at once, since a new
# file (or a link pointed elsewhere) changes what stat() finds.
WALK_EVERY_NS = 500_000_000
CONFIRM_SECONDS = 0.02


def _suspicious(data: bytes, before: bytes | None) -> bool:
    """What a truncate-then-write looks like half way: empty, shorter than the bytes
    in force, or ending inside a line."""
    return data == b"" or (before is not None and len(data) < len(before)) or not data.endswith(b"\n")


class _Unusable(Exception):
    pass


class _Replaced(Exception):
    pass


def _read(seen: Look) -> tuple[bytes, os.stat_result] | None:
    """The bytes of the file ``seen`` found and its fstat after reading; None when
    it was replaced or written meanwhile; _Unusable when it cannot be read."""
    assert seen.real is not None and seen.info is not None
    real, walked = seen.real, seen.info
    shown = printable(real)

    def still_safe(info: os.stat_result) -> None:
        if (info.st_dev, info.st_ino) != (walked.st_dev, walked.st_ino):
            raise _Replaced
        problem = file_problem(real, info)
        if problem is not None:
            raise _Unusable(problem)

    try:
        # Not through a link: the walk resolved them all, so one here was swapped in.
        data, after = system.read_file(real, MAX_FILE_BYTES, follow=False, check=still_safe)
    except (FileNotFoundError, _Replaced):
        return None
    except system.FileTooLarge:
        raise _Unusable(f"{shown} is larger than {MAX_FILE_BYTES} bytes") from None
    except system.RefusedFile:
        # Not a regular file: the walk saw one there, and an inode never changes
        # type, so another file (a FIFO, a device) took its place.
        return None
    except OSError as exc:
        raise _Unusable(f"cannot read {shown}: {exc.strerror}") from None
    if _mark(after) != _mark(walked):
        return None
    return data, after


def complete_lines(data: bytes) -> tuple[str, str | None]:
    """(the text up to the last newline, a warning when a line follows it) (rule 4)."""
    end = data.rfind(b"\n") + 1
    text = data[:end].decode("utf-8", "replace")
    tail = data[end:].decode("utf-8", "replace").strip(_GO_SPACE_CHARS + "\ufeff")
    if tail == "" or tail.startswith("#"):
        return text, None
    number = data.count(b"\n", 0, end) + 1
    return text, (
        f"line {number}: skipped: it does not end with a newline, and a line still being written "
        "looks the same (it could lack its endpoint list); end the file with a newline"
    )


class KeyFile:
    """The authorized_keys file, checked on every call to :meth:`current` (see the
    module's rules). At start an unusable file raises IdentityError (exit 3)."""

    def __init__(
        self,
        path: str,
        warn: Callable[[str], None],
        on_change: Callable[[AuthorizedKeys], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self._warn = warn
        self._on_change: Callable[[AuthorizedKeys], None] | None = None  # not for the first read
        self._clock = clock
        self._lock = threading.Lock()
        self._failed: tuple | None = None
        self._waiting: tuple | None = None
        self._waiting_since = 0
        self._data: bytes | None = None
        self._file: tuple | None = None  # the mark of the file in force, while usable
        self._walk_due = 0
        self._keys: AuthorizedKeys  # set by _install, first below
        data, seen, after = _first_read(path)
        # Nothing was in force before: the first read is used even while it may be
        # settling (rule 4 still holds), and read again once it has settled.
        self._install(data, seen, announce=False)
        self._pending = self._clock() - after.st_mtime_ns < RACY_NS
        self._waiting, self._waiting_since = seen.signature, self._clock()
        self._on_change = on_change

    def current(self) -> AuthorizedKeys:
        """The set in force now: one ``stat`` of the path, a walk every WALK_EVERY_NS or
        when the file changed, a read only after a change."""
        if not self._pending:
            if self._file is not None and self._clock() < self._walk_due:
                try:
                    if _mark(os.stat(self.path)) == self._file:
                        return self._keys
                except OSError:
                    pass
            elif marks(self._plan) == self._seen:
                self._walk_due = self._clock() + WALK_EVERY_NS
                return self._keys
        with self._lock:
            self._update(look(self.path), forced=False)
            return self._keys

    def reload(self) -> None:
        """Reread now (SIGHUP: the operator says the edit is done), settled or not."""
        with self._lock:
            self._update(look(self.path), forced=True)

    # -- internals (with the lock held) --

    def _update(self, seen: Look, forced: bool) -> None:
        if seen.problem is not None:
            self._fail(seen, seen.problem, forced)
            return
        if not forced and not self._pending and seen.signature == self._seen:
            return  # another thread got here first
        assert seen.info is not None
        now = self._clock()
        if seen.signature != self._waiting:
            self._waiting, self._waiting_since = seen.signature, now
        settled = now - seen.info.st_mtime_ns >= RACY_NS or now - self._waiting_since >= RACY_NS
        if not (settled or forced):
            self._pending = True  # rule 3: the set in force stays until the file settles
            if self._keys.problem is not None:
                self._keys = AuthorizedKeys.unusable(
                    f"{printable(self.path)} changed less than {RACY_NS / 1e9:g} s ago "
                    "and is read once it has settled; retry in a moment",
                    self._keys,
                )
            return
        try:
            got = _read(seen)
        except _Unusable as exc:
            self._fail(seen, str(exc), forced)
            return
        if got is None:
            self._pending = True  # written or replaced while it was read: look again next time
            return
        data, after = got
        if not forced and data != self._data and now - self._waiting_since < RACY_NS and _suspicious(data, self._data):
            # A stat taken during a truncate can show the new size with the old mtime
            # (seen on Linux 6.18, ext4: size 0 and an mtime seconds old, for ~100 us).
            # An empty, shorter or unterminated read is used only if a second look a
            # moment later sees the very same stat.
            time.sleep(CONFIRM_SECONDS)
            if look(self.path).signature != seen.signature:
                self._pending = True
                return
        if forced or data != self._data or self._keys.problem is not None:
            self._install(data, seen, announce=True)
        else:
            self._seen_usable(seen)
        # A forced read of a file still settling is read again once it has.
        self._pending = forced and now - after.st_mtime_ns < RACY_NS

    def _install(self, data: bytes, seen: Look, announce: bool) -> None:
        text, tail_warning = complete_lines(data)
        keys, warnings = parse(text)
        if tail_warning is not None:
            warnings.append(tail_warning)
        shown = printable(self.path)
        for warning in warnings:
            self._warn(f"{shown}: {warning}")
        self._keys = keys
        self._data = data
        self._seen_usable(seen)
        self._failed = None
        if announce and self._on_change is not None:
            self._on_change(keys)

    def _seen_usable(self, seen: Look) -> None:
        assert seen.info is not None
        self._plan, self._seen = seen.plan, seen.signature
        self._file = _mark(seen.info)
        self._walk_due = self._clock() + WALK_EVERY_NS

    def _fail(self, seen: Look, problem: str, forced: bool) -> None:
        if forced or seen.signature != self._failed:
            self._failed = seen.signature
            self._warn(
                f"the authorized_keys file {printable(self.path)} cannot be used: {problem}; "
                "no signed request is admitted until it is fixed"
            )
        self._keys = AuthorizedKeys.unusable(problem, self._keys)
        self._data = None
        self._file = None
        self._plan, self._seen = seen.plan, seen.signature
        self._pending = False
        self._waiting = None


def _first_read(path: str) -> tuple[bytes, Look, os.stat_result]:
    for _ in range(5):
        seen = look(path)
        if seen.problem is not None:
            raise IdentityError(f"refusing the authorized_keys file {printable(path)}: {seen.problem}")
        try:
            got = _read(seen)
        except _Unusable as exc:
            raise IdentityError(f"refusing the authorized_keys file {printable(path)}: {exc}") from None
        if got is not None:
            return got[0], seen, got[1]
    raise IdentityError(f"the authorized_keys file {printable(path)} kept changing while it was read")


def read_key_file(path: str) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its fstat, after the checks of rule 1; IdentityError if unusable."""
    data, _, info = _first_read(path)
    return data, info

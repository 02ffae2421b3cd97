"""The safe-path walk for the gate's authorized_keys file (rule 1 of keyfile.py):
sshd's StrictModes, OpenSSH ``misc.c`` ``safe_path`` (formerly ``auth.c``
``auth_secure_path``), walked up to ``/`` and through every symlink followed.
OS specifics (who owns a file, who may write it) go through ``system``."""

import os
import re
import stat
from typing import NamedTuple

from .. import system
from ..sanitize import printable

MAX_LINKS = 40  # Linux's MAXSYMLINKS


class Look(NamedTuple):
    """What one walk of the path saw: every path it ``lstat``-ed (``plan``), their
    marks (``signature``: it changes whenever anything checked changes), and either
    the real file or the problem."""

    plan: tuple[str, ...]
    signature: tuple
    real: str | None
    info: os.stat_result | None
    problem: str | None


def _owner_ok(info: os.stat_result) -> bool:
    # safe_path: platform_sys_dir_uid(uid) (root) or the user.
    return system.is_mine(info) or info.st_uid == 0


_SEPARATORS = re.compile(r"[\\/]" if os.altsep else re.escape(os.sep))


def _names(text: str) -> list[str]:
    return [name for name in _SEPARATORS.split(text) if name not in ("", ".")]


def _split(path: str) -> tuple[str, list[str]]:
    """(root, names) of ``path`` made absolute without resolving anything (a ``..``
    after a symlink must go up from where the link led, as the kernel does)."""
    absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    drive, rest = os.path.splitdrive(absolute)
    return drive + os.sep, _names(rest)


def _directory_problem(directory: str, info: os.stat_result) -> str | None:
    shown = printable(directory)
    if not stat.S_ISDIR(info.st_mode):
        return f"{shown} is not a directory"
    if not _owner_ok(info):
        return (
            f"the directory {shown} belongs to another user (uid {info.st_uid}); sshd's StrictModes accepts only yours or root's"
        )
    if system.others_may_write(info):
        return (
            f"the directory {shown} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}): "
            f"they could replace the file; run: chmod go-w {shown}"
        )
    return None


def file_problem(path: str, info: os.stat_result) -> str | None:
    """sshd's rule for the file itself: regular, the user's or root's, not group/other-writable."""
    shown = printable(path)
    if not stat.S_ISREG(info.st_mode):
        return f"{shown} is not a regular file"
    if not _owner_ok(info):
        return f"{shown} belongs to another user (uid {info.st_uid})"
    if system.others_may_write(info):
        return f"{shown} is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); run: chmod go-w {shown}"
    return None


def _mark(info: os.stat_result) -> tuple:
    """What must stay the same for a walk to come out the same: a directory's or a
    link's identity, owner and mode (a link cannot change in place: a new target is
    a new inode, and ctime tells a reused one), all of a file's stat."""
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        return (info.st_dev, info.st_ino, mode, info.st_uid)
    return (info.st_dev, info.st_ino, mode, info.st_uid, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _lstat_mark(path: str) -> tuple:
    try:
        return _mark(os.lstat(path))
    except OSError as exc:
        return ("error", exc.errno)


def marks(plan: tuple[str, ...]) -> tuple:
    """The signature of a walk along ``plan`` without walking it again: the cheap
    check of every request (one ``lstat`` per component)."""
    return tuple([_lstat_mark(path) for path in plan])


def look(path: str) -> Look:
    """Resolve ``path`` one component at a time, checking each (rule 1). Never raises."""
    plan: list[str] = []
    signature: list[tuple] = []

    def stat_(where: str) -> os.stat_result:
        plan.append(where)
        try:
            info = os.lstat(where)
        except OSError as exc:
            signature.append(("error", exc.errno))
            raise
        signature.append(_mark(info))
        return info

    def failed(problem: str) -> Look:
        return Look(tuple(plan), tuple(signature), None, None, problem)

    try:
        root, pending = _split(path)
    except OSError as exc:
        return Look((), (("error", exc.errno),), None, None, f"cannot resolve {printable(path)}: {exc.strerror}")
    pending.reverse()  # a stack: the next name is at the end
    current, links = root, 0
    entering: str | None = root
    while True:
        if entering is not None:
            try:
                info = stat_(entering)
            except OSError as exc:
                return failed(f"cannot inspect the directory {printable(entering)}: {exc.strerror}")
            problem = _directory_problem(entering, info)
            if problem is not None:
                return failed(problem)
            current, entering = entering, None
        if not pending:
            return failed(f"{printable(path)} is not a regular file")
        name = pending.pop()
        if name == "..":
            current = os.path.dirname(current)  # checked on the way down
            continue
        candidate = os.path.join(current, name)
        try:
            info = stat_(candidate)
        except FileNotFoundError:
            if pending:
                if name == "~":  # '~/...' in quotes reaches us unexpanded: a directory named '~' is not what was meant
                    return failed(
                        f"the directory {printable(candidate)} does not exist: '~' is expanded by the shell only when "
                        "it is not quoted; write the path without quotes, or with $HOME"
                    )
                return failed(
                    f"the directory {printable(candidate)} does not exist: create it "
                    f"(mkdir -m 700 {printable(candidate)}) and the file in it"
                )
            return failed(
                f"no authorized_keys file at {printable(path)}: create it with one line per key "
                "('ssh-ed25519 AAAA... <name> <endpoint>,...', e.g. a copy of someone's id_ed25519.pub)"
            )
        except OSError as exc:
            return failed(f"cannot inspect {printable(candidate)}: {exc.strerror}")
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_LINKS:
                return failed(f"{printable(path)}: too many levels of symbolic links")
            if not _owner_ok(info):
                return failed(f"the symlink {printable(candidate)} belongs to another user (uid {info.st_uid})")
            try:
                target = os.readlink(candidate)
            except OSError as exc:
                return failed(f"cannot read the symlink {printable(candidate)}: {exc.strerror}")
            if os.path.isabs(target):
                entering, names = _split(target)  # from the root again, checking it
            else:
                names = _names(target)
            pending.extend(reversed(names))
            continue
        if pending:
            entering = candidate
            continue
        problem = file_problem(candidate, info)
        if problem is not None:
            return failed(problem)
        return Look(tuple(plan), tuple(signature), candidate, info, None)

"""Windows and macOS as the package sees them, derived from typeshed, not from a list.

typeshed (the standard library's stubs every type checker reads; here the copy
that the pinned mypy ships in ``mypy/typeshed/stdlib``) says per platform what
each module has: ``if sys.platform != "win32":`` and ``if sys.platform ==
"linux":`` blocks, as ``mypy --platform`` evaluates them. ``surface()`` evaluates
the same conditions for a module's public names; what Linux has and the other
system lacks is what the simulation hides.

``sitecustomize(platform)`` writes that as a ``sitecustomize.py`` for a
subprocess: every ``import`` made by ``credential_helper`` itself (the importer's
``__name__``) gets a view of the module without those names, and a module that
has no name at all on that system (``fcntl``, ``termios``, ``pwd``, ``resource``...)
cannot be imported. ``sys.platform`` is the simulated one while
``credential_helper.system`` (the only module that reads it) is imported.

What it cannot show: the rest of the process (the standard library, urllib3,
h11, cryptography) is still Linux and takes its Linux paths; paths are POSIX
paths; kqueue (macOS) and real Windows sockets are not there. Only the
package's own reach for a name its user's system lacks is caught.
"""

from __future__ import annotations

import ast
import json
import sys
import textwrap
from pathlib import Path

import mypy

TYPESHED = Path(mypy.__file__).parent / "typeshed" / "stdlib"
PACKAGE = Path(__file__).resolve().parent.parent / "credential_helper"

# The standard modules whose names the package's views hide are found by reading the
# package's own imports (ast), so a new import is covered without editing a list.


def package_imports() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.partition(".")[0])
    return {name for name in found if _stub(name) is not None}


def _stub(module: str) -> Path | None:
    for candidate in (TYPESHED / f"{module}.pyi", TYPESHED / module / "__init__.pyi"):
        if candidate.exists():
            return candidate
    return None


def _condition(test: ast.expr, platform: str, version: tuple[int, int]) -> bool | None:
    """True, False, or None (not a platform or version test: both branches count)."""
    if isinstance(test, ast.BoolOp):
        values = [_condition(v, platform, version) for v in test.values]
        if isinstance(test.op, ast.And):
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _condition(test.operand, platform, version)
        return None if inner is None else not inner
    if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "startswith":
        if ast.unparse(test.func.value) == "sys.platform" and isinstance(test.args[0], ast.Constant):
            return platform.startswith(test.args[0].value)
        return None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = ast.unparse(test.left), test.ops[0], test.comparators[0]
    if left == "sys.platform" and isinstance(right, ast.Constant):
        if isinstance(op, ast.Eq):
            return platform == right.value
        if isinstance(op, ast.NotEq):
            return platform != right.value
    if left == "sys.version_info" and isinstance(right, ast.Tuple):
        other = tuple(element.value for element in right.elts if isinstance(element, ast.Constant))
        compare = {ast.GtE: version >= other, ast.Lt: version < other, ast.Gt: version > other, ast.LtE: version <= other}
        return compare.get(type(op))
    return None


def _names(body: list[ast.stmt], platform: str, version: tuple[int, int], seen: set[str]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.If):
            value = _condition(node.test, platform, version)
            if value is not False:
                names |= _names(node.body, platform, version, seen)
            if value is not True:
                names |= _names(node.orelse, platform, version, seen)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*" and node.module and node.level == 0:
                    names |= surface(node.module, platform, version, seen)
                elif alias.asname is not None and alias.asname == alias.name:  # a stub's re-export (PEP 484)
                    names.add(alias.asname)
        elif isinstance(node, ast.Import):
            names.update(alias.asname for alias in node.names if alias.asname and alias.asname == alias.name)
    return names


def surface(module: str, platform: str, version: tuple[int, int] | None = None, seen: set[str] | None = None) -> set[str]:
    """The public names typeshed gives ``module`` on ``platform`` (sys.platform's value)."""
    seen = set() if seen is None else seen
    stub = _stub(module)
    if stub is None or module in seen:
        return set()
    seen.add(module)
    version = version or sys.version_info[:2]
    return {name for name in _names(ast.parse(stub.read_text()).body, platform, version, seen) if not name.startswith("_")}


def absent(platform: str, modules: set[str] | None = None) -> tuple[dict[str, list[str]], list[str]]:
    """(names Linux has and ``platform`` lacks, per module; modules ``platform`` lacks)."""
    hidden, gone = {}, []
    for module in sorted(
        modules or package_imports() | {"select", "fcntl", "termios", "pwd", "grp", "resource", "msvcrt", "winreg"}
    ):
        here, there = surface(module, "linux"), surface(module, platform)
        if here and not there:
            gone.append(module)
        elif here - there:
            hidden[module] = sorted(here - there)
    return hidden, gone


# Values typeshed cannot give (it types them, it does not say them), from CPython's
# Windows build: open flags that mean nothing to Linux's open(2) are 0 here (O_BINARY,
# O_NOINHERIT); SIGBREAK is 21 (MSVC signal.h), CTRL_C_EVENT 0 and CTRL_BREAK_EVENT 1
# (wincon.h). On Linux 21 is SIGTTIN: sending it is this simulation's Ctrl+Break.
# The package's sockets take SO_EXCLUSIVEADDRUSE (a no-op here) and refuse
# SO_REUSEADDR, which on Windows lets another process bind the same port.
WINDOWS_VALUES = {
    "os": {"O_BINARY": 0, "O_NOINHERIT": 0, "O_TEMPORARY": 0, "O_SHORT_LIVED": 0, "O_SEQUENTIAL": 0, "O_RANDOM": 0, "O_TEXT": 0},
    "signal": {"SIGBREAK": 21, "CTRL_C_EVENT": 0, "CTRL_BREAK_EVENT": 1},
    # winsock2.h: #define SO_EXCLUSIVEADDRUSE ((int)(~SO_REUSEADDR)), SO_REUSEADDR being 4 there.
    "socket": {"SO_EXCLUSIVEADDRUSE": -5},
}

_RUNTIME = '''
import builtins, errno, os, sys, types

_PLATFORM, _HIDDEN, _GONE, _EXTRA = PLATFORM, HIDDEN, GONE, EXTRA


class _View(types.ModuleType):
    """A module as the simulated system has it: Linux's, less what that system lacks."""

    def __init__(self, real, hidden, extra):
        super().__init__(real.__name__, real.__doc__)
        self.__dict__.update(_real=real, _hidden=frozenset(hidden), _extra=extra)

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(f"module {self._real.__name__!r} has no attribute {name!r} ({_PLATFORM}, simulated)")
        if name in self._extra:
            return self._extra[name]
        return getattr(self._real, name)

    def __setattr__(self, name, value):
        setattr(self._real, name, value)  # sys.stdout = ... must reach the real module


def _no_proc(function):
    # macOS has no /proc file system.
    def checked(path, *args, **kwargs):
        if os.fspath(path) == "/proc" or str(os.fspath(path)).startswith("/proc/"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory (no /proc here, simulated)", path)
        return function(path, *args, **kwargs)
    return checked


def _windows_select(real_select):
    # CPython's Windows select(): sockets only (WinSock), and FD_SETSIZE 512 per set
    # (PC/pyconfig.h), a ValueError beyond it (Modules/selectmodule.c).
    import socket, stat

    def select(r, w, x, *timeout):
        for group in (r, w, x):
            if len(group) > 512:
                raise ValueError("too many file descriptors in select()")
            for item in group:
                fd = item if isinstance(item, int) else item.fileno()
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    raise OSError(10038, "An operation was attempted on something that is not a socket")
        return real_select(r, w, x, *timeout)
    return select


def _msvcrt():
    import fcntl

    def locking(fd, mode, nbytes):
        # Microsoft's _locking over flock: LK_NBLCK fails at once with EACCES.
        if mode == module.LK_UNLCK:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return
        if mode != module.LK_NBLCK:
            raise AssertionError("blocking lock mode used")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(errno.EACCES, "Permission denied") from None

    module = types.ModuleType("msvcrt")
    module.LK_UNLCK, module.LK_LOCK, module.LK_NBLCK = 0, 1, 2
    module.locking = locking
    return module


_VIEWS = {}
_REAL_IMPORT = builtins.__import__


def _view(module):
    name = module.__name__
    if name not in _VIEWS:
        extra = dict(_EXTRA.get(name, {}))
        if _PLATFORM == "darwin" and name == "os":
            extra.update({f: _no_proc(getattr(os, f)) for f in ("open", "stat", "lstat", "listdir", "scandir")})
        if _PLATFORM == "win32" and name == "select":
            extra["select"] = _windows_select(module.select)
        if _PLATFORM == "win32" and name == "socket":
            class socket(module.socket):
                def setsockopt(self, level, option, *value):
                    if level == module.SOL_SOCKET and option == module.SO_REUSEADDR:
                        raise AssertionError("SO_REUSEADDR on Windows lets another process bind the port")
                    if level == module.SOL_SOCKET and option == -5:
                        return None
                    return super().setsockopt(level, option, *value)

            extra["socket"] = socket
        if name == "selectors":
            # DefaultSelector is epoll here, which neither system has; on Windows it is
            # SelectSelector, whose _select there passes the write set as the except set
            # too (Lib/selectors.py) and meets Windows's select() rules.
            extra["DefaultSelector"] = module.PollSelector if _PLATFORM != "win32" else None
            if _PLATFORM == "win32":
                windows_select = _windows_select(__import__("select").select)

                class SelectSelector(module.SelectSelector):
                    def _select(self, r, w, _, timeout=None):
                        r, w, x = windows_select(r, w, w, timeout)
                        return r, w + x, []

                extra["SelectSelector"] = extra["DefaultSelector"] = SelectSelector
        _VIEWS[name] = _View(module, _HIDDEN.get(name, ()), extra)
    return _VIEWS[name]


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level or not (importer == "credential_helper" or importer.startswith("credential_helper.")):
        return _REAL_IMPORT(name, globals, locals, fromlist, level)
    top = name.partition(".")[0]
    if top == "msvcrt" and _PLATFORM == "win32":
        return _msvcrt()
    if top in _GONE:
        raise ModuleNotFoundError(f"No module named {top!r} ({_PLATFORM}, simulated)", name=top)
    module = _REAL_IMPORT(name, globals, locals, fromlist, level)
    return _view(module) if module.__name__ in _HIDDEN or module.__name__ in _EXTRA else module


builtins.__import__ = _import
_platform, sys.platform = sys.platform, _PLATFORM
try:
    import credential_helper.system  # the only module that reads sys.platform: chooses once
except BaseException:
    # Python would only warn about a failing sitecustomize and run on as Linux.
    import traceback

    traceback.print_exc()
    os._exit(1)
finally:
    sys.platform = _platform
'''


def sitecustomize(platform: str) -> str:
    """The text of a sitecustomize.py that makes the package see ``platform``."""
    hidden, gone = absent(platform)
    gone = [name for name in gone if name != "msvcrt"]
    extra = WINDOWS_VALUES if platform == "win32" else {}
    header = (
        f'"""{platform} as credential_helper sees it: typeshed ({TYPESHED}, mypy {mypy_version()})\n'
        f'evaluated for {platform} against linux (written by tests/platform_surface.py)."""\n'
    )
    data = "\n".join(
        f"{name} = {value}"
        for name, value in (
            ("PLATFORM", repr(platform)),
            ("HIDDEN", json.dumps(hidden)),
            ("GONE", repr(set(gone))),
            ("EXTRA", repr(extra)),
        )
    )
    return header + data + "\n" + textwrap.dedent(_RUNTIME)


def mypy_version() -> str:
    from mypy.version import __version__

    return __version__

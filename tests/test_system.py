"""The OS seam (credential_helper.system) and the cache rules that rest on it.

1. The Windows implementation's logic, run here on Linux with msvcrt and
   os.replace replaced by fakes that behave as Microsoft documents them.
2. The whole installed CLI in a subprocess that looks like Windows to the
   package: tests/platform_surface.py's sitecustomize hides from the package
   everything typeshed says Windows lacks (fcntl, os.O_NONBLOCK, os.getuid,
   os.fchmod, select.poll, signal.SIGHUP...), supplies an msvcrt (``_locking``
   semantics over flock), and makes system.py choose its Windows implementation.
3. Cache and input rules from issue 14: no entry through a symlink or of
   another user, a lookup checks the directory, erase matches whole names, C1
   controls refused.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import assert_one_line_error, helper_executable
from platform_surface import sitecustomize
from credential_helper import system
from credential_helper.cache import TokenCache
from credential_helper.standin import StandIn


def challenge(server, scope: str = "repository:library/x:pull") -> str:
    return json.dumps({"realm": f"{server.base_url}/token", "service": "ollama.com", "scope": scope})


def cache_dir(env) -> str:
    return os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper")


def entry_names(directory) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return []


# --- 1. the Windows implementation, its Win32 calls faked ------------------------------------


class FakeMsvcrt:
    """msvcrt.locking as Microsoft documents _locking: regions are per handle,
    LK_NBLCK fails at once with EACCES when the bytes are locked (by any handle,
    also the same one: locks do not nest), LK_UNLCK of bytes not locked fails
    with EACCES, and closing a handle does not promise a prompt release (so this
    fake never releases on close)."""

    LK_UNLCK, LK_LOCK, LK_NBLCK, LK_RLCK, LK_NBRLCK = 0, 1, 2, 3, 4

    def __init__(self) -> None:
        self.held: dict[tuple, int] = {}
        self.calls: list[tuple[str, int]] = []

    def _region(self, fd: int, nbytes: int) -> tuple:
        info = os.fstat(fd)
        return (info.st_dev, info.st_ino, os.lseek(fd, 0, os.SEEK_CUR), nbytes)

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        region = self._region(fd, nbytes)
        self.calls.append((mode, region[2]))
        if mode in (self.LK_NBLCK, self.LK_NBRLCK):
            if region in self.held:
                raise OSError(errno.EACCES, "Permission denied")
            self.held[region] = fd
        elif mode == self.LK_UNLCK:
            if self.held.get(region) != fd:
                raise OSError(errno.EACCES, "Permission denied")
            del self.held[region]
        else:
            raise AssertionError("the helper must never use a blocking lock mode")


@pytest.fixture
def windows(monkeypatch):
    fake = FakeMsvcrt()
    implementation = system.Windows(fake)
    monkeypatch.setattr(system, "current", implementation)
    return implementation, fake


def test_windows_lock_is_exclusive_and_released_before_close(windows, tmp_path):
    # Break caught: dropping system.unlock from _Lock.__exit__ (the third lock times out).
    _, fake = windows
    cache = TokenCache(str(tmp_path / "cache"))
    with cache.lock("a" * 64, timeout=1) as first:
        assert first.acquired
        started = time.monotonic()
        with cache.lock("a" * 64, timeout=0.2) as second:
            assert not second.acquired  # held by another handle: waited, then gave up
        assert time.monotonic() - started >= 0.2
        with cache.lock("b" * 64, timeout=0.2) as other:
            assert other.acquired  # another entry's lock is independent
    assert fake.held == {}
    with cache.lock("a" * 64, timeout=0.2) as third:
        assert third.acquired
    assert all(offset == 0 for _, offset in fake.calls)  # byte 0, whatever the position


def test_windows_without_msvcrt_proceeds_unlocked_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(system, "current", system.Windows(None))
    with TokenCache(str(tmp_path / "cache")).lock("a" * 64, timeout=0.1) as lock:
        assert not lock.acquired
    assert any("no file locking" in line for line in system.limitations())


def test_windows_replace_retries_a_file_held_open_then_gives_up():
    # Break caught: calling os.replace once (no retry) fails the first half.
    attempts = []

    def flaky(source, target):
        attempts.append((source, target))
        if len(attempts) < 3:
            raise PermissionError(errno.EACCES, "The process cannot access the file")

    now = [0.0]
    clock = lambda: now[0]  # noqa: E731

    def sleep(seconds):
        now[0] += seconds

    system.Windows(None, replace=flaky, sleep=sleep, clock=clock).replace("a", "b")
    assert len(attempts) == 3

    def always(source, target):
        raise PermissionError(errno.EACCES, "held open")

    now[0] = 0.0
    with pytest.raises(PermissionError):
        system.Windows(None, replace=always, sleep=sleep, clock=clock).replace("a", "b")
    assert system.REPLACE_RETRY_SECONDS <= now[0] <= system.REPLACE_RETRY_SECONDS + 0.2

    def missing(source, target):
        raise FileNotFoundError(errno.ENOENT, "gone")

    with pytest.raises(FileNotFoundError):  # only "held open" is retried
        system.Windows(None, replace=missing, sleep=lambda s: pytest.fail("retried"), clock=clock).replace("a", "b")


def test_windows_directories(monkeypatch, tmp_path):
    implementation = system.Windows(None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    monkeypatch.setenv("APPDATA", str(tmp_path / "Roaming"))
    assert implementation.cache_dir() == str(tmp_path / "Local" / "ollama-credential-helper")
    assert implementation.config_dir() == str(tmp_path / "Roaming" / "ollama-credential-helper")
    monkeypatch.setenv("LOCALAPPDATA", "relative")
    monkeypatch.delenv("APPDATA")
    assert implementation.cache_dir() == str(tmp_path / "AppData" / "Local" / "ollama-credential-helper")
    assert implementation.config_dir() == str(tmp_path / "AppData" / "Roaming" / "ollama-credential-helper")


def test_posix_directories_follow_xdg(monkeypatch, tmp_path):
    implementation = system.Posix(None)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    assert implementation.cache_dir() == str(tmp_path / "c" / "ollama-credential-helper")
    assert implementation.config_dir() == str(tmp_path / ".config" / "ollama-credential-helper")


class _Stat:
    """An lstat result as Windows reports a junction: a directory with
    FILE_ATTRIBUTE_REPARSE_POINT set (os.stat_result on Linux has no such field)."""

    def __init__(self, real: os.stat_result, attributes: int) -> None:
        self._real, self.st_file_attributes = real, attributes

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_windows_directory_refuses_symlinks_junctions_and_files(monkeypatch, tmp_path):
    # Break caught: ignoring st_file_attributes (the junction is then accepted).
    implementation = system.Windows(None)
    real = tmp_path / "real"
    real.mkdir()
    assert implementation.private_directory_problem(str(real)) is None
    (tmp_path / "link").symlink_to(real)
    assert "symlink or junction" in implementation.private_directory_problem(str(tmp_path / "link"))
    (tmp_path / "file").write_text("x")
    assert "not a directory" in implementation.private_directory_problem(str(tmp_path / "file"))
    assert implementation.private_directory_problem(str(tmp_path / "new"), create=True) is None
    assert (tmp_path / "new").is_dir()
    lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda path: _Stat(lstat(path), 0x400) if str(path) == str(real) else lstat(path))
    assert "symlink or junction" in implementation.private_directory_problem(str(real))


def test_windows_open_refuses_links_fifos_and_a_file_swapped_in(monkeypatch, tmp_path):
    # Break caught: dropping the lstat/fstat identity comparison (the swap goes unseen).
    implementation = system.Windows(None)
    target = tmp_path / "entry.json"
    target.write_text("{}")
    os.close(implementation.open_regular(str(target), os.O_RDONLY))
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(OSError):
        implementation.open_regular(str(tmp_path / "link.json"), os.O_RDONLY)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(OSError):
        implementation.open_regular(str(tmp_path / "fifo.json"), os.O_RDONLY)
    # O_CREAT makes a new file with O_EXCL, or opens the regular file that is there.
    os.close(implementation.open_regular(str(tmp_path / "new.lock"), os.O_RDWR | os.O_CREAT))
    os.close(implementation.open_regular(str(tmp_path / "new.lock"), os.O_RDWR | os.O_CREAT))
    with pytest.raises(OSError):
        implementation.open_regular(str(tmp_path / "link.json"), os.O_RDWR | os.O_CREAT)
    # What lstat saw is not what open opened: a link swapped in between.
    decoy = tmp_path / "decoy"
    decoy.write_text("{}")
    lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda path: lstat(decoy) if str(path) == str(target) else lstat(path))
    with pytest.raises(OSError):
        implementation.open_regular(str(target), os.O_RDONLY)


def test_windows_trusts_the_acl_not_mode_bits_and_advises_icacls(tmp_path):
    implementation = system.Windows(None)
    loose = tmp_path / "key"
    loose.write_text("k")
    os.chmod(loose, 0o666)
    info = os.stat(loose)
    assert implementation.is_private(info) and not implementation.too_open(info)
    assert not implementation.is_private(os.stat(tmp_path))  # a directory is not a file
    assert "icacls" in implementation.permission_advice("C:\\k") and "chmod" not in implementation.permission_advice("C:\\k")
    assert "chmod 600" in system.Posix(None).permission_advice("/k")
    assert any("ACL" in line for line in implementation.limitations())


def test_stop_signals():
    import signal

    assert system.Windows(None).stop_signals() == (signal.SIGINT, 21)  # SIGBREAK's value on Windows
    assert signal.SIGTERM not in system.Windows(None).stop_signals()  # never delivered there
    assert system.Posix(None).stop_signals() == (signal.SIGINT, signal.SIGTERM)


class _RecordingSocket:
    def __init__(self) -> None:
        self.options: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))


def test_windows_listening_socket_is_exclusive_never_reuseaddr(monkeypatch):
    # Winsock: SO_REUSEADDR is 4, SO_EXCLUSIVEADDRUSE is ~SO_REUSEADDR (-5).
    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", -5, raising=False)
    sock = _RecordingSocket()
    system.Windows(None).prepare_listening_socket(sock)
    assert sock.options == [(socket.SOL_SOCKET, -5, 1)]
    assert all(option not in (socket.SO_REUSEADDR, 4) for _, option, _ in sock.options)


@pytest.mark.process
def test_posix_listening_socket_reuses_address():
    with socket.socket() as sock:
        system.Posix(None).prepare_listening_socket(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_an_ordinary_linux_has_no_limitations():
    import fcntl

    assert system.Posix(fcntl).limitations() == []
    assert system.current.name == "posix" and system.limitations() == []
    assert any("locking" in line for line in system.Posix(None).limitations())


@pytest.mark.parametrize("implementation", ["posix", "windows"])
def test_write_new_file_is_complete_or_absent(monkeypatch, tmp_path, implementation):
    # Break caught: writing straight to the target (a failed fsync leaves a file).
    import fcntl

    monkeypatch.setattr(system, "current", system.Posix(fcntl) if implementation == "posix" else system.Windows(FakeMsvcrt()))
    target = tmp_path / "id_ed25519"
    system.write_new_file(str(target), b"secret key bytes\n", 0o600)
    assert target.read_bytes() == b"secret key bytes\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        system.write_new_file(str(target), b"other", 0o600)
    assert target.read_bytes() == b"secret key bytes\n"
    assert os.listdir(tmp_path) == ["id_ed25519"]  # no temporary left behind

    def failing_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        system.write_new_file(str(tmp_path / "second"), b"data", 0o600)
    assert os.listdir(tmp_path) == ["id_ed25519"]


def test_no_platform_check_outside_the_seam():
    package = Path(system.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "system.py" and ("sys.platform" in path.read_text() or "os.name" in path.read_text())
    ]
    assert offenders == []


# --- 2. the whole CLI, with the POSIX-only facilities gone ---------------------------------------


@pytest.fixture
def windows_env(env, tmp_path):
    directory = tmp_path / "simulation"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(sitecustomize("win32"))
    return dict(
        env,
        PYTHONPATH=str(directory),
        LOCALAPPDATA=str(tmp_path / "home" / "AppData" / "Local"),
        APPDATA=str(tmp_path / "home" / "AppData" / "Roaming"),
    )


def windows_cache(windows_env) -> str:
    return os.path.join(windows_env["LOCALAPPDATA"], "ollama-credential-helper")


@pytest.mark.process
def test_the_simulation_is_in_force(windows_env):
    # The package's own os (system.os) lacks what typeshed says Windows lacks; the
    # rest of the process keeps Linux's (tests/platform_surface.py).
    probe = (
        "import os, sys, credential_helper.system as s\n"
        "print(s.current.name, [n for n in ('O_NOFOLLOW','O_DIRECTORY','O_NONBLOCK','getuid','fchmod') if hasattr(s.os, n)],"
        " hasattr(os, 'O_NONBLOCK'), s.selector_class().__name__, sys.platform)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=windows_env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["windows", "[]", "True", "SelectSelector", sys.platform]


def test_simulated_windows_get_caches_in_localappdata(run, windows_env, standin):
    first = run(["get", "--verbose"], challenge(standin), environment=windows_env)
    assert first.code == 0, first
    assert "Traceback" not in first.err and "ACL" in first.err  # --verbose names the limitation
    second = run(["get"], challenge(standin), environment=windows_env)
    assert second.code == 0 and second.json()["token"] == first.json()["token"]
    assert standin.exchanges == 1
    assert len(entry_names(windows_cache(windows_env))) == 1


@pytest.mark.process
def test_simulated_windows_single_flight_across_processes(windows_env, public_line):
    # Break caught: try_lock returning None on Windows (no lock: 16 exchanges).
    with StandIn(exchange_delay=0.5) as server:
        server.authorize(public_line("ed25519-a"))
        stdin = challenge(server).encode()

        def call(_):
            return subprocess.run([*helper_executable(), "get"], input=stdin, capture_output=True, env=windows_env, timeout=60)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(call, range(8)))
        assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
        assert len({json.loads(r.stdout)["token"] for r in results}) == 1
        assert server.exchanges == 1


def test_simulated_windows_sign_and_erase(run, windows_env, standin):
    signed = run(["sign", "POST", "https://ollama.com/api/chat"], environment=windows_env)
    assert signed.code == 0, signed
    assert signed.json()["authorization"].startswith("AAAAC3NzaC1lZDI1NTE5")
    assert run(["get"], challenge(standin, "repository:a:pull"), environment=windows_env).code == 0
    assert run(["get"], challenge(standin, "repository:b:pull"), environment=windows_env).code == 0
    assert len(entry_names(windows_cache(windows_env))) == 2
    erased = run(["erase"], challenge(standin, "repository:a:pull"), environment=windows_env)
    assert erased.code == 0 and erased.err == "", erased
    assert len(entry_names(windows_cache(windows_env))) == 1
    assert run(["erase"], "", environment=windows_env).code == 0
    assert entry_names(windows_cache(windows_env)) == []


def test_simulated_windows_key_generate_writes_a_whole_key(run, windows_env, tmp_path):
    # Before: os.fchmod raised AttributeError after the key file was created:
    # an empty id_ed25519 and exit 5.
    key = tmp_path / "new" / "id_ed25519"
    result = run(["key", "--generate", "--identity", str(key)], environment=windows_env)
    assert result.code == 0, result
    assert result.err == ""
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == key.with_suffix(".pub").read_text().split()[:2]
    assert result.out.splitlines()[0] == key.with_suffix(".pub").read_text().strip()
    assert sorted(os.listdir(key.parent)) == ["id_ed25519", "id_ed25519.pub"]
    again = run(["key", "--generate", "--identity", str(key)], environment=windows_env)
    assert_one_line_error(again, 3)


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # a key is ~400 bytes: the write fails


@pytest.mark.process
@pytest.mark.parametrize("simulated", [False, True], ids=["posix", "windows"])
def test_key_generate_on_a_full_disk_leaves_no_key_file(env, windows_env, tmp_path, simulated):
    # Break caught: writing the key in place (a 64-byte id_ed25519 is left behind).
    key = tmp_path / "full" / "id_ed25519"
    completed = subprocess.run(
        [*helper_executable(), "key", "--generate", "--identity", str(key)],
        env=windows_env if simulated else env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=60,
    )
    assert completed.returncode == 3, completed
    assert completed.stdout == "" and len(completed.stderr.splitlines()) == 1, completed
    assert completed.stderr.startswith("ollama-credential-helper: cannot create ") and "Traceback" not in completed.stderr
    assert not key.exists() and not key.with_suffix(".pub").exists()
    assert os.listdir(key.parent) == []  # nor a temporary file


# --- 3. cache and input rules (issue 14, "Tests the suite lacks") ----------------------------------


def test_an_entry_is_never_read_through_a_symlink(run, env, standin, tmp_path):
    # Break caught: Posix.OPEN_FLAGS without O_NOFOLLOW (the linked entry is a hit).
    assert run(["get"], challenge(standin)).code == 0
    [name] = entry_names(cache_dir(env))
    entry = os.path.join(cache_dir(env), name)
    outside = tmp_path / "outside.json"
    os.replace(entry, outside)  # still ours, still 0600, still fresh
    os.symlink(outside, entry)
    assert run(["get"], challenge(standin)).code == 0
    assert standin.exchanges == 2
    assert json.loads(outside.read_text())["token"]  # the link's target was not written through


def test_an_entry_owned_by_another_user_is_never_used(run, env, standin):
    # Break caught: Posix.is_mine always True.
    if os.getuid() != 0:
        pytest.skip("needs root to give the file to another user")
    assert run(["get"], challenge(standin)).code == 0
    [name] = entry_names(cache_dir(env))
    os.chown(os.path.join(cache_dir(env), name), 65534, 65534)
    assert run(["get"], challenge(standin)).code == 0
    assert standin.exchanges == 2


def test_a_lookup_refuses_a_symlinked_cache_directory(run, env, standin, tmp_path):
    # Break caught: TokenCache.lookup without its directory check (a hit through the link).
    elsewhere = dict(env, XDG_CACHE_HOME=str(tmp_path / "elsewhere"))
    assert run(["get"], challenge(standin), environment=elsewhere).code == 0
    os.makedirs(env["XDG_CACHE_HOME"], exist_ok=True)
    os.symlink(cache_dir(elsewhere), cache_dir(env))
    result = run(["get"], challenge(standin))
    assert result.code == 0 and standin.exchanges == 2


def test_a_lookup_refuses_a_cache_directory_of_another_user(run, env, standin):
    # Break caught: TokenCache.lookup without its directory check.
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    assert run(["get"], challenge(standin)).code == 0
    os.chown(cache_dir(env), 65534, 65534)  # the entry inside stays ours and fresh
    assert run(["get"], challenge(standin)).code == 0
    assert standin.exchanges == 2


def test_erase_matches_whole_names_not_prefixes(run, env, standin):
    # Break caught: re.match instead of fullmatch in erase_all.
    assert run(["get"], challenge(standin)).code == 0
    directory = cache_dir(env)
    stem = "f" * 64
    lookalikes = [f"{stem}.json.bak", f"{stem}.jsonl", f"{stem}.lock~", f"{stem}.json.abc.tmp.keep", f"{stem}.json.abc.tmpx"]
    for name in lookalikes:
        with open(os.path.join(directory, name), "w") as handle:
            handle.write("not the cache's")
    assert run(["erase"], "").code == 0
    assert sorted(os.listdir(directory)) == sorted(lookalikes)


@pytest.mark.parametrize("control", ["\x80", "\x85", "\x9b", "\x9f"])
def test_c1_controls_are_refused_like_c0(run, control):
    # Break caught: check_text refusing only up to U+007F.
    signed = run(["sign", "GET", f"https://ollama.com/api/tags{control}"])
    assert_one_line_error(signed, 2)
    assert "control character" in signed.err
    scope = f"repository:library/x{control}:pull"
    got = run(["get", "--dry-run"], json.dumps({"realm": "https://ollama.com/token", "service": "ollama.com", "scope": scope}))
    assert_one_line_error(got, 2)
    assert "control character" in got.err


def test_doctor_names_the_platform_and_what_cannot_hold(run, env, windows_env):
    # Break caught: check_platform ignoring system.limitations() (Windows shows "ok").
    def platform(environment):
        result = run(
            ["doctor", "--json", "--registry", "http://127.0.0.1:9", "--timeout", "2"],
            environment=dict(environment, OLLAMA_CLOUD_BASE_URL="http://127.0.0.1:9"),
        )
        return {c["name"]: c for c in json.loads(result.out)["checks"]}["platform"]

    env = {k: v for k, v in env.items() if k != "SSL_CERT_FILE"}
    windows_env = {k: v for k, v in windows_env.items() if k != "SSL_CERT_FILE"}
    linux = platform(env)
    assert linux["status"] == "ok"
    assert (
        linux["detail"].startswith(f"posix: cache {cache_dir(env)}, config ")
        and "system trust store (truststore)" in linux["detail"]
    )
    simulated = platform(windows_env)
    assert simulated["status"] == "warn" and simulated["detail"].startswith(f"windows: cache {windows_cache(windows_env)}")
    assert "ACL" in simulated["detail"]
    assert "SSL_CERT_FILE" in platform(dict(env, SSL_CERT_FILE="/nonexistent.pem"))["detail"]


def test_the_gates_key_file_rules_go_through_the_seam(windows, tmp_path):
    """Windows reports mode 0o666 for every writable file: checked by mode bits
    there, the gate would refuse every authorized_keys file. POSIX still refuses it."""
    from credential_helper.errors import IdentityError
    from credential_helper.serve.authorized_keys import read_key_file

    path = tmp_path / "authorized_keys"
    path.write_text("* * * /api/tags\n")
    os.chmod(tmp_path, 0o777)
    os.chmod(path, 0o666)
    data, _ = read_key_file(str(path))  # the Windows implementation is in force (fixture)
    assert data == b"* * * /api/tags\n"
    system.current = system.Posix(None)
    with pytest.raises(IdentityError, match="writable by group or others"):
        read_key_file(str(path))

"""Safe reading of a file has one home (issue 21): ``system.read_file`` (and, for a
path OpenSSL opens itself or a file kept open, ``system.open_file`` beneath it).

1. What the rule does, on the POSIX implementation and on the Windows one (its
   logic runs here): a FIFO is refused without blocking, a device and a
   directory are refused before a byte is read, a symlink when the caller says
   so, a file over the limit, a file not private when the caller asks; the
   caller's own check sees the opened file; no descriptor is left open.
2. Every caller goes through it, with its own policy: the key (identity), the
   gate's authorized_keys (serve/keyfile), Ollama's service key (doctor),
   SSL_CERT_FILE (transport), a cache entry and the cache's lock (cache), the
   proxy's token (serve/sign).
3. What each caller makes of it: a FIFO planted at each of those paths is
   refused at once, in that caller's own words.

FIFOs, files and links live in tmp_path: no socket, no process (the unit tier).
"""

from __future__ import annotations

import os
import stat
import threading

import pytest

from credential_helper import system, system_common

# --- helpers ---------------------------------------------------------------------------------------


def finishes(function, *args, seconds: float = 5.0, **kwargs):
    """``function(*args)``'s result (or exception) if it returns within ``seconds``.

    A read that blocks on a FIFO is released by opening the FIFO's other end, so a
    broken rule fails this test instead of hanging the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in _fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # releases a blocked open
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"{getattr(function, '__name__', function)} blocked for {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


_fifos: list[str] = []


def fifo_at(path) -> str:
    os.mkfifo(path, 0o600)
    _fifos.append(str(path))
    return str(path)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["posix", "windows"])
def implementation(request, monkeypatch):
    """system.current as each system has it; the Windows logic runs here with
    what every system has (system_windows.py)."""
    if request.param == "windows":
        monkeypatch.setattr(system, "current", system.Windows(None))
    else:
        import fcntl

        monkeypatch.setattr(system, "current", system.Posix(fcntl))
    return request.param


def regular(tmp_path, data: bytes = b"data\n", mode: int = 0o600, name: str = "file") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


# --- 1. the rule ----------------------------------------------------------------------------------


def test_a_regular_file_is_read_whole_with_its_fstat(implementation, tmp_path):
    path = regular(tmp_path, b"x" * 70_000)  # more than one read's chunk
    data, info = system.read_file(path, 70_000)
    assert data == b"x" * 70_000
    assert stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == (os.stat(path).st_dev, os.stat(path).st_ino)
    assert system.read_file(regular(tmp_path, b"", name="empty"), 10)[0] == b""


@pytest.mark.parametrize("follow", [True, False])
def test_a_fifo_is_refused_without_blocking(implementation, tmp_path, follow):
    # Break caught: dropping O_NONBLOCK from Posix.READ_FLAGS (the open blocks: the
    # test fails after 5 s, released by opening the FIFO's other end).
    fifo = fifo_at(tmp_path / "fifo")
    before = open_descriptors()
    with pytest.raises(OSError) as refused:
        finishes(system.read_file, fifo, 4096, follow=follow)
    assert open_descriptors() == before
    if follow:  # Windows refuses it at lstat when links are refused (there are no FIFOs there)
        assert type(refused.value) is system.RefusedFile and refused.value.strerror == "not a regular file"


def test_a_device_is_refused_before_a_byte_is_read(implementation, tmp_path):
    # Break caught: dropping the S_ISREG test (/dev/zero is read, and only the limit
    # stops it: FileTooLarge, not RefusedFile).
    with pytest.raises(system.RefusedFile) as refused:
        finishes(system.read_file, "/dev/zero", 1 << 20)
    assert type(refused.value) is system.RefusedFile and refused.value.filename == "/dev/zero"
    assert stat.S_ISCHR(refused.value.info.st_mode)


def test_a_directory_is_refused(implementation, tmp_path):
    with pytest.raises(system.RefusedFile, match="not a regular file"):
        system.read_file(str(tmp_path), 4096)


def test_a_directory_windows_will_not_open_is_named_for_what_it_is(implementation, tmp_path, monkeypatch):
    # Windows's open() of a directory fails with EACCES: the message says "not a
    # regular file", not "permission denied". Break caught: dropping that branch.
    real_open = os.open

    def windows_open(path, flags, mode=0o777):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", windows_open)
    with pytest.raises(system.RefusedFile, match="not a regular file"):
        system.read_file(str(tmp_path), 4096)
    path = regular(tmp_path)

    def refusing_open(path, flags, mode=0o777):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(PermissionError) as refused:  # a file really refused stays a PermissionError
        system.read_file(path, 4096)
    assert not isinstance(refused.value, system.RefusedFile)


def test_a_symlink_is_followed_only_when_the_caller_allows_it(implementation, tmp_path):
    # Break caught: read_file passing follow=True to the open for every caller.
    target = regular(tmp_path, b"key\n")
    (tmp_path / "link").symlink_to(target)
    link = str(tmp_path / "link")
    assert system.read_file(link, 4096)[0] == b"key\n"
    before = open_descriptors()
    with pytest.raises(OSError):
        system.read_file(link, 4096, follow=False)
    assert open_descriptors() == before
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        system.read_file(str(tmp_path / "dangling"), 4096)  # followed: nothing there
    with pytest.raises(OSError):
        system.read_file(str(tmp_path / "dangling"), 4096, follow=False)


def test_the_limit_is_a_bound_on_what_is_read(implementation, tmp_path):
    # Break caught: `size >= limit` (a file of exactly the limit refused), or no
    # FileTooLarge at all (a file one byte over read whole).
    assert system.read_file(regular(tmp_path, b"a" * 100), 100)[0] == b"a" * 100
    with pytest.raises(system.FileTooLarge) as refused:
        system.read_file(regular(tmp_path, b"a" * 101, name="over"), 100)
    assert refused.value.strerror == "larger than 100 bytes" and isinstance(refused.value, system.RefusedFile)
    with pytest.raises(system.FileTooLarge):
        system.read_file(regular(tmp_path, b"a" * 200_000, name="much"), 65_536)


def test_the_read_stops_at_limit_plus_one(tmp_path, monkeypatch):
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(system.FileTooLarge):
        system.read_file(regular(tmp_path, b"a" * 1_000_000), 100_000)
    assert sum(reads) == 100_001


def test_private_means_yours_and_closed_to_group_and_others(tmp_path):
    # Break caught: open_file ignoring private= (a 0644 file accepted).
    assert system.read_file(regular(tmp_path, mode=0o600), 4096, private=True)[0] == b"data\n"
    for mode in (0o640, 0o604, 0o620):
        with pytest.raises(system.RefusedFile, match="not a private file of yours"):
            system.read_file(regular(tmp_path, mode=mode, name=f"m{mode:o}"), 4096, private=True)
    assert system.read_file(regular(tmp_path, mode=0o644, name="open"), 4096)[0] == b"data\n"  # not asked


def test_the_callers_check_sees_the_opened_file_before_any_read(implementation, tmp_path, monkeypatch):
    # Break caught: calling check after the read (the read below happens).
    path = regular(tmp_path)
    seen: list[os.stat_result] = []
    assert system.read_file(path, 4096, check=seen.append)[0] == b"data\n"
    assert (seen[0].st_dev, seen[0].st_ino) == (os.stat(path).st_dev, os.stat(path).st_ino)

    class Mine(Exception):
        pass

    def refuse(info):
        raise Mine

    monkeypatch.setattr(os, "read", lambda fd, n: pytest.fail("read before the check refused"))
    before = open_descriptors()
    with pytest.raises(Mine):  # the caller's own exception, unchanged
        system.read_file(path, 4096, check=refuse)
    assert open_descriptors() == before


def test_open_file_hands_back_a_checked_descriptor(implementation, tmp_path):
    fd, info = system.open_file(regular(tmp_path))
    try:
        assert os.read(fd, 100) == b"data\n" and stat.S_ISREG(info.st_mode)
    finally:
        os.close(fd)
    with pytest.raises(system.RefusedFile):
        finishes(system.open_file, fifo_at(tmp_path / "fifo"))


def test_open_own_file_keeps_its_contract(implementation, tmp_path):
    """The cache's lock: made 0600 when missing, refused (None) when planted."""
    lock = str(tmp_path / "x.lock")
    fd = system.open_own_file(lock, os.O_RDWR | os.O_CREAT)
    assert fd is not None
    os.close(fd)
    if implementation == "posix":
        assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
        os.chmod(lock, 0o644)
        assert system.open_own_file(lock, os.O_RDWR | os.O_CREAT) is None
    (tmp_path / "link.lock").symlink_to(lock)
    assert system.open_own_file(str(tmp_path / "link.lock"), os.O_RDWR | os.O_CREAT) is None
    assert finishes(system.open_own_file, fifo_at(tmp_path / "fifo.lock"), os.O_RDWR | os.O_CREAT) is None


# --- 2. every caller goes through it ----------------------------------------------------------------


def test_every_reader_of_a_file_goes_through_the_one_function(tmp_path, keys, monkeypatch):
    """Each caller's path reaches system_common.open_file (where open, fstat and
    the checks are), with that caller's policy. Break caught: any caller back on
    its own os.open (its path is missing from ``opened``)."""
    from credential_helper import doctor, identity, transport
    from credential_helper.cache import TokenCache
    from credential_helper.serve import keyfile, sign

    opened: list[tuple[str, bool, bool, bool]] = []
    real_open_file = system_common.open_file

    def spy(impl, path, *, follow=True, private=False, check=None, **rest):
        opened.append((os.path.basename(path), follow, private, check is not None))
        return real_open_file(impl, path, follow=follow, private=private, check=check, **rest)

    monkeypatch.setattr(system_common, "open_file", spy)

    identity.read_key_file(str(keys / "ed25519-a"))
    authorized = regular(tmp_path, b"* * * /api/tags\n", name="authorized_keys")
    keyfile.read_key_file(authorized)
    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", str(keys / "ed25519-b.pub"))
    assert doctor._service_key() is not None
    monkeypatch.setenv("SSL_CERT_FILE", regular(tmp_path, b"-----BEGIN CERTIFICATE-----\n", name="bundle.pem"))
    transport.check_ca_file()
    cache = TokenCache(str(tmp_path / "cache"))
    assert cache.problem(create=True) is None
    assert cache.lookup("a" * 64) is None
    with cache.lock("a" * 64, timeout=1):
        pass
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    token = sign.local_token()  # made: the read found nothing
    assert sign.local_token() == token  # read

    lock_name = [name for name, *_ in opened if name.endswith(".lock")]
    entry_name = [name for name, *_ in opened if name.startswith("a" * 64) and name not in lock_name]
    token_name = os.path.basename(sign.token_path())
    assert opened == [
        ("ed25519-a", True, False, True),  # the key: links followed (~/.ollama on another disk), mode checked
        ("authorized_keys", False, False, True),  # the walk resolved every link; StrictModes in check
        ("ed25519-b.pub", True, False, False),  # Ollama's service key: only regular and bounded
        ("bundle.pem", True, False, False),  # SSL_CERT_FILE: only regular (OpenSSL reads it)
        (entry_name[0], False, True, False),  # a cache entry: private, never through a link
        (lock_name[0], False, True, False),  # the cache's lock: the same
        (token_name, False, True, False),  # the proxy's token: the same
        (token_name, False, True, False),
    ]


def test_the_readers_bounds_are_their_own(tmp_path, keys, monkeypatch):
    """Each reader asks read_file for its own limit (no reader reads unbounded)."""
    from credential_helper import cache as cache_module, doctor, identity
    from credential_helper.serve import keyfile, sign

    limits: dict[str, int] = {}
    real_read_file = system.read_file

    def spy(path, limit, **kwargs):
        limits[os.path.basename(path)] = limit
        return real_read_file(path, limit, **kwargs)

    monkeypatch.setattr(system, "read_file", spy)
    identity.read_key_file(str(keys / "ed25519-a"))
    keyfile.read_key_file(regular(tmp_path, b"* * * /api/tags\n", name="authorized_keys"))
    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", str(keys / "ed25519-b.pub"))
    doctor._service_key()
    store = cache_module.TokenCache(str(tmp_path / "cache"))
    store.problem(create=True)
    store.lookup("b" * 64)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    sign.local_token()
    sign.local_token()
    assert limits == {
        "ed25519-a": identity.MAX_KEY_FILE_BYTES,
        "authorized_keys": keyfile.MAX_FILE_BYTES,
        "ed25519-b.pub": 4096,
        "b" * 64 + cache_module.ENTRY_SUFFIX: cache_module.MAX_ENTRY_BYTES,
        os.path.basename(sign.token_path()): 4096,
    }


# --- 3. what each caller makes of a FIFO planted at its path -------------------------------------------


def test_a_fifo_as_the_key_is_an_identity_error_at_once(tmp_path):
    from credential_helper.errors import IdentityError
    from credential_helper.identity import read_key_file

    fifo = fifo_at(tmp_path / "id_ed25519")
    with pytest.raises(IdentityError, match=f"^the key {fifo} is not a regular file$"):
        finishes(read_key_file, fifo)


def test_a_fifo_as_ollamas_service_key_is_skipped(tmp_path, monkeypatch):
    from credential_helper import doctor, identity

    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", fifo_at(tmp_path / "id_ed25519.pub"))
    assert finishes(doctor._service_key) is None


def test_a_fifo_as_ssl_cert_file_is_refused(tmp_path, monkeypatch):
    from credential_helper import transport
    from credential_helper.errors import NetworkError

    fifo = fifo_at(tmp_path / "bundle.pem")
    monkeypatch.setenv("SSL_CERT_FILE", fifo)
    with pytest.raises(NetworkError, match="is not a regular file; point it at a PEM bundle"):
        finishes(transport.check_ca_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    transport.check_ca_file()  # missing: left to OpenSSL, as before


def test_a_fifo_as_a_cache_entry_is_a_miss(tmp_path):
    from credential_helper.cache import ENTRY_SUFFIX, TokenCache

    cache = TokenCache(str(tmp_path / "cache"))
    assert cache.problem(create=True) is None
    fifo_at(os.path.join(cache.directory, "c" * 64 + ENTRY_SUFFIX))
    assert finishes(cache.lookup, "c" * 64) is None


def test_a_fifo_or_an_oversized_file_as_the_proxys_token_is_refused(tmp_path, monkeypatch):
    from credential_helper.errors import IdentityError
    from credential_helper.serve import sign

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    path = sign.token_path()
    os.makedirs(os.path.dirname(path), mode=0o700)
    fifo_at(path)
    with pytest.raises(IdentityError, match="is not a private regular file of yours"):
        finishes(sign.local_token)
    os.unlink(path)
    regular(tmp_path / "config" / "ollama-credential-helper", b"och-" + b"a" * 5000, name=os.path.basename(path))
    # Break caught: reading the first 4096 bytes as before (a token of them was accepted).
    with pytest.raises(IdentityError, match="does not hold a usable token"):
        sign.local_token()


def test_a_fifo_given_to_the_stand_ins_authorize_is_refused_at_once(tmp_path, capsys):
    from credential_helper import standin

    fifo = str(tmp_path / "key.pub")
    fifo_at(fifo)
    with pytest.raises(SystemExit) as exited:
        finishes(standin.main, ["--authorize", fifo])  # a plain open() waited for a writer forever
    assert exited.value.code == 2
    assert "not a regular file" in capsys.readouterr().err

"""The token cache's rules in-process, without the executable (cache.py; issue 21,
found by mutation: the process-tier tests run the cache in a subprocess where a
mutant goes unseen). Expectations come from the module's stated contract: entries
0600 in a 0700 directory of ours, a miss for anything unreadable, stale, planted or
out of bounds, only our own names erased, a lock that times out rather than fails;
RFC 3339 for the printed expiry; the Docker token specification for lifetimes."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from freezegun import freeze_time

from credential_helper import cache as cache_module
from credential_helper.cache import MAX_LIFETIME, Entry, TokenCache, format_rfc3339, lifetime_from_response

NOW = 1_800_000_000.0
KEY = "ab" * 32  # a SHA-256 key, the shape entry_key gives


@pytest.fixture
def cache(tmp_path):
    return TokenCache(str(tmp_path / "cache"))


def write_entry(cache: TokenCache, raw: object, *, mode: int = 0o600, key: str = KEY) -> str:
    os.makedirs(cache.directory, mode=0o700, exist_ok=True)
    path = os.path.join(cache.directory, key + ".json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.write(fd, raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    os.close(fd)
    os.chmod(path, mode)
    return path


# --- freshness ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lifetime, left, fresh",
    [
        (300, 30.5, True),  # margin min(30, 150) = 30 s
        (300, 30, False),
        (40, 20.5, True),  # margin min(30, 20) = 20 s
        (40, 20, False),
        (1, 0.6, True),  # margin 0.5 s
        (1, 0.5, False),
    ],
)
def test_an_entry_is_fresh_until_its_margin(lifetime, left, fresh):
    assert Entry("t", NOW + left, lifetime).is_fresh(NOW) is fresh


# --- what a file may hold ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        ["t", NOW + 100, 100],  # not an object
        {"token": "a b", "expires_at": NOW + 100, "lifetime": 100},  # not usable in a header
        {"token": 5, "expires_at": NOW + 100, "lifetime": 100},
        {"token": "t", "expires_at": True, "lifetime": 100},  # a bool is not a number here
        {"token": "t", "expires_at": NOW + 100, "lifetime": False},
        {"token": "t", "expires_at": "1", "lifetime": 100},
        {"token": "t", "expires_at": NOW + 100, "lifetime": 0},
        {"token": "t", "expires_at": NOW + 100, "lifetime": -5},
        {"token": "t", "expires_at": NOW + 100, "lifetime": MAX_LIFETIME + 1},
        {"token": "t", "expires_at": NOW + MAX_LIFETIME + 1, "lifetime": 100},
    ],
)
def test_an_entry_out_of_bounds_is_refused(raw):
    assert Entry.from_json(raw, NOW) is None


def test_an_entry_at_its_bounds_is_taken():
    raw = {"token": "s3cr3t", "expires_at": int(NOW + MAX_LIFETIME), "lifetime": int(MAX_LIFETIME)}
    entry = Entry.from_json(raw, NOW)
    assert entry is not None
    assert (entry.token, entry.expires_at, entry.lifetime) == ("s3cr3t", NOW + MAX_LIFETIME, MAX_LIFETIME)
    assert type(entry.expires_at) is float and type(entry.lifetime) is float
    assert "s3cr3t" not in repr(entry)


def test_nan_and_infinity_read_from_a_file_are_a_miss(cache):
    # json.dumps writes NaN and Infinity; json.loads reads them back.
    write_entry(cache, b'{"token": "t", "expires_at": NaN, "lifetime": 100}')
    assert cache.lookup(KEY, NOW) is None
    write_entry(cache, b'{"token": "t", "expires_at": Infinity, "lifetime": 100}')
    assert cache.lookup(KEY, NOW) is None


# --- the directory and its files -----------------------------------------------------------


def test_store_then_lookup_with_private_modes(cache):
    assert cache.store(KEY, Entry("tok", NOW + 300, 300)) is True
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    path = os.path.join(cache.directory, KEY + ".json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(open(path, "rb").read()) == {"token": "tok", "expires_at": NOW + 300, "lifetime": 300}
    found = cache.lookup(KEY, NOW)
    assert found is not None and found.token == "tok"
    assert os.listdir(cache.directory) == [KEY + ".json"]  # no temporary file left


def test_lookup_uses_the_clock_when_not_told(cache):
    cache.store(KEY, Entry("tok", time.time() + 300, 300))
    assert cache.lookup(KEY) is not None
    cache.store(KEY, Entry("tok", time.time() + 10, 300))
    assert cache.lookup(KEY) is None  # 10 s left of 300: inside the margin


@pytest.mark.parametrize("raw", [b"", b"{", b"[" * 100000, b'"text"'])
def test_a_corrupt_entry_is_a_miss(cache, raw):
    write_entry(cache, raw)
    assert cache.lookup(KEY, NOW) is None


def test_an_entry_others_may_read_is_a_miss(cache):
    write_entry(cache, {"token": "t", "expires_at": NOW + 300, "lifetime": 300}, mode=0o644)
    assert cache.lookup(KEY, NOW) is None
    write_entry(cache, {"token": "t", "expires_at": NOW + 300, "lifetime": 300}, mode=0o600)
    assert cache.lookup(KEY, NOW) is not None


def test_a_symlinked_entry_is_a_miss(cache, tmp_path):
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps({"token": "t", "expires_at": NOW + 300, "lifetime": 300}))
    real.chmod(0o600)
    os.makedirs(cache.directory, mode=0o700)
    os.symlink(real, os.path.join(cache.directory, KEY + ".json"))
    assert cache.lookup(KEY, NOW) is None


def test_an_oversized_entry_is_a_miss(cache):
    padding = "x" * cache_module.MAX_ENTRY_BYTES
    write_entry(cache, {"token": "t", "expires_at": NOW + 300, "lifetime": 300, "pad": padding})
    assert cache.lookup(KEY, NOW) is None


def test_a_symlinked_directory_is_neither_read_nor_written(cache, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, cache.directory)
    assert cache.store(KEY, Entry("tok", NOW + 300, 300)) is False
    assert os.listdir(real) == []
    assert cache.lookup(KEY, NOW) is None


def test_a_loose_directory_is_tightened(cache):
    os.makedirs(cache.directory, mode=0o755)
    os.chmod(cache.directory, 0o755)
    assert cache.problem() is None
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700


def test_a_failed_write_leaves_no_temporary_file(cache, monkeypatch):
    def refuse(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.system, "replace", refuse)
    assert cache.store(KEY, Entry("tok", NOW + 300, 300)) is False
    assert os.listdir(cache.directory) == []


# --- erasing only what is ours ------------------------------------------------------------


def test_erase_removes_the_entry_and_its_lock(cache):
    cache.store(KEY, Entry("tok", NOW + 300, 300))
    open(os.path.join(cache.directory, KEY + ".lock"), "w").close()
    other = "cd" * 32
    cache.store(other, Entry("tok", NOW + 300, 300))
    cache.erase(KEY)
    assert os.listdir(cache.directory) == [other + ".json"]


def test_erase_all_removes_only_our_names_and_counts_entries(cache):
    cache.store(KEY, Entry("tok", NOW + 300, 300))
    cache.store("cd" * 32, Entry("tok", NOW + 300, 300))
    d = cache.directory
    keep = ["notes.txt", "ab" * 31 + ".json", ("ab" * 32).upper() + ".json", KEY + ".json.bak", KEY + ".jsonx"]
    for name in [KEY + ".lock", KEY + ".json.Ab_9.tmp", *keep]:
        open(os.path.join(d, name), "w").close()
    os.mkdir(os.path.join(d, "ef" * 32 + ".json"))  # our name, not a regular file
    os.symlink(os.path.join(d, "notes.txt"), os.path.join(d, "01" * 32 + ".json"))
    assert cache.erase_all() == 2  # entries only: the lock and the temporary file are not counted
    assert sorted(os.listdir(d)) == sorted([*keep, "ef" * 32 + ".json", "01" * 32 + ".json"])


def test_erase_all_without_a_directory_is_zero(cache):
    assert cache.erase_all() == 0


# --- the lock --------------------------------------------------------------------------------


def test_a_held_lock_is_waited_for_then_given_up(cache):
    with cache.lock(KEY, 5.0) as first:
        assert first.acquired and first.fd is not None
        mode = stat.S_IMODE(os.stat(os.path.join(cache.directory, KEY + ".lock")).st_mode)
        assert mode == 0o600
        started = time.monotonic()
        with cache.lock(KEY, 0.2) as second:
            waited = time.monotonic() - started
            assert not second.acquired  # proceeds unlocked: a duplicate exchange, not a failure
        assert 0.2 <= waited < 5
        assert second.fd is None
    with cache.lock(KEY, 0.2) as third:
        assert third.acquired
    assert third.fd is None


# --- what the expiry looks like --------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp, text",
    [
        (0, "1970-01-01T00:00:00Z"),
        (1_800_000_000.9, "2027-01-15T08:00:00Z"),  # whole seconds, not rounded up
        (253402300799, "9999-12-31T23:59:59Z"),
        (1e300, "9999-12-31T23:59:59Z"),  # RFC 3339 years have four digits
        (-62135596800, "0001-01-01T00:00:00Z"),
        (-1e300, "0001-01-01T00:00:00Z"),
    ],
)
def test_format_rfc3339(timestamp, text):
    assert format_rfc3339(timestamp) == text


@pytest.mark.parametrize(
    "issued_at, start",
    [
        ("2027-01-15T07:59:00z", NOW - 60),  # RFC 3339 5.6: "Z" in either case
        ("2027-01-15T07:59:00.5Z", NOW - 59.5),
        ("2027-01-15T08:59:00+01:00", NOW - 60),
        ("2027-01-15T07:59:00", NOW),  # no offset: not RFC 3339, ignored
        ("not a time", NOW),
        (1_799_999_940, NOW),  # a number, not a string
    ],
)
def test_issued_at_is_an_rfc3339_time(issued_at, start):
    with freeze_time("2027-01-15T08:00:00Z"):
        expires_at, lifetime = lifetime_from_response({"expires_in": 300, "issued_at": issued_at}, "opaque", NOW)
    assert (expires_at, lifetime) == (pytest.approx(start + 300, abs=1e-3), 300)


def test_a_jwt_exp_before_its_iat_still_lasts_a_second():
    import base64

    claims = base64.urlsafe_b64encode(json.dumps({"exp": NOW + 10, "iat": NOW + 100}).encode()).rstrip(b"=").decode()
    assert lifetime_from_response({}, f"e30.{claims}.sig", NOW) == (NOW + 10, 1.0)


def test_a_jwt_payload_that_is_not_an_object_is_ignored():
    import base64

    payload = base64.urlsafe_b64encode(b"[1, 2]").rstrip(b"=").decode()
    assert lifetime_from_response({}, f"e30.{payload}.sig", NOW) == (NOW + 60, 60)
    assert lifetime_from_response({"expires_in": 0}, "opaque", NOW) == (NOW + 60, 60)


# --- found by the second look: what each miss leaves behind ------------------------------------


def test_the_key_of_an_identity_is_the_sha256_of_its_file():
    import hashlib

    assert cache_module.identity_digest(b"key bytes") == hashlib.sha256(b"key bytes").hexdigest()


def test_a_lookup_never_creates_the_directory(cache):
    assert cache.lookup(KEY, NOW) is None
    assert not os.path.exists(cache.directory)
    assert cache.problem() is not None and not os.path.exists(cache.directory)


def test_a_temporary_file_that_cannot_be_made_means_not_cached(cache, monkeypatch):
    def refuse(path, mode):
        raise PermissionError(13, "denied", path)

    monkeypatch.setattr(cache_module.system, "create_new", refuse)
    assert cache.store(KEY, Entry("tok", NOW + 300, 300)) is False


def test_a_taken_temporary_name_is_tried_again_with_another(cache, monkeypatch):
    real = cache_module.system.create_new
    tried = []

    def first_taken(path, mode):
        tried.append(path)
        if len(tried) == 1:
            raise FileExistsError(17, "exists", path)
        return real(path, mode)

    monkeypatch.setattr(cache_module.system, "create_new", first_taken)
    assert cache.store(KEY, Entry("tok", NOW + 300, 300)) is True
    assert len(tried) == 2 and tried[0] != tried[1]
    assert cache.lookup(KEY, NOW).token == "tok"


def test_where_locks_cannot_work_the_holder_proceeds_at_once(cache, monkeypatch):
    monkeypatch.setattr(cache_module.system, "try_lock", lambda fd: None)
    started = time.monotonic()
    with cache.lock(KEY, 5.0) as lock:
        assert not lock.acquired
    assert time.monotonic() - started < 2  # not the 5 s timeout


def test_a_jwt_whose_payload_needs_padding_is_read():
    import base64

    claims = {"exp": NOW + 900, "iat": NOW - 100, "n": 1}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert len(payload) % 4 != 0  # the '=' padding JWTs drop (RFC 7515 2) must be put back
    assert lifetime_from_response({}, f"e30.{payload}.sig", NOW) == (NOW + 900, 1000.0)

"""A token cache that many concurrent helpers can share safely.

Entries live in ``$XDG_CACHE_HOME/ollama-credential-helper/`` (default
``~/.cache/ollama-credential-helper/``; on Windows
``%LOCALAPPDATA%\\ollama-credential-helper``), directory 0700, files 0600, each written
to a temporary file and renamed into place so a reader never sees a torn entry.
A lock file beside each entry gives single flight: the first caller exchanges,
the others wait, look again and find its token.

The cache is an optimisation, never a source of failure: an unreadable,
corrupt or unwritable cache behaves as a miss. It touches only its own files:
the directory must be a real directory (not a symlink) owned by the user, and
only regular files owned by the user whose names have the cache's own shape
are read, locked or removed; a FIFO or symlink planted there is never opened.
Every number in an entry is checked on the way in (a bad one is a miss).

Kept lean on purpose: a cache hit must not import cryptography or urllib3.
"""

from __future__ import annotations

import json
import os
import stat
import time

from . import system
from .protocol import is_header_token

try:  # the builtin SHA-256; hashlib would load OpenSSL (~10 ms) on the hit path
    from _sha256 import sha256
except ImportError:  # pragma: no cover - Python 3.12+ renamed it
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the hit path
if TYPE_CHECKING:
    from typing import TypeGuard

APP_DIR = "ollama-credential-helper"
ENTRY_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
# Docker registry token specification: a response without expires_in lasts 60 s.
DEFAULT_LIFETIME = 60.0
# No token is kept longer than this, whatever a server or a cache file says.
MAX_LIFETIME = 24 * 3600.0
MAX_SAFETY_MARGIN = 30.0
MAX_ENTRY_BYTES = 64 * 1024
# Entry, lock and temporary files: a SHA-256 key, then a suffix this module writes.
_OWN_NAME = r"[0-9a-f]{64}(?:\.json|\.lock|\.json\.[A-Za-z0-9_]{1,32}\.tmp)"


def default_cache_dir() -> str:
    """XDG on POSIX, %LOCALAPPDATA% on Windows (system.cache_dir)."""
    return system.cache_dir()


def identity_digest(key_file_bytes: bytes) -> str:
    """Keys the cache by identity without parsing the private key."""
    return sha256(key_file_bytes).hexdigest()


def entry_key(identity: str, realm: str, service: str, scopes: list[str]) -> str:
    """Identity, realm, service and the *set* of scopes (order-insensitive)."""
    material = json.dumps([identity, realm, service, sorted(set(scopes))])
    return sha256(material.encode("utf-8", "surrogateescape")).hexdigest()


def safety_margin(lifetime: float) -> float:
    """Refresh early: min(30 s, half the lifetime)."""
    return min(MAX_SAFETY_MARGIN, lifetime / 2.0)


class Entry:
    __slots__ = ("token", "expires_at", "lifetime")

    def __init__(self, token: str, expires_at: float, lifetime: float) -> None:
        self.token = token
        self.expires_at = expires_at
        self.lifetime = lifetime

    def __repr__(self) -> str:
        return f"Entry(token=[redacted], expires_at={self.expires_at}, lifetime={self.lifetime})"

    def is_fresh(self, now: float) -> bool:
        return self.expires_at - now > safety_margin(self.lifetime)

    @classmethod
    def from_json(cls, raw: object, now: float) -> Entry | None:
        """A valid entry, or None: token usable in a header, numbers real and bounded."""
        if not isinstance(raw, dict):
            return None
        token, expires_at, lifetime = raw.get("token"), raw.get("expires_at"), raw.get("lifetime")
        if not is_header_token(token) or not _is_number(expires_at) or not _is_number(lifetime):
            return None
        # Comparisons with NaN are false, so NaN and infinities fail here too.
        if not (0 < lifetime <= MAX_LIFETIME and expires_at <= now + MAX_LIFETIME):
            return None
        return cls(token, float(expires_at), float(lifetime))


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TokenCache:
    """The on-disk cache. Every method swallows OS errors by design (a miss)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or default_cache_dir()

    def _path(self, key: str, suffix: str) -> str:
        return os.path.join(self.directory, key + suffix)

    def problem(self, create: bool = False) -> str | None:
        return system.private_directory_problem(self.directory, create)

    def lookup(self, key: str, now: float | None = None) -> Entry | None:
        """A fresh entry, or None (missing, stale, corrupt, unreadable or planted)."""
        now = time.time() if now is None else now
        if self.problem() is not None:
            return None
        try:
            data, _ = system.read_file(self._path(key, ENTRY_SUFFIX), MAX_ENTRY_BYTES, follow=False, private=True)
        except OSError:
            return None
        try:
            entry = Entry.from_json(json.loads(data), now)
        except (ValueError, RecursionError):
            return None
        return entry if entry is not None and entry.is_fresh(now) else None

    def store(self, key: str, entry: Entry) -> bool:
        """Write atomically (new temporary file, fsync, rename); False if not cached."""
        if self.problem(create=True) is not None:
            return False
        payload = json.dumps({"token": entry.token, "expires_at": entry.expires_at, "lifetime": entry.lifetime}).encode()
        target = self._path(key, ENTRY_SUFFIX)
        created = self._create_temporary(target)
        if created is None:
            return False
        fd, temporary = created
        try:
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            system.replace(temporary, target)  # retried briefly on Windows
            return True
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            return False

    @staticmethod
    def _create_temporary(target: str) -> tuple[int, str] | None:
        """A new file beside ``target``, as tempfile.mkstemp makes one (without
        its 7 ms of imports): O_CREAT | O_EXCL, no link followed, mode 0600, and
        an unpredictable name, so a file or hard link planted in advance is
        never written through."""
        for _ in range(8):
            temporary = f"{target}.{os.urandom(8).hex()}.tmp"
            try:
                return system.create_new(temporary, 0o600), temporary
            except FileExistsError:
                continue
            except OSError:
                return None
        return None

    def _remove_own(self, name: str) -> bool:
        path = os.path.join(self.directory, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or not system.is_mine(info):
                return False
            os.unlink(path)
            return True
        except OSError:
            return False

    def erase(self, key: str) -> None:
        if self.problem() is None:
            for suffix in (ENTRY_SUFFIX, LOCK_SUFFIX):
                self._remove_own(key + suffix)

    def erase_all(self) -> int:
        """Forget every entry; returns how many entries were removed.

        Only names this cache writes, and only our own regular files: the
        directory may hold anything else, and none of it is ours to delete.
        """
        import re

        if self.problem() is not None:
            return 0
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        own = re.compile(_OWN_NAME)
        removed = 0
        for name in names:
            if own.fullmatch(name) and self._remove_own(name):
                removed += name.endswith(ENTRY_SUFFIX)
        return removed

    def lock(self, key: str, timeout: float) -> _Lock:
        return _Lock(self._path(key, LOCK_SUFFIX), timeout, self)


class _Lock:
    """An exclusive lock on the entry's lock file (flock on POSIX, msvcrt.locking
    on Windows: system.try_lock), waited for at most ``timeout``.

    When the lock cannot be had (no directory, no locking, timed out) the holder
    proceeds unlocked: a duplicate exchange is better than a failure.
    """

    def __init__(self, path: str, timeout: float, cache: TokenCache) -> None:
        self.path = path
        self.timeout = timeout
        self.cache = cache
        self.fd: int | None = None
        self.acquired = False

    def __enter__(self) -> _Lock:
        if not system.can_lock():  # said once by --verbose and doctor (system.limitations)
            return self
        if self.cache.problem(create=True) is not None:
            return self
        self.fd = system.open_own_file(self.path, os.O_RDWR | os.O_CREAT)
        if self.fd is None:
            return self
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            taken = system.try_lock(self.fd)
            if taken:
                self.acquired = True
                return self
            if taken is None or time.monotonic() >= deadline:
                return self
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            if self.acquired:
                system.unlock(self.fd)
            os.close(self.fd)  # on POSIX, closing alone releases the flock
            self.fd = None


def lifetime_from_response(body: dict, token: str, now: float) -> tuple[float, float]:
    """(expires_at, lifetime) from a token response, per the Docker token spec.

    ``expires_in`` (counted from ``issued_at`` when present), else the JWT ``exp``
    claim, else the specification's default of 60 seconds. Every number is a
    server's word: it is used only when real and plausible, and a lifetime is
    clamped to (0, MAX_LIFETIME], so the result is always printable and storable.
    """
    expires_in = body.get("expires_in")
    if _is_number(expires_in) and expires_in > 0:  # NaN fails the comparison
        lifetime = min(float(expires_in), MAX_LIFETIME)  # also clamps infinity
        issued = _plausible_time(_parse_rfc3339(body.get("issued_at")), now)
        start = issued if issued is not None else now
        return min(start + lifetime, now + MAX_LIFETIME), lifetime
    claims = _jwt_claims(token)
    if claims is not None:
        exp = _plausible_time(claims.get("exp"), now)
        if exp is not None:
            iat = _plausible_time(claims.get("iat"), now)
            start = iat if iat is not None else now
            expires_at = min(exp, now + MAX_LIFETIME)
            return expires_at, min(max(expires_at - start, 1.0), MAX_LIFETIME)
    return now + DEFAULT_LIFETIME, DEFAULT_LIFETIME


def _plausible_time(value: object, now: float) -> float | None:
    """A finite Unix time no earlier than MAX_LIFETIME ago, else None (1e300 is
    kept and clamped by the caller; NaN, infinities and the distant past are not)."""
    if _is_number(value) and now - MAX_LIFETIME <= value < float("inf"):
        return float(value)
    return None


def _jwt_claims(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    import base64

    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def _parse_rfc3339(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    from datetime import datetime

    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat does not take more than 6 fractional digits.
    if "." in text:
        head, _, tail = text.partition(".")
        count = 0
        while count < len(tail) and tail[count].isdigit():
            count += 1
        digits, rest = tail[:count], tail[count:]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


# 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z as Unix time: four-digit years.
_RFC3339_RANGE = (-62135596800, 253402300799)


def format_rfc3339(timestamp: float) -> str:
    """UTC, whole seconds: 2026-11-28T01:17:52Z. Always a valid four-digit year."""
    low, high = _RFC3339_RANGE
    seconds = int(timestamp) if low <= timestamp <= high else (high if timestamp > 0 else low)
    t = time.gmtime(seconds)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}Z"

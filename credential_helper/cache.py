"""A token cache that many concurrent helpers can share safely.

Entries live in ``$XDG_CACHE_HOME/ollama-credential-helper/`` (default
``~/.cache/ollama-credential-helper/``), directory 0700, files 0600, each written
to a temporary file and renamed into place so a reader never sees a torn entry.
A lock file beside each entry gives single flight: the first caller exchanges,
the others wait, look again and find its token.

The cache is an optimisation, never a source of failure: an unreadable,
corrupt or unwritable cache behaves as a miss.

Kept lean on purpose: a cache hit must not import cryptography or urllib3.
"""


import json
import os
import time

try:  # the builtin SHA-256; hashlib would load OpenSSL (~10 ms) on the hit path
    from _sha256 import sha256
except ImportError:  # pragma: no cover - Python 3.12+ renamed it
    try:
        from _sha2 import sha256  # type: ignore[no-redef]
    except ImportError:
        from hashlib import sha256  # type: ignore[no-redef]

APP_DIR = "ollama-credential-helper"
ENTRY_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
# Docker registry token specification: a response without expires_in lasts 60 s.
DEFAULT_LIFETIME = 60.0
MAX_SAFETY_MARGIN = 30.0
MAX_ENTRY_BYTES = 64 * 1024


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative path
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, APP_DIR)


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


class TokenCache:
    """The on-disk cache. Every method swallows OS errors by design (a miss)."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or default_cache_dir()

    def _path(self, key: str, suffix: str) -> str:
        return os.path.join(self.directory, key + suffix)

    def _usable_dir(self, create: bool) -> bool:
        """The directory exists (or was made), is ours and is private."""
        try:
            if create:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.stat(self.directory)
        except OSError:
            return False
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            return False  # someone else's directory: never trust or feed it
        if info.st_mode & 0o077:
            try:
                os.chmod(self.directory, 0o700)
            except OSError:
                return False
        return True

    def lookup(self, key: str, now: float | None = None) -> Entry | None:
        """A fresh entry, or None (missing, stale, corrupt or unreadable)."""
        now = time.time() if now is None else now
        try:
            fd = os.open(self._path(key, ENTRY_SUFFIX), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if info.st_mode & 0o077 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
                return None
            data = os.read(fd, MAX_ENTRY_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        try:
            raw = json.loads(data)
            entry = Entry(raw["token"], float(raw["expires_at"]), float(raw["lifetime"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            return None
        if not isinstance(entry.token, str) or not entry.token or entry.lifetime <= 0:
            return None
        return entry if entry.is_fresh(now) else None

    def store(self, key: str, entry: Entry) -> bool:
        """Write atomically (temporary file, fsync, rename); False if not cached."""
        if not self._usable_dir(create=True):
            return False
        target = self._path(key, ENTRY_SUFFIX)
        temporary = f"{target}.{os.getpid()}.tmp"
        payload = json.dumps(
            {"token": entry.token, "expires_at": entry.expires_at, "lifetime": entry.lifetime}
        ).encode()
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
            return True
        except OSError:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            return False

    def erase(self, key: str) -> None:
        for suffix in (ENTRY_SUFFIX, LOCK_SUFFIX):
            try:
                os.unlink(self._path(key, suffix))
            except OSError:
                pass

    def erase_all(self) -> int:
        """Forget every entry; returns how many entries were removed."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        removed = 0
        for name in names:
            if name.endswith((ENTRY_SUFFIX, LOCK_SUFFIX)) or name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(self.directory, name))
                    removed += name.endswith(ENTRY_SUFFIX)
                except OSError:
                    pass
        return removed

    def lock(self, key: str, timeout: float) -> "_Lock":
        return _Lock(self._path(key, LOCK_SUFFIX), timeout, self)


class _Lock:
    """An exclusive flock on the entry's lock file, waited for at most ``timeout``.

    When the lock cannot be had (no directory, no flock, timed out) the holder
    proceeds unlocked: a duplicate exchange is better than a failure.
    """

    def __init__(self, path: str, timeout: float, cache: TokenCache) -> None:
        self.path = path
        self.timeout = timeout
        self.cache = cache
        self.fd: int | None = None
        self.acquired = False

    def __enter__(self) -> "_Lock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        if not self.cache._usable_dir(create=True):
            return self
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError:
            return self
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.acquired = True
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return self
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            except OSError:
                return self

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def lifetime_from_response(body: dict, token: str, now: float) -> tuple[float, float]:
    """(expires_at, lifetime) from a token response, per the Docker token spec.

    ``expires_in`` (counted from ``issued_at`` when present), else the JWT ``exp``
    claim, else the specification's default of 60 seconds.
    """
    expires_in = body.get("expires_in")
    if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and expires_in > 0:
        issued = _parse_rfc3339(body.get("issued_at"))
        start = issued if issued is not None else now
        return start + float(expires_in), float(expires_in)
    exp = _jwt_claims(token)
    if exp is not None:
        claim_exp = exp.get("exp")
        if isinstance(claim_exp, (int, float)) and not isinstance(claim_exp, bool):
            iat = exp.get("iat")
            start = float(iat) if isinstance(iat, (int, float)) and not isinstance(iat, bool) else now
            return float(claim_exp), max(float(claim_exp) - start, 1.0)
    return now + DEFAULT_LIFETIME, DEFAULT_LIFETIME


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


def format_rfc3339(timestamp: float) -> str:
    """UTC, whole seconds: 2026-11-28T01:17:52Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))

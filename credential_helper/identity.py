"""The Ed25519 identity: find it, check it is safe to use, load it, sign with it.

Only this module imports ``cryptography``, and only when a key is actually
parsed: a cache hit needs the file's bytes (to key the cache) but never the key.
"""

from __future__ import annotations

import os
import stat

from . import system
from .errors import IdentityError, KeyNotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAX_KEY_FILE_BYTES = 64 * 1024
SYSTEM_SERVICE_PUBKEY = "/usr/share/ollama/.ollama/id_ed25519.pub"


def default_identity_path() -> str:
    """``~/.ollama/id_ed25519`` under the home directory, as Ollama's auth/auth.go
    uses it on every system (os.UserHomeDir: %USERPROFILE% on Windows)."""
    return os.path.join(os.path.expanduser("~"), ".ollama", "id_ed25519")


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read the key file after the checks ssh makes; raise IdentityError if unsafe.

    Refuses a file readable or writable by group or others (ssh's rule; on
    Windows, where mode bits mean nothing, the profile's ACL is relied on), a
    non-regular file (a FIFO planted at the path never hangs: system.read_file),
    and anything too large to be a key. The key may be a symlink (people link
    ~/.ollama to another disk), so links are followed.
    """
    path = os.fspath(path)
    try:
        data, _ = system.read_file(path, MAX_KEY_FILE_BYTES, check=_refuse_too_open)
    except _TooOpen as exc:
        # A .pub given as --identity is 0644 by design: say which file was meant, not chmod.
        _refuse_public_key(_start_of(path), path)
        raise IdentityError(
            f"the key {path} is accessible by group or others (mode {stat.S_IMODE(exc.mode):04o}); "
            f"{system.permission_advice(path)}",
            fix=system.permission_advice(path).removeprefix("run: "),
        ) from None
    except FileNotFoundError:
        if os.path.lexists(path):
            # Something is there (a dangling symlink): an identity problem, never
            # the "no key file" that would allow the OLLAMA_API_KEY fallback.
            raise IdentityError(f"the key {path} is a symlink to a file that does not exist") from None
        raise KeyNotFoundError(_missing_key_message(path), path) from None
    except system.FileTooLarge:
        raise IdentityError(f"the key {path} is not a valid private key (too large)") from None
    except system.RefusedFile:
        raise IdentityError(f"the key {path} is not a regular file") from None
    except PermissionError:
        raise IdentityError(f"cannot read the key {path}: permission denied") from None
    except OSError as exc:
        raise IdentityError(f"cannot read the key {path}: {exc.strerror}") from None
    return data


class _TooOpen(Exception):
    def __init__(self, mode: int) -> None:
        self.mode = mode


def _refuse_too_open(info: os.stat_result) -> None:
    if system.too_open(info):
        raise _TooOpen(info.st_mode)


def _start_of(path: str) -> bytes:
    """The first bytes of the file refused as too open, to tell a public key by."""
    try:
        return system.read_file(path, 4096)[0]
    except OSError:
        return b""


def _missing_key_message(path: str) -> str:
    if os.path.abspath(path) != os.path.abspath(default_identity_path()):
        # A path someone typed: a typo is likelier than a key still to be made, and
        # generating one there would give the operator a key no one meant to send.
        return f"no key file at {path}: check the path given as --identity (identity=){_near_misses(path)}"
    message = (
        f"no identity at {path}: create one with 'ollama-credential-helper key "
        "--generate' (or 'ollama signin'), or set OLLAMA_API_KEY"
    )
    if os.path.exists(SYSTEM_SERVICE_PUBKEY):
        message += (
            f"; note that Ollama's system service has its own key under "
            f"{os.path.dirname(SYSTEM_SERVICE_PUBKEY)}/, which you cannot read"
        )
    return message


def _near_misses(path: str) -> str:
    """'; did you mean ...' naming private keys beside ``path`` with a similar name, or why not."""
    import difflib

    directory = os.path.dirname(os.path.abspath(path))
    try:
        names = [name for name in os.listdir(directory) if not name.endswith(".pub")]
    except FileNotFoundError:
        return f" ({directory} does not exist)"
    except OSError:
        return ""
    close = difflib.get_close_matches(os.path.basename(path), names, n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(os.path.join(directory, name) for name in close)}?" if close else ""


PUBLIC_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-", "ssh-dss")


def _refuse_public_key(data: bytes, path: str) -> None:
    """Raise IdentityError when ``data`` is a public key line (an ``.pub`` file), naming the private key."""
    first = data.lstrip().split(b" ", 1)[0].decode("ascii", "replace")
    if b"PRIVATE KEY" in data or not first.startswith(PUBLIC_KEY_TYPES):
        return
    private = path[:-4] if path.endswith(".pub") else None
    meant = f"; the private key is {private}" if private and os.path.lexists(private) else ""
    raise IdentityError(
        f"{path} is a public key ({first} ...): --identity (identity=) takes the private key{meant}",
        fix=f"--identity {private or 'the private key'}",
    )


class Identity:
    """An Ed25519 private key and the public forms Ollama derives from it."""

    def __init__(self, private_key: Ed25519PrivateKey, path: str | None = None) -> None:
        from cryptography.hazmat.primitives import serialization

        self._private_key = private_key
        self.path = path
        line = private_key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        #: ``ssh-ed25519 AAAA...`` without a comment (ssh.MarshalAuthorizedKey).
        self.public_key_line: str = line.decode("ascii")
        #: The second field of that line: what precedes ':' in a signature.
        self.public_key_b64: str = self.public_key_line.split(" ")[1]

    def __repr__(self) -> str:
        return f"<Identity {self.public_key_line} path={self.path!r}>"

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it (unpadded base64)."""
        import base64

        from .keys import fingerprint

        return fingerprint(base64.b64decode(self.public_key_b64))

    def sign(self, data: str | bytes) -> str:
        """auth/auth.go Sign: ``<public key base64>:<standard base64 signature>``."""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        import base64

        signature = self._private_key.sign(data)
        return f"{self.public_key_b64}:{base64.b64encode(signature).decode()}"


def parse_private_key(data: bytes, path: str = "<memory>") -> Identity:
    """Parse an unencrypted OpenSSH or PKCS#8 PEM Ed25519 key (as ssh.ParsePrivateKey)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        raise _encrypted(path)
    key: object
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        elif b"-----BEGIN" in data and b"PRIVATE KEY-----" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            raise ValueError("no private key block")
    except TypeError:
        # cryptography raises TypeError when a password is needed but not given.
        raise _encrypted(path) from None
    except (ValueError, IndexError, OverflowError):
        _refuse_public_key(data, path)
        raise IdentityError(
            f"{path} is not a valid private key: expected an unencrypted OpenSSH "
            "or PKCS#8 PEM Ed25519 key such as 'ollama' or 'ssh-keygen -t ed25519' writes"
        ) from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm, among others
        raise IdentityError(f"{path} holds a key this tool cannot use ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        kind = type(key).__name__.replace("PrivateKey", "").replace("_", "")
        kind = {"RSA": "an RSA", "EllipticCurve": "an ECDSA", "EC": "an ECDSA", "DSA": "a DSA"}.get(
            kind, f"a {kind or 'non-Ed25519'}"
        )
        raise IdentityError(
            f"{path} is {kind} key; only Ed25519 keys are supported (create one with 'ollama-credential-helper key --generate')"
        )
    return Identity(key, path)


def _encrypted(path: str) -> IdentityError:
    return IdentityError(
        f"{path} is passphrase-protected; Ollama's keys are unencrypted: remove the "
        f"passphrase with 'ssh-keygen -p -N \"\" -f {path}' or use another --identity",
        fix=f'ssh-keygen -p -N "" -f {path}',
    )


def load_identity(path: str | os.PathLike[str] | None = None) -> Identity:
    """Load the identity at ``path`` (default ``~/.ollama/id_ed25519``), checked."""
    key_path = os.fspath(path) if path is not None else default_identity_path()
    return parse_private_key(read_key_file(key_path), key_path)


def api_key_from_env() -> str | None:
    """OLLAMA_API_KEY when it is set and non-empty."""
    value = os.environ.get("OLLAMA_API_KEY", "").strip()
    return value or None

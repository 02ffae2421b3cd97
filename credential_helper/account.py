"""Linking an identity to an ollama.com account, and proving the link works."""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Callable

from . import policy, protocol, system
from .errors import IdentityError, ServerRefusedError
from .identity import Identity, default_identity_path, parse_private_key

CONNECT_PAGE = "https://ollama.com/connect"


def path_escape(text: str) -> str:
    """Go's url.PathEscape (encodePathSegment): '/', ';', ',', '?' are escaped too."""
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch in "-_.~$&+:=@"):
            out.append(ch)
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def connect_url(identity: Identity, hostname: str | None = None) -> str:
    """server/routes.go signinURL: name is the host name, key the base64url line."""
    name = hostname if hostname is not None else socket.gethostname()
    key = base64.urlsafe_b64encode(identity.public_key_line.encode()).rstrip(b"=").decode()
    return f"{CONNECT_PAGE}?name={path_escape(name)}&key={key}"


def generate_identity(path: str | os.PathLike[str] | None = None) -> Identity:
    """Create a key as ``ollama serve`` does (cmd/cmd.go initializeKeypair).

    Unencrypted OpenSSH, empty comment, file 0600, directory 0755, and
    ``<path>.pub`` 0644. Each file is written completely or not at all (a
    temporary file, synced, then linked into place: system.write_new_file), so
    a crash, a full disk or a missing os.fchmod never leaves an empty key that
    would stop Ollama itself. Refuses when either file already exists.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key_path = os.fspath(path) if path is not None else default_identity_path()
    pub_path = key_path + ".pub"
    for existing in (key_path, pub_path):
        if os.path.lexists(existing):
            raise IdentityError(f"{existing} already exists; refusing to overwrite it")
    directory = os.path.dirname(os.path.abspath(key_path))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise IdentityError(f"cannot create {directory}: {exc.strerror}") from None
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    identity = parse_private_key(pem, key_path)
    _write_new(key_path, pem, 0o600)
    try:
        _write_new(pub_path, (identity.public_key_line + "\n").encode(), 0o644)
    except IdentityError:
        os.unlink(key_path)  # leave nothing half-made
        raise
    return identity


def _write_new(path: str, data: bytes, mode: int) -> None:
    try:
        system.write_new_file(path, data, mode)
    except FileExistsError:
        raise IdentityError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise IdentityError(f"cannot create {path}: {exc.strerror or exc}") from None


def whoami(
    base_url: str | None = None, *, identity: str | None = None, timeout: float = 10.0, log: Callable[[str], None] | None = None
) -> dict:
    """POST <base>/api/me, signed (scheme 2): the proof that keyless auth works.

    ``base_url`` is checked under Ollama's rules for OLLAMA_CLOUD_BASE_URL (None:
    https://ollama.com). Returns {"name", "email", "plan"}, each cleaned by the
    server-text sanitiser. A 401, or a 200 with an empty name, means the key is
    not linked: ServerRefusedError naming the connect URL.
    """
    from . import transport
    from .client import sign_request
    from .tokens import raise_for_status
    from .sanitize import server_text

    log = log or (lambda message: None)
    base = policy.cloud_base_url(base_url)
    url = f"{base}/api/me"
    signed = sign_request("POST", url, identity=identity)
    log(f"POST {signed.url} (Authorization: [redacted], source {signed.source})")
    target = protocol.parse_url(signed.url)
    response = transport.send("POST", target, headers={"Authorization": signed.authorization}, body=b"", timeout=timeout)
    log(f"{target.host} answered {response.status}")
    link_hint = _link_hint(identity, signed.source)
    if response.status == 401:
        raise ServerRefusedError(f"{target.host} does not recognise this key (401){link_hint}", 401)
    raise_for_status(response, target.host, "POST /api/me")
    body = response.json_object(target.host)
    fields = {key.lower(): value for key, value in body.items() if isinstance(key, str)}
    account = {
        name: server_text(fields[name], response.secrets) if isinstance(fields.get(name), str) else None
        for name in ("name", "email", "plan")
    }
    if not account["name"]:
        raise ServerRefusedError(f"this key is not linked to an ollama.com account{link_hint}")
    return account


def _link_hint(identity: str | None, source: str) -> str:
    if source != "ed25519":
        return "; check OLLAMA_API_KEY"
    try:
        from .identity import load_identity

        return f"; link it at {connect_url(load_identity(identity))}"
    except IdentityError:
        return ""

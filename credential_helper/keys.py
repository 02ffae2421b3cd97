"""A public Ed25519 key in the forms Ollama and OpenSSH write it, one home for each.

- the SSH wire form (RFC 8709 section 4): string ``ssh-ed25519``, string of the
  32-byte key, exactly 51 bytes;
- its standard base64: the second field of an ``id_ed25519.pub`` or
  ``authorized_keys`` line, and what precedes ``:`` in Ollama's signature
  (auth/auth.go ``Sign``);
- the fingerprint ``ssh-keygen -l`` prints: ``SHA256:`` and the unpadded base64
  of the SHA-256 of the wire form.

- why a field is not one (``key_text_problem``): cut short, another kind of
  key, not base64; and the key type inside a key's base64 (``blob_key_type``).

Used by the identity (``whoami``, ``doctor``, the proxy's start line), the
gate's key file and its verifier. Pure: no cryptography is imported here.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re

KEY_TYPE = "ssh-ed25519"
WIRE_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
WIRE_KEY_BYTES = len(WIRE_PREFIX) + 32


def is_ed25519_blob(blob: bytes) -> bool:
    """True for exactly the 51-byte wire form of an Ed25519 public key."""
    return len(blob) == WIRE_KEY_BYTES and blob.startswith(WIRE_PREFIX)


@functools.lru_cache(maxsize=256)  # the gate asks for the same few keys' on every request
def fingerprint(blob: bytes) -> str:
    """``SHA256:<unpadded base64 of SHA-256(blob)>`` exactly as ``ssh-keygen -l`` prints it."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def line(blob: bytes) -> str:
    """``ssh-ed25519 AAAA...`` (ssh.MarshalAuthorizedKey, without its newline)."""
    return f"{KEY_TYPE} {base64.b64encode(blob).decode('ascii')}"


# The base64 field of an Ed25519 key: 51 bytes, 68 characters with its one '='.
KEY_TEXT_CHARS = len(base64.b64encode(bytes(WIRE_KEY_BYTES)))
# A key type as OpenSSH names them: ssh-rsa, ecdsa-sha2-nistp256, sk-ssh-ed25519@openssh.com...
_KEY_TYPE_NAME = re.compile(r"(?:ssh-|ecdsa-|sk-)[a-z0-9@.-]+|[a-z0-9.-]+@openssh\.com")


def _decoded_prefix(text: str) -> bytes | None:
    """What the text's whole 4-character groups decode to (a cut key decodes up to the cut)."""
    if not text.isascii():
        return None
    try:
        return base64.b64decode(text[: len(text) - len(text) % 4], validate=True)
    except ValueError:
        return None


def blob_key_type(text: str) -> str | None:
    """The key type written inside the base64 of an SSH public key (RFC 4253
    section 6.6: a length-prefixed name first), even of one cut short; None when
    the text is not one."""
    raw = _decoded_prefix(text)
    if raw is None or len(raw) < 5:
        return None
    size = int.from_bytes(raw[:4], "big")
    name = raw[4 : 4 + size].decode("ascii", "replace")
    return name if 0 < size <= 64 and len(name) == size and _KEY_TYPE_NAME.fullmatch(name) else None


def key_text_problem(text: str, blob: bytes | None) -> str:
    """Why ``text`` (the field after ``ssh-ed25519``; ``blob`` its canonical decoding
    or None) is not an Ed25519 public key, named as the fault it most likely is (a
    cut copy, another kind of key) without showing the key. ``ssh-keygen -l`` says
    only "not a public key" and sshd skips the line silently."""
    raw = blob if blob is not None else _decoded_prefix(text)
    if raw and len(raw) < WIRE_KEY_BYTES and WIRE_PREFIX.startswith(raw[: len(WIRE_PREFIX)]):
        size = (
            f"{len(text)} of the {KEY_TEXT_CHARS} characters of an Ed25519 key"
            if len(text) < KEY_TEXT_CHARS
            else f"{len(raw)} of the {WIRE_KEY_BYTES} bytes of an Ed25519 key"
        )
        return f"the public key is cut short ({size}); copy the whole line from the .pub file"
    kind = blob_key_type(text)
    if kind is not None and kind != KEY_TYPE:
        return f"the public key is an {kind} key, not the {KEY_TYPE} key its key type says (only {KEY_TYPE} keys can sign for Ollama)"
    if blob is None:
        return "the public key is not valid base64"
    if blob.startswith(WIRE_PREFIX):
        return f"the public key is longer than an Ed25519 key ({len(blob)} bytes, not {WIRE_KEY_BYTES})"
    return "the public key is not an SSH public key (its bytes do not start with a key type)"

"""A public Ed25519 key in the forms Ollama and OpenSSH write it, one home for each.

- the SSH wire form (RFC 8709 section 4): string ``ssh-ed25519``, string of the
  32-byte key, exactly 51 bytes;
- its standard base64: the second field of an ``id_ed25519.pub`` or
  ``authorized_keys`` line, and what precedes ``:`` in Ollama's signature
  (auth/auth.go ``Sign``);
- the fingerprint ``ssh-keygen -l`` prints: ``SHA256:`` and the unpadded base64
  of the SHA-256 of the wire form.

Used by the identity (``whoami``, ``doctor``, the proxy's start line), the
gate's key file and its verifier. Pure: no cryptography is imported here.
"""

from __future__ import annotations

import base64
import hashlib

KEY_TYPE = "ssh-ed25519"
WIRE_PREFIX = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20"
WIRE_KEY_BYTES = len(WIRE_PREFIX) + 32


def is_ed25519_blob(blob: bytes) -> bool:
    """True for exactly the 51-byte wire form of an Ed25519 public key."""
    return len(blob) == WIRE_KEY_BYTES and blob.startswith(WIRE_PREFIX)


def fingerprint(blob: bytes) -> str:
    """``SHA256:<unpadded base64 of SHA-256(blob)>`` exactly as ``ssh-keygen -l`` prints it."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def line(blob: bytes) -> str:
    """``ssh-ed25519 AAAA...`` (ssh.MarshalAuthorizedKey, without its newline)."""
    return f"{KEY_TYPE} {base64.b64encode(blob).decode('ascii')}"

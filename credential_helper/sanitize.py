"""The one sanitiser for text a server chose, before it may reach a terminal or log.

Anything a server sends back (status line, reason phrase, a header such as
``Location``, a body excerpt, a ``whoami`` account name) can echo our
``Authorization`` value, and can carry escape sequences that repaint the
terminal or a CR/LF that forges a second stderr line. :func:`server_text`
removes both; every message built from server text goes through it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable

REDACTED = "[redacted]"
# Shorter strings are not secrets worth hiding, and hiding them would shred text.
MIN_SECRET_CHARS = 8
# A proxy password (from Basic credentials) is hidden from this length on; shorter
# ones would shred ordinary words, and are guessable anyway.
MIN_PASSWORD_CHARS = 4
# ESC-introduced sequences (CSI "ESC [ ... final", OSC "ESC ] ... BEL|ST", and
# two-byte escapes), and their single-character C1 forms.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[@-Z\\-_]"
)


def secret_parts(secrets: Iterable[str | None]) -> list[str]:
    """Each secret, and the pieces of it that are secret on their own.

    An Authorization value ``pub:sig`` gives ``pub:sig`` and ``sig`` (the public
    key alone is not secret, but it is harmless to hide); ``Bearer X`` gives
    ``X``; ``Basic B`` (RFC 7617) gives ``B``, the ``user:password`` it decodes
    to and the password. The base64 of the pair must be hidden whole: the
    password's own base64 appears inside it only when the user name's length
    keeps it aligned to three bytes.

    Always included, whatever the caller passes: ``OLLAMA_API_KEY`` and the
    credentials of every proxy the environment names (``proxy_env.environment_secrets``).
    """
    found: list[str] = []
    api_key = os.environ.get("OLLAMA_API_KEY", "").strip()
    for secret in (*secrets, api_key, *_environment_proxy_secrets()):
        if not isinstance(secret, str):
            continue
        secret = secret.strip()
        scheme, _, rest = secret.partition(" ")
        pieces = [secret]
        if scheme.lower() == "bearer":
            pieces = [rest.strip()]
        elif scheme.lower() == "basic":
            pair = _basic_pair(rest.strip())
            pieces = [rest.strip(), *pair[:1]]
            if pair and len(pair[1]) >= MIN_PASSWORD_CHARS and pair[1] not in found:
                found.append(pair[1])  # a password is worth hiding even when short
        for piece in pieces:
            for part in (piece, *piece.split(":")):
                if len(part) >= MIN_SECRET_CHARS and part not in found:
                    found.append(part)
    found.sort(key=len, reverse=True)  # the whole before its parts
    return found


def _basic_pair(encoded: str) -> list[str]:
    """``user:password`` and the password from Basic credentials (RFC 7617 §2)."""
    import base64
    import binascii

    try:
        pair = base64.b64decode(encoded, validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError):
        return []
    return [pair, pair.partition(":")[2]]


def _environment_proxy_secrets() -> tuple[str, ...]:
    names = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
    if not any(os.environ.get(name) for name in names):
        return ()  # the common case imports nothing
    from .proxy_env import environment_secrets

    return environment_secrets(os.environ)


def _char_forms(ch: str) -> str:
    """A regex for one character as written raw, %-encoded, JSON-escaped or base64url."""
    forms = {re.escape(ch)}
    for byte in ch.encode("utf-8", "surrogatepass"):
        forms.add("%%%02x" % byte)
    if len(ch.encode("utf-8", "surrogatepass")) == 1:
        forms.add(r"\\u00%02x" % ord(ch))
        forms.add(re.escape("\\" + ch))  # JSON's "\/" and friends
    if ch == "+":
        forms.add("-")  # base64 to base64url
        forms.add(" ")  # '+' read as a space by a form decoder
    elif ch == "/":
        forms.add("_")
    return "(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")"


def _pattern(secret: str) -> str:
    body = secret.rstrip("=")
    padding = len(secret) - len(body)
    tail = "(?:=|%3d|\\\\u003d)" * padding
    regex = "".join(_char_forms(ch) for ch in body)
    if padding:
        regex += "(?:" + tail + ")?"  # base64url drops the padding
    return regex


def _encoded_forms(secret: str) -> list[str]:
    """The secret itself base64- and base64url-encoded (an echo that encodes it)."""
    import base64

    raw = secret.encode("utf-8", "surrogatepass")
    std = base64.b64encode(raw).decode().rstrip("=")
    return [std, std.replace("+", "-").replace("/", "_")]


def redact(text: str, secrets: Collection[str | None] = ()) -> str:
    """Replace every secret, in raw, %-encoded, JSON-escaped and base64url forms."""
    parts = secret_parts(secrets)
    if not parts:
        return text
    alternatives = []
    for part in parts:
        alternatives.append(_pattern(part))
        # With its padding, if any: a lone "=" left behind would hint at the length.
        alternatives.extend(re.escape(form) + "(?:=|%3d){0,2}" for form in _encoded_forms(part))
    return re.sub("|".join(alternatives), REDACTED, text, flags=re.IGNORECASE)


def printable(text: str) -> str:
    """Escape sequences removed; every other non-printable becomes one space;
    runs of white space collapse. The result is one line that paints nothing."""
    if text.isascii() and text.isprintable():
        # No ESC, no C1, no control: nothing to remove (most log fields, once per request each).
        return " ".join(text.split())
    text = _ESCAPE_SEQUENCE.sub("", text)
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def shown(text: str, limit: int = 80) -> str:
    """Untrusted text (a file's line, a client's path, an argument) for one line of
    a message or a log: :func:`printable`, at most ``limit`` characters, then ``...``."""
    text = printable(text)
    return text if len(text) <= limit else text[:limit] + "..."


def quoted(text: str, limit: int = 80) -> str:
    """:func:`shown` in quotes, for text quoted inside a sentence."""
    return repr(shown(text, limit))


def server_text(text: object, secrets: Collection[str | None] = (), limit: int | None = 200) -> str:
    """Server-chosen text made safe for stderr: no secret, one printable line,
    at most ``limit`` characters (then ``...``)."""
    if isinstance(text, bytes):
        out = text.decode("utf-8", "replace")
    else:
        out = text if isinstance(text, str) else str(text)
    if limit is not None:
        # Bound the work. Far enough out that redactions (a 140-character secret
        # percent-encoded becomes "[redacted]") cannot pull a secret cut in two
        # by this bound into the first ``limit`` characters.
        out = out[: limit * 64 + 4096]
    # Redact before and after cleaning: an escape sequence can split a secret,
    # and a secret can contain nothing the cleaning would change.
    out = redact(printable(redact(out, secrets)), secrets)
    if limit is not None and len(out) > limit:
        out = out[:limit] + "..."
    return out

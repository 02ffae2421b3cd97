"""The one sanitiser for text a server chose, before it may reach a terminal or log.

Anything a server sends back (status line, reason phrase, a header such as
``Location``, a body excerpt, a ``whoami`` account name) can echo our
``Authorization`` value, and can carry escape sequences that repaint the
terminal or a CR/LF that forges a second stderr line. :func:`server_text`
removes both; every message built from server text goes through it.
"""


import os
import re

REDACTED = "[redacted]"
# Shorter strings are not secrets worth hiding, and hiding them would shred text.
MIN_SECRET_CHARS = 8
# ESC-introduced sequences (CSI "ESC [ ... final", OSC "ESC ] ... BEL|ST", and
# two-byte escapes), and their single-character C1 forms.
_ESCAPE_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[@-Z\\-_]"
)


def secret_parts(secrets) -> list[str]:
    """Each secret, and the pieces of it that are secret on their own.

    An Authorization value ``pub:sig`` gives ``pub:sig`` and ``sig`` (the public
    key alone is not secret, but it is harmless to hide); ``Bearer X`` gives ``X``.
    ``OLLAMA_API_KEY`` from the environment is always included.
    """
    found: list[str] = []
    api_key = os.environ.get("OLLAMA_API_KEY", "").strip()
    for secret in (*secrets, api_key):
        if not isinstance(secret, str):
            continue
        secret = secret.strip()
        if secret[:7].lower() == "bearer ":
            secret = secret[7:].strip()
        for part in (secret, *secret.split(":")):
            if len(part) >= MIN_SECRET_CHARS and part not in found:
                found.append(part)
    found.sort(key=len, reverse=True)  # the whole before its parts
    return found


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


def redact(text: str, secrets=()) -> str:
    """Replace every secret, in raw, %-encoded, JSON-escaped and base64url forms."""
    parts = secret_parts(secrets)
    if not parts:
        return text
    alternatives = []
    for part in parts:
        alternatives.append(_pattern(part))
        alternatives.extend(re.escape(form) for form in _encoded_forms(part))
    return re.sub("|".join(alternatives), REDACTED, text, flags=re.IGNORECASE)


def printable(text: str) -> str:
    """Escape sequences removed; every other non-printable becomes one space;
    runs of white space collapse. The result is one line that paints nothing."""
    text = _ESCAPE_SEQUENCE.sub("", text)
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def server_text(text, secrets=(), limit: int | None = 200) -> str:
    """Server-chosen text made safe for stderr: no secret, one printable line,
    at most ``limit`` characters (then ``...``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    if limit is not None:
        # Bound the work. Far enough out that redactions (a 140-character secret
        # percent-encoded becomes "[redacted]") cannot pull a secret cut in two
        # by this bound into the first ``limit`` characters.
        text = text[: limit * 64 + 4096]
    # Redact before and after cleaning: an escape sequence can split a secret,
    # and a secret can contain nothing the cleaning would change.
    text = redact(printable(redact(text, secrets)), secrets)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text

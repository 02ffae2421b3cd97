"""The gate's key file: Ollama's draft ``~/.ollama/authorized_keys``, parsed and watched.

The format is the one of ollama/ollama PR #11574 (``auth/authorized_keys.go``,
commit 5968989, "server: add authorized_keys file"), so one file serves both::

    [<options>] <key type> <public key> [<name>] [<endpoint>,...]

- ``<options>`` are sshd's (``from=``, ``expiry-time=``) and the gate's own
  (``models=``, ``max-concurrent=``), in sshd's syntax: key_options.py. Ollama's
  draft skips a line whose first field is not a key type, so there it fails
  closed.
- ``#`` starts a comment line; blank lines are ignored; runs of white space
  (Go's ``\\s``: space, tab, CR, LF, FF) count as one separator, and the fourth
  field is everything after the name, split on ``,`` with each item trimmed.
- ``<key type>`` is ``ssh-ed25519`` or ``*``; ``<public key>`` is the base64 of
  the SSH wire-format key, or ``*`` for "any key whose signature verifies"
  (``* <key>`` is invalid, as in the draft).
- ``<name>`` is a label for logs; a missing name or ``*`` means "none" (the draft
  says ``default``; here the key's fingerprint is shown instead).
- ``<endpoint>`` is ``*`` (every endpoint; anywhere in the list it wins, as in the
  draft) or a path matched *exactly* against the request's canonical path: the
  draft compares ``c.Request.URL.Path`` with ``==``, with no prefixes and no
  patterns. A missing list means ``*``, so a plain ``id_ed25519.pub`` line
  (``ssh-ed25519 AAAA... comment``) grants full access under its comment.
- Several lines for one key add up (the draft merges their endpoint lists).

Where this module is stricter than the draft, it is so that an odd line can only
grant less (issue 19: "the key file never widens a grant"): a line the draft
would accept but that cannot mean what its author intended is skipped with a
warning naming its line number. Such lines are:

- an endpoint that is not a canonical path, or ``/api/*`` read as a prefix;
- a name with control or non-ASCII characters (it would reach a header);
- a name that can only be an endpoint list (it starts with ``/`` or holds a
  ``,``): ``ssh-ed25519 AAAA... /api/tags`` lost its name, and the draft would
  read ``/api/tags`` as the name and grant every endpoint;
- a name that is one of the gate's options (``models="small"``, written after the
  key where sshd reads a comment): as a name the line would grant without it;
- a line for any key (``* *``) without an endpoint list: ``* * /api/tags`` and
  ``* * name`` are ``* * * /api/tags`` with a field missing, and the draft would
  give every key every endpoint. A line for any key states its endpoints;
- a first line that starts with a UTF-8 byte order mark (some Windows editors
  write one): sshd and the draft read the mark as part of the key type and skip
  the line too, so the one file means the same to all three.

A name in angle brackets (``<name>``, the unknown-key hint's placeholder pasted
as is) is warned about, not skipped: a name only labels a grant, so the line
grants what it says and no more; the warning asks for the holder's name.

Nothing here ever raises on the file's content. Reading the file from disk
(safe paths, reloads, writes in progress) is ``keyfile.py``'s.
"""

from __future__ import annotations

import base64
import os
import re
from typing import TYPE_CHECKING

from ..keys import KEY_TYPE, blob_key_type, fingerprint, is_ed25519_blob, key_text_problem
from ..sanitize import quoted
from .target import path_problem
from .key_options import NO_OPTIONS, KeyOptions, OptionError, looks_like_key_type, parse_options, split_options, tagless_patterns

MAX_FILE_BYTES = 1024 * 1024
MAX_LINE_CHARS = 8192
MAX_NAME_CHARS = 256
BOM = "\ufeff"

# A name field that is one of the gate's options (key_options.py), misplaced after the key.
_MISPLACED_OPTION = re.compile(r"(?i)(?:from|expiry-time|models|max-concurrent)=")
# A name that is a placeholder, as the unknown-key hint's '<name>': loaded, with a warning.
_PLACEHOLDER = re.compile(r"<.+>")
# Go's regexp \s, which the draft uses to collapse white space.
_GO_SPACE = re.compile(r"[\t\n\f\r ]+")
_GO_SPACE_CHARS = "\t\n\f\r "


def default_path() -> str:
    """``~/.ollama/authorized_keys``, as the draft's ``authkeyPath`` builds it."""
    return os.path.join(os.path.expanduser("~"), ".ollama", "authorized_keys")


def decode_base64(text: str) -> bytes | None:
    """Standard base64 with padding, accepted only in its one canonical spelling.

    Re-encoding must give the text back: no white space, no missing padding, no
    stray bits in the last character. Ollama's client (Go's StdEncoding) only
    ever writes that spelling, and a verifier gains nothing from others.
    """
    if not text or len(text) % 4 or not text.isascii():
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    if base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


def _missing_key_type(field: str) -> str | None:
    """The problem of a line whose first field (after any options) is a public key: the
    key type before it is missing. Named without showing the key (sshd skips such a
    line silently, ``ssh-keygen -l`` says "not a public key")."""
    kind = blob_key_type(field)
    if kind is None:
        return None
    if kind != KEY_TYPE:
        return f"the key type is missing before the public key, an {kind} key (only ssh-ed25519 keys can sign for Ollama)"
    return "the key type is missing before the public key; write ssh-ed25519 before it, as the .pub file has it"


class Grant:
    """One usable line of the file, as it applies to one key.

    ``name`` is the line's name, or the key's fingerprint when the line has
    none; ``fingerprint`` is the key's (for a wildcard line, the key that asked);
    ``options`` are the line's sshd-style options (key_options.py), NO_OPTIONS
    when it has none.
    """

    __slots__ = ("name", "fingerprint", "line", "endpoints", "wildcard", "named", "options")

    def __init__(
        self,
        name: str | None,
        fingerprint: str,
        line: int,
        endpoints: frozenset[str],
        wildcard: bool,
        options: KeyOptions = NO_OPTIONS,
    ) -> None:
        self.name: str = name if name is not None else fingerprint
        self.named: bool = name is not None
        self.fingerprint: str = fingerprint
        self.line: int = line
        self.endpoints: frozenset[str] = endpoints
        self.wildcard: bool = wildcard
        self.options: KeyOptions = options

    def allows(self, path: str) -> bool:
        """Exact match of the canonical path (no query), or ``*``: the draft's ``Authorize``."""
        return "*" in self.endpoints or path in self.endpoints

    def __repr__(self) -> str:
        return f"<Grant line {self.line} {self.name!r} {self.fingerprint} {sorted(self.endpoints)}>"


class _Line:
    __slots__ = ("line", "name", "endpoints", "options")

    def __init__(self, line: int, name: str | None, endpoints: frozenset[str], options: KeyOptions = NO_OPTIONS) -> None:
        self.line = line
        self.name = name
        self.endpoints = endpoints
        self.options = options


class AuthorizedKeys:
    """The parsed file: lines by key blob, and the wildcard lines. Immutable.

    ``problem`` is None for a set read from a usable file. A set made by
    :meth:`unusable` grants nothing and says why (the file is unsafe, missing or
    unreadable): the gate then refuses every signed request with 503, as sshd
    refuses every key when StrictModes rejects the file.
    """

    def __init__(
        self,
        by_key: dict[bytes, list[_Line]],
        wildcards: list[_Line],
        problem: str | None = None,
        members: AuthorizedKeys | None = None,
    ) -> None:
        self._by_key = by_key
        self._wildcards = wildcards
        self.problem = problem
        self._members = members

    @classmethod
    def unusable(cls, problem: str, last_good: AuthorizedKeys | None = None) -> AuthorizedKeys:
        """A set that grants nothing; ``last_good`` only tells members from strangers."""
        members = last_good._members if last_good is not None and last_good.problem is not None else last_good
        return cls({}, [], problem, members)

    def problem_for(self, key_blob: bytes) -> str:
        """What a refusal tells this key about the unusable file: the problem and its
        fix to a key the last usable file admitted (a member), less to a stranger
        (whose freshly made key also signs validly); the operator's log has it all."""
        members = self._members
        if members is not None and (members.is_listed(key_blob) or members._wildcards):
            return self.problem or ""
        return "the operator has been told the reason in the server's log"

    def grants_for(self, key_blob: bytes) -> list[Grant]:
        """The key's own lines (file order), then the wildcard lines (file order)."""
        own = self._by_key.get(key_blob, ())
        if not own and not self._wildcards:
            return []
        print_ = fingerprint(key_blob)
        grants = [Grant(entry.name, print_, entry.line, entry.endpoints, False, entry.options) for entry in own]
        grants += [Grant(entry.name, print_, entry.line, entry.endpoints, True, entry.options) for entry in self._wildcards]
        return grants

    def needing_reverse_proxy(self) -> list[int]:
        """The lines whose options ``--auth-only`` cannot enforce (``models=``,
        ``max-concurrent=``: see KeyOptions.needs_reverse_proxy), in file order."""
        lines = [entry for entries in self._by_key.values() for entry in entries] + self._wildcards
        return sorted(entry.line for entry in lines if entry.options.needs_reverse_proxy)

    def is_listed(self, key_blob: bytes) -> bool:
        """True when the key has a line of its own (a wildcard line does not count)."""
        return key_blob in self._by_key

    def __len__(self) -> int:
        return sum(len(lines) for lines in self._by_key.values()) + len(self._wildcards)

    def __repr__(self) -> str:
        if self.problem is not None:
            return f"<AuthorizedKeys unusable: {self.problem}>"
        return f"<AuthorizedKeys {len(self._by_key)} keys, {len(self._wildcards)} wildcard lines>"


def _parse_endpoints(field: str) -> tuple[frozenset[str] | None, str | None]:
    items = [item.strip(_GO_SPACE_CHARS) for item in field.split(",")]
    if any(item == "" for item in items):
        return None, "empty endpoint in the list"
    if "*" in items:
        return frozenset({"*"}), None
    for item in items:
        if "*" in item:
            return (
                None,
                f"endpoint {quoted(item, 60)} uses '*' inside a path; the format matches whole paths only (list each one, or use * alone)",
            )
        if "?" in item:
            return None, f"endpoint {quoted(item, 60)} holds a query; endpoints are paths"
        problem = path_problem(item)
        if problem is not None:
            return None, f"endpoint {quoted(item, 60)} is not a canonical path ({problem})"
    return frozenset(items), None


def _parse_line(line: str) -> tuple[bytes | None, str | None, frozenset[str] | None, str | None, KeyOptions]:
    """(key blob or None for a wildcard, name, endpoints, problem, options)."""
    options = NO_OPTIONS
    first = _GO_SPACE.split(line, maxsplit=1)[0]
    if not looks_like_key_type(first):
        missing = _missing_key_type(first)  # not "unknown option 'aaaac3...'"
        if missing is not None:
            return None, None, None, missing, options
        # sshd: "options, keytype, base64-encoded key, comment" (man sshd).
        try:
            text, line = split_options(line)
            options = parse_options(text)
        except OptionError as exc:
            return None, None, None, f"options: {exc}", options
    blob, name, endpoints, problem = _parse_fields(line)
    return blob, name, endpoints, problem, options


def _parse_fields(line: str) -> tuple[bytes | None, str | None, frozenset[str] | None, str | None]:
    """(key blob or None for a wildcard, name, endpoints, problem)."""
    parts = _GO_SPACE.split(line, maxsplit=3)
    if len(parts) < 2:
        return None, None, None, "expected '<key type> <public key> [<name>] [<endpoint>,...]'"
    kind, key_text = parts[0], parts[1]
    missing = None if looks_like_key_type(kind) else _missing_key_type(kind)
    if missing is not None:  # after options: 'from="..." AAAA... alice'
        return None, None, None, missing
    if kind not in (KEY_TYPE, "*"):
        return None, None, None, f"unsupported key type {quoted(kind, 30)} (only ssh-ed25519 keys can sign for Ollama)"
    if kind == "*" and key_text != "*":
        return None, None, None, "key type '*' needs public key '*'"
    blob = None
    if key_text != "*":
        blob = decode_base64(key_text)
        if blob is None or not is_ed25519_blob(blob):
            return None, None, None, key_text_problem(key_text, blob)
    if len(parts) >= 3 and (parts[2].startswith("/") or "," in parts[2]):
        # Never a name: the draft would take it for one and grant every endpoint.
        return (
            None,
            None,
            None,
            (
                f"the third field {quoted(parts[2], 60)} is an endpoint list where the name goes "
                "(the format is '<key type> <public key> <name> <endpoint>,...'; write * for no name)"
            ),
        )
    if blob is None and len(parts) < 4:
        # '* * /api/tags' or '* * name': one field short of '* * <name> <endpoints>'.
        return (
            None,
            None,
            None,
            (
                "a line for any key must state its endpoints: '* * <name or *> <endpoint>,...' "
                "(read as it stands, Ollama's draft would give every key every endpoint)"
            ),
        )
    if len(parts) >= 3 and _MISPLACED_OPTION.match(parts[2]):
        # 'ssh-ed25519 AAAA... models="small" *': an option after the key, where sshd reads a
        # comment; taken for a name, the line would grant every model, address and time.
        return (
            None,
            None,
            None,
            (
                f"the third field {quoted(parts[2], 60)} is an option where the name goes; options come "
                "before the key type: 'models=\"...\" ssh-ed25519 <public key> <name> <endpoint>,...'"
            ),
        )
    name = None
    if len(parts) >= 3 and parts[2] not in ("", "*"):
        name = parts[2]
        if len(name) > MAX_NAME_CHARS:
            return None, None, None, f"the name is longer than {MAX_NAME_CHARS} characters"
        if not all("!" <= ch <= "~" for ch in name):
            return None, None, None, "the name holds control or non-ASCII characters (it is sent as a header)"
    endpoints: frozenset[str] | None = frozenset({"*"})
    if len(parts) == 4 and parts[3] != "":
        endpoints, problem = _parse_endpoints(parts[3])
        if problem is not None:
            return None, None, None, problem
    return blob, name, endpoints, None


def parse(text: str) -> tuple[AuthorizedKeys, list[str]]:
    """Parse the file's text; warnings name the (1-based) line of each skipped line."""
    by_key: dict[bytes, list[_Line]] = {}
    wildcards: list[_Line] = []
    warnings: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.lstrip(_GO_SPACE_CHARS).startswith(BOM):
            # At the start of the file, or of one joined into it (cat a b > file).
            rest = raw.lstrip(_GO_SPACE_CHARS)[1:].strip(_GO_SPACE_CHARS)
            if rest and not rest.startswith("#"):
                warnings.append(
                    f"line {number}: skipped: it starts with a UTF-8 byte order mark (U+FEFF), "
                    "which sshd and Ollama read as part of the key type; save the file as UTF-8 without BOM"
                )
            continue
        line = raw.strip(_GO_SPACE_CHARS)
        if line == "" or line.startswith("#"):
            continue
        if len(line) > MAX_LINE_CHARS:
            warnings.append(f"line {number}: skipped: longer than {MAX_LINE_CHARS} characters")
            continue
        try:
            blob, name, endpoints, problem, options = _parse_line(line)
        except Exception as exc:  # never a crash on the file's content
            blob, name, endpoints, problem, options = None, None, None, f"unreadable ({type(exc).__name__})", NO_OPTIONS
        if problem is not None or endpoints is None:
            warnings.append(f"line {number}: skipped: {problem}")
            continue
        if name is not None and _PLACEHOLDER.fullmatch(name):
            # The unknown-key hint's '<name>' pasted as is: the grant is what the line says
            # (a name only labels it), so the line loads; its label is not a person's.
            warnings.append(
                f"line {number}: the name {quoted(name, 60)} is a placeholder in angle brackets "
                "(as in the line-to-add hint); the line is loaded, but logs will show that placeholder: "
                "write the key holder's name there"
            )
        for pattern in tagless_patterns(options):
            bare = pattern.lstrip("!")
            warnings.append(
                f"line {number}: models= pattern {quoted(pattern, 60)} has no tag and no wildcard, so it matches "
                f"no model (names are matched with their tag, {quoted(bare, 60)} as {quoted(bare + ':latest', 70)}): "
                f"write {quoted(pattern + ':latest', 70)} or {quoted(pattern + ':*', 70)}"
            )
        entry = _Line(number, name, endpoints, options)
        if blob is None:
            wildcards.append(entry)
        else:
            by_key.setdefault(blob, []).append(entry)
    return AuthorizedKeys(by_key, wildcards), warnings


if TYPE_CHECKING:  # what __getattr__ gives, as the type checker should see it
    from .keyfile import RACY_NS as RACY_NS, KeyFile as KeyFile, read_key_file as read_key_file


def __getattr__(name: str) -> object:
    # The file on disk lives in keyfile.py; these names stay importable from here
    # (lazily: keyfile imports this module).
    if name in ("KeyFile", "read_key_file", "RACY_NS"):
        from . import keyfile

        return getattr(keyfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

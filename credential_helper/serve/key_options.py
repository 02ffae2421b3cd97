"""sshd-style options before the key type in authorized_keys (issue 22 item 1):
the grammar and the pure matchers. The gate's engine enforces them (policy22).

    from="10.0.0.0/8,!10.0.9.*",expiry-time="20270301",models="llama3*,!*70b*",max-concurrent=2 ssh-ed25519 AAAA... bob *

The syntax is sshd's (``man sshd``, AUTHORIZED_KEYS FILE FORMAT: "The options
(if present) consist of comma-separated option specifications. No spaces are
permitted, except within double quotes. ... option keywords are
case-insensitive"), read as OpenSSH reads it: ``authfile.c``
``sshkey_advance_past_options`` ends the options at the first space or tab
outside double quotes (``\\"`` does not toggle quoting); ``misc.c``
``opt_match`` takes ``name=`` case-insensitively; ``opt_dequote`` needs the
value in double quotes, where ``\\"`` stands for ``"`` and any other backslash
is itself; after a value comes ``,`` and another option, or the end, where a
trailing ``,`` is accepted as sshd accepts it (``auth-options.c``
``sshauthopt_parse``).

The options the gate knows: ``from``, ``expiry-time``, ``models`` (quoted, as
sshd requires of every valued option) and ``max-concurrent`` (quoted or not).
Anything else -- an unknown option (sshd's own ``restrict``, ``command=``...
included: the gate cannot honour them), a malformed value, a duplicate -- makes
the line grant nothing, with a warning naming the line. sshd itself refuses a
second ``from`` and keeps the earliest of several ``expiry-time``; here any
duplicate refuses the line (grant less).
"""

from __future__ import annotations

import calendar
import functools
import ipaddress
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..sanitize import quoted

MAX_PATTERNS = 256
MAX_PATTERN_CHARS = 1023  # match.c match_pattern_list: longer subpatterns never match
MAX_CONCURRENT = 100_000
_SPACE = " \t\n\f\r"
_ADDRESS_WILDCARD = re.compile(r"[0-9A-Fa-f.:*?]+")
_MODEL_PATTERN = re.compile(r"[!-~]+")  # printable ASCII, no space (ssh_config(5) PATTERNS: "non-whitespace")
# ASCII digits only (re's \d takes any Unicode digit; strptime does not).
_TIMESPEC = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})(?:([0-9]{2})([0-9]{2})([0-9]{2})?)?")
# An address, or address/prefix length in decimal: ipaddress would also take a netmask
# (10.0.0.0/255.0.0.0) or a scope (fe80::%eth0), which sshd's addr_pton_cidr does not
# read as a range: there such an entry is a pattern that never matches.
_ADDRESS = re.compile(r"[0-9A-Fa-f.:]+(?:/(?:0|[1-9][0-9]{0,2}))?")


class OptionError(ValueError):
    """The options field cannot be read exactly; the line grants nothing."""


@dataclass(frozen=True)
class KeyOptions:
    """A line's options; None where the line has no such option.

    ``from_patterns`` and ``models`` are the pattern lists as written (``!``
    kept); ``expiry`` is epoch seconds (the key is refused when ``now`` is past
    it); ``max_concurrent`` is requests in flight for the key (on a ``* *`` line: for the line, restrict.py).
    """

    from_patterns: tuple[str, ...] | None = None
    expiry: float | None = None
    models: tuple[str, ...] | None = None
    max_concurrent: int | None = None
    _networks: tuple = field(default=(), repr=False, compare=False)

    @property
    def needs_reverse_proxy(self) -> bool:
        """``models=`` needs the request body and ``max-concurrent=`` the request's end:
        a front server's auth request (``--auth-only``) has neither."""
        return self.models is not None or self.max_concurrent is not None

    @property
    def empty(self) -> bool:
        return self.from_patterns is None and self.expiry is None and self.models is None and self.max_concurrent is None


NO_OPTIONS = KeyOptions()
_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-")


def looks_like_key_type(field_: str) -> bool:
    """A first field that names a key type (``ssh-rsa``, ``ecdsa-sha2-nistp256``,
    ``sk-ssh-ed25519@openssh.com``...) rather than options."""
    return field_ == "*" or field_.startswith(_KEY_TYPE_PREFIXES) or field_.endswith("@openssh.com")


def split_options(line: str) -> tuple[str, str]:
    """(options, rest) of a line whose first field is not a key type: sshd's
    ``sshkey_advance_past_options`` (the first space or tab outside quotes)."""
    quoted, i = False, 0
    while i < len(line) and (quoted or line[i] not in _SPACE):
        if line[i] == "\\" and line[i + 1 : i + 2] == '"':
            i += 1
        elif line[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise OptionError("unterminated quote in the options")
    return line[:i], line[i:].lstrip(_SPACE)


def _dequote(text: str, at: int) -> tuple[str, int]:
    """misc.c ``opt_dequote``: the value between double quotes, ``\\"`` unescaped."""
    if text[at : at + 1] != '"':
        raise OptionError("missing start quote")
    out, i = [], at + 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        out.append(text[i])
        i += 1
    if i >= len(text):
        raise OptionError("missing end quote")
    return "".join(out), i + 1


# sshd(8) AUTHORIZED_KEYS FILE FORMAT: the options OpenSSH 9 knows (the gate enforces four).
SSHD_OPTIONS = frozenset(
    "agent-forwarding cert-authority command environment expiry-time from no-agent-forwarding "
    "no-port-forwarding no-pty no-user-rc no-x11-forwarding permitlisten permitopen port-forwarding "
    "principals pty no-touch-required verify-required restrict tunnel user-rc x11-forwarding".split()
)


def parse_options(text: str) -> KeyOptions:
    """The options field (before the key type) as KeyOptions; OptionError when any
    part of it is unknown, malformed or repeated."""
    values: dict[str, object] = {}
    at = 0
    while True:
        match = re.match(r"[A-Za-z][A-Za-z0-9-]*", text[at:])
        name = match.group(0).lower() if match else ""
        at += len(name)
        if name not in ("from", "expiry-time", "models", "max-concurrent") or text[at : at + 1] != "=":
            if "BEGIN OPENSSH PRIVATE KEY" in text or "b3BlbnNzaC1rZXkt" in text:  # "openssh-key-v1" in base64
                raise OptionError("a private key was pasted here: remove it, and make a new key (this one is exposed)")
            # Only an option sshd knows is named: anything else may be key material pasted in
            # (a private key's base64 lines parse as options), and a secret is never echoed.
            shown = f"{name!r} (an sshd option)" if name in SSHD_OPTIONS else "(not shown: it may be key material)"
            raise OptionError(f"unknown option {shown}; the gate knows from=, expiry-time=, models=, max-concurrent=")
        at += 1
        if name in values:
            raise OptionError(f"{name}= appears twice")
        if name == "max-concurrent" and text[at : at + 1] != '"':
            digits = re.match(r"[0-9]*", text[at:]).group(0)  # type: ignore[union-attr]
            raw, at = digits, at + len(digits)
        else:
            raw, at = _dequote(text, at)
        values[name] = _value(name, raw)
        if at == len(text):
            break
        if text[at] != ",":
            raise OptionError(f"unexpected {text[at]!r} after {name}= (options are separated by ',')")
        at += 1
        if at == len(text):
            # sshd parses the options in place, with the rest of the line after them:
            # "from=\"a\", ssh-ed25519 ..." meets the space, not the end of the string,
            # and is accepted (sshauthopt_parse; checked against Debian's sshd 9.2).
            break
    from_patterns = values.get("from")
    return KeyOptions(
        from_patterns=from_patterns,  # type: ignore[arg-type]
        expiry=values.get("expiry-time"),  # type: ignore[arg-type]
        models=values.get("models"),  # type: ignore[arg-type]
        max_concurrent=values.get("max-concurrent"),  # type: ignore[arg-type]
        _networks=_compile_addresses(from_patterns) if from_patterns is not None else (),  # type: ignore[arg-type]
    )


def _value(name: str, raw: str) -> object:
    if name == "from":
        return _pattern_list(raw, "from", _check_address_pattern)
    if name == "models":
        return _pattern_list(raw, "models", _check_model_pattern)
    if name == "expiry-time":
        return parse_timespec(raw)
    # The length first: int() of text past 4,300 digits raises (Python's default limit).
    if not re.fullmatch(r"[1-9][0-9]*", raw) or len(raw) > len(str(MAX_CONCURRENT)) or int(raw) > MAX_CONCURRENT:
        raise OptionError(f"max-concurrent={quoted(raw)} is not a whole number from 1 to {MAX_CONCURRENT}")
    return int(raw)


def _pattern_list(raw: str, name: str, check: Callable[[str], None]) -> tuple[str, ...]:
    entries = raw.split(",")
    if len(entries) > MAX_PATTERNS:
        raise OptionError(f"{name}= holds more than {MAX_PATTERNS} patterns")
    for entry in entries:
        bare = entry[1:] if entry.startswith("!") else entry
        if bare == "":
            # addrmatch.c addr_match_list: an empty entry is an error (-2), which denies.
            raise OptionError(f"{name}= holds an empty pattern")
        if len(bare) > MAX_PATTERN_CHARS:
            raise OptionError(f"{name}= holds a pattern longer than {MAX_PATTERN_CHARS} characters")
        check(bare)
    return tuple(entries)


def _check_address_pattern(pattern: str) -> None:
    if "*" in pattern or "?" in pattern:
        if not _ADDRESS_WILDCARD.fullmatch(pattern):
            raise OptionError(
                f"from= pattern {quoted(pattern)} is not an address: the gate matches client addresses, never host names"
            )
        return
    try:
        if not _ADDRESS.fullmatch(pattern):
            raise ValueError(pattern)
        ipaddress.ip_network(pattern, strict=True)
    except ValueError:
        if "/" in pattern:
            # addr.c addr_pton_cidr: a bad mask length, or host bits set under the mask, is -2.
            raise OptionError(f"from= CIDR {quoted(pattern)} has a bad mask length or host bits set") from None
        # Host names need DNS (the gate does none); 10.1 or 012.0.0.1 mean other
        # addresses to sshd's getaddrinfo than to anyone reading them.
        raise OptionError(
            f"from= pattern {quoted(pattern)} is not an address or CIDR range in canonical form "
            "(the gate matches client addresses, never host names)"
        ) from None


def _check_model_pattern(pattern: str) -> None:
    if not _MODEL_PATTERN.fullmatch(pattern) or '"' in pattern:
        raise OptionError(f"models= pattern {quoted(pattern)} holds spaces, quotes, control or non-ASCII characters")


def _compile_addresses(patterns: tuple[str, ...]) -> tuple:
    # (negated, a network, or None and a glob pattern)
    compiled: list[tuple[bool, ipaddress.IPv4Network | ipaddress.IPv6Network | None, str | None]] = []
    for entry in patterns:
        negated = entry.startswith("!")
        bare = entry[1:] if negated else entry
        if "*" in bare or "?" in bare:
            compiled.append((negated, None, bare.lower()))
        else:
            compiled.append((negated, ipaddress.ip_network(bare, strict=True), None))
    return tuple(compiled)


def parse_timespec(raw: str) -> float:
    """misc.c ``parse_absolute_time``: ``YYYYMMDD[Z]`` or ``YYYYMMDDHHMM[SS][Z]``
    (``Z`` or ``UTC``, any case: UTC; else the system's local time, as sshd's
    ``mktime`` with ``tm_isdst = 0``). A date that does not exist (Feb 30, hour
    24) is refused; sshd's ``mktime`` would roll it over."""
    text, utc = raw, False
    if len(text) > 1 and text[-1:].upper() == "Z":
        text, utc = text[:-1], True
    elif len(text) > 3 and text[-3:].upper() == "UTC":
        text, utc = text[:-3], True
    match = _TIMESPEC.fullmatch(text) if len(text) in (8, 12, 14) else None
    if match is None:
        raise OptionError(f"expiry-time={quoted(raw)} is not YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]")
    year, month, day, hour, minute, second = (int(part) if part else 0 for part in match.groups())
    if (
        not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1] and hour < 24 and minute < 60 and second < 60)
        or year < 1970
    ):
        raise OptionError(f"expiry-time={quoted(raw)} is not a valid date and time")
    fields = (year, month, day, hour, minute, second, 0, 0, 0)
    try:
        moment = calendar.timegm(fields) if utc else time.mktime(fields)
    except (OverflowError, ValueError):
        raise OptionError(f"expiry-time={quoted(raw)} is out of range") from None
    if moment <= 0:
        raise OptionError(f"expiry-time={quoted(raw)} is out of range")  # auth-options.c: valid_before == 0 is invalid
    return float(moment)


# --- the pure matchers the engine calls -----------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str, within: str = "") -> re.Pattern[str]:
    anything = f"[^{re.escape(within)}]" if within else "."
    return re.compile(
        "".join(anything + "*" if ch == "*" else anything if ch == "?" else re.escape(ch) for ch in pattern), re.DOTALL
    )


def _wildcard(text: str, pattern: str, within: str = "") -> bool:
    """match.c ``match_pattern``: ``*`` any run, ``?`` one character, the rest literal;
    with ``within``, neither runs over one of its characters."""
    return _compiled(pattern, within).fullmatch(text) is not None


def address_allowed(options: KeyOptions, ip: str) -> bool:
    """``from=`` as sshd's ``match_host_and_ip`` decides it for a client without a
    host name (``UseDNS no``, sshd's default): an entry is a CIDR range or an
    address (``addrmatch.c`` ``addr_match_list``), else a ``*``/``?`` pattern over
    the address's text (``match_pattern``, lower case as ``match_hostname``);
    any negated entry that matches denies outright (ssh_config(5): "a negated
    match will never produce a positive result by itself"); else one positive
    match admits. An IPv4-mapped IPv6 peer is its IPv4 address (sshd's
    ``ipv64_normalise_mapped``). An address that does not parse is denied."""
    if options.from_patterns is None:
        return True
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    text = str(address)
    positive = False
    for negated, network, pattern in options._networks:
        hit = address in network if network is not None else _wildcard(text, pattern)
        if hit and negated:
            return False
        positive = positive or hit
    return positive


def expired(options: KeyOptions, now: float) -> bool:
    """auth2-pubkeyfile.c ``auth_authorise_keyopts``: refused when ``valid_before < now``."""
    return options.expiry is not None and options.expiry < now


def tagless_patterns(options: KeyOptions) -> list[str]:
    """The ``models=`` patterns that can match no model: without a tag and without a
    wildcard, while every name they are matched against carries its tag (``llama3``
    is matched as ``llama3:latest``, types/model/name.go). The line still loads; this
    is what its warning names."""
    return [entry for entry in options.models or () if not any(mark in entry.lstrip("!") for mark in ":*?")]


def model_allowed(options: KeyOptions, name: str) -> bool:
    """``models=`` as match.c ``match_pattern_list`` decides, case-insensitively (Ollama
    compares model names without case, ``types/model/name.go`` ``EqualFold``): a
    negated pattern that matches denies, else one positive match admits.
    ``name`` is matched exactly as given (the caller normalises it).

    In a positive pattern ``*`` and ``?`` stay within one ``/``-separated part of the
    name (grant less): ``llama3*`` is the llama3 family, never every model of a host
    whose name starts so (``llama3.example.net/x/y:z``, which ``/api/pull`` fetches
    from that host), and ``qwen3:*`` never a host ``qwen3`` on some port. A pattern
    that is ``*`` alone still means every model; a negated one matches across ``/``
    (deny more)."""
    if options.models is None:
        return True
    lowered = name.lower()
    positive = False
    for entry in options.models:
        negated = entry.startswith("!")
        pattern = (entry[1:] if negated else entry).lower()
        if _wildcard(lowered, pattern, "" if negated or pattern == "*" else "/"):
            if negated:
                return False
            positive = True
    return positive


def enforceable_by_verify(options: KeyOptions, now: float) -> bool:
    """Whether the signature check alone may admit through a line with these options:
    ``expiry-time`` it can check; ``from=``, ``models=`` and ``max-concurrent=`` need
    the peer, the body or the request's end, which the engine has (issue 22,
    enforcement): until it passes them, such a line grants nothing here."""
    return not expired(options, now) and options.from_patterns is None and not options.needs_reverse_proxy

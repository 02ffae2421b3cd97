"""Stand-in for keyfile's KeyOptions and matchers until that branch lands (deleted at merge)."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyOptions:
    from_patterns: tuple[str, ...] | None = None
    expiry: float | None = None
    models: tuple[str, ...] | None = None
    max_concurrent: int | None = None


NO_OPTIONS = KeyOptions()


def _match(patterns, value: str, one) -> bool:
    found = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if one(pattern[1:] if negated else pattern, value):
            if negated:
                return False
            found = True
    return found


def address_allowed(patterns, address: str) -> bool:
    def one(pattern: str, value: str) -> bool:
        if "/" in pattern:
            try:
                return ipaddress.ip_address(value) in ipaddress.ip_network(pattern, strict=False)
            except ValueError:
                return False
        return fnmatch.fnmatchcase(value, pattern)

    return _match(patterns, address, one)


def expired(expiry: float, now: float) -> bool:
    return now > expiry


def model_allowed(patterns, name: str) -> bool:
    return _match(patterns, name.lower(), lambda pattern, value: fnmatch.fnmatchcase(value, pattern.lower()))

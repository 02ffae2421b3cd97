"""What a key line's options allow beyond its endpoint list (issue 22), for the gate's policies.

Each line of authorized_keys is a grant on its own, as in sshd (``auth2-pubkey.c``:
a line whose options refuse the connection does not stop the next line of the same
key from admitting it): a request is admitted by a line that grants its path, is not
past its ``expiry-time``, matches the client's address (``from=``) and allows every
model the request names (``models=``). ``max-concurrent`` on a key's own line counts
that key's requests in flight, whichever line admitted them; when several of the key's
own lines set it, the smallest applies. On a wildcard line (``* *``, for keys without a
line of their own) it counts the requests of every key the line serves together: any
client can make a fresh key, so a count per key would be no limit. Each gate process
counts its own.

Pure but for :class:`InFlight`'s counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from ..sanitize import printable
from .authorized_keys import AuthorizedKeys, Grant
from .key_options import KeyOptions, address_allowed, expired, model_allowed
from .verify import Refused


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def live_lines(
    grants: Sequence[Grant], address: str, now: float, enforceable: Callable[[Grant], bool] | None = None, who: str = ""
) -> list[Grant] | Refused:
    """The lines among ``grants`` (each already granting the path) that admit this
    client now; Refused (403, reason ``expired`` or ``address``) when none does.

    ``enforceable``: False for a line this mode cannot enforce (it grants nothing).
    """
    live: list[Grant] = []
    expired_at: list[float] = []
    elsewhere = False
    for grant in grants:
        options = grant.options
        if options.expiry is None and options.from_patterns is None and enforceable is None:
            live.append(grant)  # the common line: no options, nothing to check
            continue
        if enforceable is not None and not enforceable(grant):
            continue
        if expired(options, now) and options.expiry is not None:  # expired() needs an expiry
            expired_at.append(options.expiry)
            continue
        if options.from_patterns is not None and not (address and address_allowed(options, address)):
            elsewhere = True
            continue
        live.append(grant)
    if live:
        return live
    if elsewhere:
        shown = printable(address)[:64] if address else "an address this gate cannot see"
        return Refused(
            403, f"key {who} may not connect from {shown}: its line's from= list does not include it", reason="address"
        )
    if expired_at:
        return Refused(
            403, f"key {who} expired at {_when(max(expired_at))} (expiry-time in the server's authorized_keys)", reason="expired"
        )
    return Refused(403, f"key {who} has no line this gate can enforce in this mode", reason="not-granted")


def line_options(keys: AuthorizedKeys) -> list:
    """(line number, options) of every usable line of a parsed file, in file order."""
    entries = [entry for lines in keys._by_key.values() for entry in lines] + list(keys._wildcards)
    return sorted(((entry.line, entry.options) for entry in entries), key=lambda pair: pair[0])


def auth_only_problems(entries: Iterable[tuple[int, KeyOptions]], can_see_address: bool) -> list[str]:
    """Why lines cannot be enforced by ``--auth-only``: (line number, options) pairs in,
    one message per line out. A front's auth request carries no body and the gate never
    sees the answer, so ``models=`` and ``max-concurrent=`` need reverse-proxy mode;
    ``from=`` needs ``--trusted-front``."""
    problems = []
    for number, options in entries:
        # Why each needs reverse-proxy mode (README "What each mode can enforce").
        needs = [
            (name, why)
            for name, why, value in (
                ("models=", "the front server's auth request carries no body, so the gate cannot see the model", options.models),
                (
                    "max-concurrent=",
                    "the gate never sees an answer end, so it cannot count requests in flight",
                    options.max_concurrent,
                ),
            )
            if value is not None
        ]
        if needs:
            problems.append(
                f"line {number}: {' and '.join(name for name, _ in needs)} cannot be enforced with --auth-only "
                f"({'; '.join(why for _, why in needs)}); "
                "run the gate as a reverse proxy (without --auth-only) or remove the option from the line"
            )
        elif options.from_patterns is not None and not can_see_address:
            problems.append(
                f"line {number}: from= needs --trusted-front with --auth-only "
                "(the client's address is known only from a front server the operator trusts)"
            )
    return problems


AUTH_ONLY_SHOWN = 20  # lines a refusal to start names; past that, how many more


def auth_only_refusal(problems: Sequence[str], shown: int = AUTH_ONLY_SHOWN) -> str:
    """Every line ``--auth-only`` cannot enforce, in one line of text (an error is one
    line on stderr): each with its number and reason, up to ``shown`` of them, then
    how many more."""
    text = " | ".join(problems[:shown])
    if len(problems) > shown:
        text += f" | and {len(problems) - shown} more line(s)"
    return f"{len(problems)} line(s) it cannot enforce: {text}"


def unrestricted(lines: Sequence[Grant]) -> bool:
    """True when one of the lines allows every model (no ``models=``)."""
    return any(grant.options.models is None for grant in lines)


def concurrency_counts(lines: Sequence[Grant], fingerprint: str) -> list[tuple[str, int, str]]:
    """The counters a request of this key takes a slot in: (counter, limit, whose), each
    to have room. The key's own lines: one counter for the key, the smallest limit. A key
    with none: one counter per wildcard line that sets a limit, shared by every key the
    line serves, named by what the line says, not where it stands (a reload that moves the
    line keeps the count of requests in flight; "whose" names the line in the refusal)."""
    own = [grant for grant in lines if not grant.wildcard]
    if own:
        limits = [grant.options.max_concurrent for grant in own if grant.options.max_concurrent is not None]
        return [(fingerprint, min(limits), "")] if limits else []
    return [
        (
            f"* {grant.name} {','.join(sorted(grant.endpoints))} {grant.options!r}",
            grant.options.max_concurrent,
            f"line {grant.line} (for any key)",
        )
        for grant in lines
        if grant.options.max_concurrent is not None
    ]


def models_refusal(lines: Sequence[Grant], names: Sequence[str], who: str) -> Refused | None:
    """None when one line allows every name; else 403 naming the rule (the key's own lines
    and their lists only: the caller's own rule, nobody else's)."""
    for grant in lines:
        if all(model_allowed(grant.options, name) for name in names):
            return None
    rules = "; ".join(
        f'line {grant.line} allows models="{printable(",".join(grant.options.models or ()))[:200]}"' for grant in lines[:4]
    )
    denied = next((name for name in names if not any(model_allowed(g.options, name) for g in lines)), None)
    if denied is None:  # each name has a line, none has them all (a copy from one line's model to another's)
        both = ",".join(names)
        shown = ", ".join(repr(printable(name)[:120]) for name in names)
        return Refused(
            403,
            f"key {who} may not use the models {shown} together: no one line allows them all: {rules}",
            reason="model",
            model=both,
        )
    return Refused(403, f"key {who} may not use the model {printable(denied)[:120]!r}: {rules}", reason="model", model=denied)


def allowed_by(lines: Sequence[Grant]) -> Callable[[str], bool]:
    """For a listing: a model is shown when one of the lines allows it."""
    return lambda name: any(model_allowed(grant.options, name) for grant in lines)


class InFlight:
    """Requests in flight per counter (a key's fingerprint, or a wildcard line), in this process."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str, limit: int) -> Callable[[], None] | None:
        """A release callable (idempotent), or None when ``key`` already has ``limit`` in flight."""
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= limit:
                return None
            self._counts[key] = count + 1
        done: list[bool] = []

        def release() -> None:
            if done:
                return
            done.append(True)
            with self._lock:
                left = self._counts.get(key, 1) - 1
                if left > 0:
                    self._counts[key] = left
                else:
                    self._counts.pop(key, None)

        return release

    def count(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)

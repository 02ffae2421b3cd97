"""The gate's policy: is this request signed by a key the operator admitted?

Pure and socket-free: the engine hands over the request line's method and
target, the ``Authorization`` value, the key set and its clock, and gets back
``Admitted`` or ``Refused`` (status and a one-line message for the caller).

A request is admitted only when (issue 15, "The rules"):

1. the target is in canonical form (else 400: the endpoint lists are matched on
   the path that the upstream will route, so no other spelling may pass);
2. ``Authorization`` is ``<public key>:<signature>``, optionally after
   ``Bearer `` (``auth/auth.go`` Sign; some of Ollama's callers add ``Bearer``);
3. the key is Ed25519 and the signature, a raw 64-byte Ed25519 signature
   (RFC 8032), verifies over ``<METHOD>,<target as received>``: what the
   draft's ``allowedEndpointsMiddleware`` (``RequestURI``) and Ollama's
   ``server/cloud_proxy.go`` sign;
4. ``ts`` occurs exactly once in the query, as decimal digits, within
   ``max_skew`` seconds of ``now`` either way (the draft checks no time at all,
   so a signature seen once would work forever);
5. the key's lines (or a wildcard line) grant the path; the query is ignored.

Refusals: 400 for a target or method that is not canonical; 401 for a missing,
malformed, unverifiable, stale or unknown credential; 403 for a listed key on an
endpoint it is not granted; 503 for a valid signature while the key file is
unusable (``AuthorizedKeys.problem``: unsafe, missing or unreadable). The signature is checked before the key set is
consulted, so only the holder of a key learns whether it is listed, and a
message never says which key almost matched. Messages hold no signature, no
``ts`` and no query value, and quote the caller's path only after it passed the
canonical check (then through ``sanitize.printable``, bounded).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import protocol
from ..keys import fingerprint, is_ed25519_blob
from .. import sanitize
from .authorized_keys import AuthorizedKeys, decode_base64
from .target import canonical_path_problem, split_target, ts_values
from .key_options import enforceable_by_verify

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DEFAULT_MAX_SKEW = 300.0
# "Bearer " + 68 characters of key + ":" + 88 of signature is 164; leave room.
MAX_AUTHORIZATION_CHARS = 1024
SIGNATURE_BYTES = 64
HEALTH_CHECK_NAME = "-"
# RFC 9110 section 5.6.2 token, bounded.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
# What Ollama's client sends: strconv.FormatInt(time.Now().Unix(), 10). No sign,
# no leading zero, at most 12 digits (year 33658): no value can overflow or cost.
_TS = re.compile(r"0|[1-9][0-9]{0,11}")


@dataclass(frozen=True)
class Admitted:
    """Forward it: ``name`` for the log and ``X-Ollama-User``, ``fingerprint`` for ``X-Ollama-Key``."""

    name: str
    fingerprint: str
    # The key's lines that grant this path (file order; their options still apply), and every
    # line of the key, own and wildcard (max-concurrent: the tightest). Not part of equality.
    grants: tuple = field(default=(), compare=False, repr=False)
    lines: tuple = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Refused:
    """Answer ``status`` (400, 401, 403, 429 or 503) with ``message`` (one line) and forward nothing.

    ``reason`` is the class the operator's log and metrics count (PLAN.md's list;
    empty means ``malformed`` for a 400); ``key`` is the fingerprint of a key whose
    signature verified, ``user`` its name when the file names it, and ``hint``
    what the operator can do (the line to add for an unknown key): log only."""

    status: int
    message: str
    reason: str = ""
    key: str = ""
    user: str = ""
    hint: str = ""
    model: str = ""  # the model the refusal is about, when the gate read it (log only)


def is_health_check(method: str, target: str, authorization: str | None) -> bool:
    """An unsigned ``HEAD /``: what load balancers send to see if the server is up.

    Ollama answers ``HEAD /`` with 200 and no body, and its own client signs even
    that call (``Heartbeat``) when OLLAMA_AUTH=1, so only unsigned probes are in
    question. The draft exempts every ``HEAD /`` from checking; here only an
    exact ``HEAD /`` (no query) with no ``Authorization`` at all is, and a
    signed one is verified like any other request (a bad key must hear 401).
    """
    return method == "HEAD" and target == "/" and (authorization is None or authorization.strip() == "")


def is_heartbeat(method: str, path: str) -> bool:
    """``HEAD /``: granted to every key the file knows, whatever its endpoint list.

    Ollama's CLI calls ``Heartbeat`` (``HEAD /``) before ``list``, ``run``,
    ``pull`` and the rest (cmd/cmd.go, ``checkServerHeartbeat``), and the draft
    exempts ``HEAD /`` from its middleware, so the draft's own example
    ``* * * /api/tags`` ("ollama ls" for everyone) only works if a signed
    ``HEAD /`` passes for a key granted ``/api/tags`` alone. It is still
    verified (signature, ts), and an unknown key still hears 401 and its line.
    """
    return method == "HEAD" and path == "/"


def _parse_authorization(value: str) -> tuple[bytes, bytes] | Refused:
    if len(value) > MAX_AUTHORIZATION_CHARS:
        return Refused(401, "the Authorization header is too long to be '<public key>:<signature>'", "malformed")
    credential = protocol.bearer_credential(value)  # Ollama's client sends no scheme; a Bearer one is accepted
    if credential is None:
        credential = value.strip(" \t")
    key_text, colon, signature_text = credential.partition(":")
    if not colon:
        return Refused(
            401,
            "the Authorization header is not '<public key>:<signature>' as Ollama's client signs it (OLLAMA_AUTH=1)",
            "unsigned",
        )  # an API key, not a signature
    blob = decode_base64(key_text)
    if blob is None:
        return Refused(401, "the public key in the Authorization header is not valid base64", "malformed")
    signature = decode_base64(signature_text)
    if signature is None:
        return Refused(401, "the signature in the Authorization header is not valid base64", "malformed")
    if not is_ed25519_blob(blob):
        return Refused(
            401, "the key in the Authorization header is not an Ed25519 key; only ssh-ed25519 keys are admitted", "malformed"
        )
    if len(signature) != SIGNATURE_BYTES:
        return Refused(401, "the signature in the Authorization header is not 64 bytes (Ed25519)", "malformed")
    return blob, signature


@functools.lru_cache(maxsize=256)  # the same few members sign every request; bounded against a flood of keys
def _public_key(raw: bytes) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def _signature_verifies(blob: bytes, signature: bytes, data: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        _public_key(blob[-32:]).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(
    method: str,
    target: str,
    authorization: str | None,
    keys: AuthorizedKeys,
    now: float,
    max_skew: float = DEFAULT_MAX_SKEW,
    allow_health_check: bool = True,
    options_checked_by_caller: bool = False,
) -> Admitted | Refused:
    """Admit or refuse one request (see the module's docstring for the rules).

    ``allow_health_check``: admit an unsigned exact ``HEAD /`` as
    ``Admitted(HEALTH_CHECK_NAME, "")`` (see :func:`is_health_check`).
    ``options_checked_by_caller``: return every line that grants the path in
    ``Admitted.grants``, whatever its options; the caller (the gate's policies,
    serve/restrict.py) enforces them with what it has (the peer, the body, a count).
    Without it a line with options verify cannot enforce alone grants nothing.
    """
    if not (isinstance(max_skew, (int, float)) and math.isfinite(max_skew) and max_skew >= 0):
        raise ValueError("max_skew must be a finite number of seconds, 0 or more")
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        return Refused(400, "the request method is not an HTTP token", "malformed")
    problem = canonical_path_problem(target)
    if problem is not None:
        return Refused(
            400,
            f"the request target is not in canonical form: {problem}; send the path exactly as the server routes it",
            "malformed",
        )
    if allow_health_check and is_health_check(method, target, authorization):
        return Admitted(HEALTH_CHECK_NAME, "")
    if authorization is None or authorization.strip() == "":
        return Refused(
            401,
            "this server admits only requests signed with an admitted Ed25519 key: run Ollama's CLI with OLLAMA_AUTH=1, or use ollama-credential-helper's proxy or OllamaAuth",
            "unsigned",
        )
    parsed = _parse_authorization(authorization)
    if isinstance(parsed, Refused):
        return parsed
    blob, signature = parsed
    path, query = split_target(target)
    stamps = ts_values(query)
    if not stamps:
        return Refused(401, "the signed target has no ts= in its query (Ollama's client adds it when OLLAMA_AUTH=1)", "malformed")
    if len(stamps) > 1:
        return Refused(401, "the signed target has more than one ts= in its query", "malformed")
    if not _TS.fullmatch(stamps[0]):
        return Refused(401, "ts= in the query is not Unix seconds in plain decimal digits", "malformed")
    ts = int(stamps[0])
    if not _signature_verifies(blob, signature, f"{method},{target}".encode("ascii")):
        return Refused(
            401,
            f"the signature does not verify over {method} {sanitize.shown(path, 120)} with its query (signed for another method, path or query, or by another key)",
            "bad-signature",
        )
    # Written as "not within" so that a NaN clock refuses rather than admits.
    skew = now - ts
    if not abs(skew) <= max_skew:
        if not math.isfinite(skew):
            return Refused(401, "the signature's ts cannot be compared with this server's clock", "stale", fingerprint(blob))
        direction = "behind" if skew > 0 else "ahead of"
        return Refused(
            401,
            f"the signature's ts is {abs(skew):.0f} s {direction} this server's clock, more than the {max_skew:.0f} s allowed: "
            "sync the client's clock (e.g. timedatectl set-ntp true), or the request was replayed",
            "stale",
            fingerprint(blob),
            _own_name(keys, blob),
        )
    if keys.problem is not None:
        # sshd refuses every key while StrictModes rejects the file. A member learns
        # why; a stranger (any fresh key signs validly) only that it is so.
        return Refused(
            503,
            "this server's authorized_keys file cannot be used, so no key is admitted until the operator fixes it: "
            f"{keys.problem_for(blob)}",
            "keyfile-unusable",
            fingerprint(blob),
        )
    # A line's options grant less, never more: one this check cannot enforce admits nothing.
    grants = keys.grants_for(blob)
    if not options_checked_by_caller:
        grants = [grant for grant in grants if grant.options.empty or enforceable_by_verify(grant.options, now)]
    print_ = fingerprint(blob)
    own = [grant for grant in grants if not grant.wildcard]
    if is_heartbeat(method, path):
        allowing = grants
    else:
        allowing = [grant for grant in grants if grant.allows(path)]
    if allowing:
        # The key's own name (its first named line, as the draft keeps the first
        # name), else the name of the wildcard line that let it in.
        named = [grant for grant in own if grant.named] or [grant for grant in allowing if grant.named]
        return Admitted(named[0].name if named else print_, print_, tuple(allowing), tuple(grants))
    key_line = f"ssh-ed25519 {_b64(blob)}"
    shown = sanitize.shown(path, 120)
    if own:
        name = next((grant.name for grant in own if grant.named), print_)
        return Refused(
            403,
            f"key {print_} ({sanitize.shown(name, 64)}) is not granted {shown}: the operator can add {shown} "
            "to its endpoint list in the server's authorized_keys",
            "not-granted",
            print_,
            name if name != print_ else "",
        )
    return Refused(
        401,
        f"key {print_} is not in this server's authorized_keys; to admit it the operator adds the line: "
        f"{key_line} <name> {shown}   (or * instead of {shown} for every endpoint)",
        "unknown-key",
        print_,
        "",
        f"to admit it add: {key_line} <name> {shown}",
    )


def _own_name(keys: AuthorizedKeys, blob: bytes) -> str:
    """The name the key file gives this key on its own lines, for the log; "" when none."""
    return next((grant.name for grant in keys.grants_for(blob) if not grant.wildcard and grant.named), "")


def _b64(blob: bytes) -> str:
    import base64

    return base64.b64encode(blob).decode("ascii")

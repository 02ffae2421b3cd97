"""What ``doctor --host``'s answers mean: each probe's result read into a verdict and its fix.

``doctor_host.py`` sends the probes; the functions here send nothing. They read
an answer already received (whose it is, by the gate's ``X-Ollama-Reason``
class, never its prose), the ``Date`` it carried against the local clock, and
the verdicts on the member's keys against the one key Ollama's CLI signs with
(``~/.ollama/id_ed25519``), and say what is ok, what to warn about and whose
fix it is. Apart from the probes so that a verdict is a function of what was
received (a ``Response``), which a test can build without a server.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from . import identity, protocol, tokens
from .doctor import Check
from .errors import HelperError
from .response import Response

if TYPE_CHECKING:
    from .identity import Identity

PROBE = "/api/version"
GATE_MAX_SKEW = 300.0  # the gate's default --max-skew
CLOCK_WARN = 30.0
SECOND_KEY = "~/.ollama/box_ed25519"  # the key the advice makes when no other key of the member's got in
# The verdicts of a key the gate knows: admitted, listed, or refused for its line's options (expired,
# address) or passed on to an Ollama that failed ("server"). An unknown key beside one of these is a
# warning; beside none, the failure itself (doctor_host.run).
KNOWN = ("admitted", "listed", "expired", "address", "server")


def reason_of(response: Response) -> str:
    """The gate's one-line reason: X-Ollama-Error, else the body's error."""
    from .sanitize import server_text

    text = response.header("x-ollama-error")
    if not text:
        try:
            body = response.json_object("the server")
            text = body.get("error") if isinstance(body.get("error"), str) else None
            if text is None and isinstance(body.get("error"), dict):  # OpenAI's shape
                text = body["error"].get("message")
        except HelperError:
            text = None
    return server_text(text or f"HTTP {response.status}", response.secrets)


def gate_reason(response: Response) -> str | None:
    """Whose answer this is: the class the gate put on an answer of its own
    (``X-Ollama-Reason``, serve/engine.py), "" for an answer of an older gate
    (``X-Ollama-Error`` alone) or a 401/403 a front server rebuilt from the gate's
    (nginx's ``error_page`` keeps the body only), None for Ollama's answer relayed."""
    reason = response.header("x-ollama-reason")
    if reason and reason.strip():
        return reason.strip().lower()
    if response.header("x-ollama-error") or response.status in (401, 403):
        return ""
    return None


def read_key_answer(path: str, loaded: Identity, response: Response, verdicts: dict[str, str]) -> Check:
    """The check of key ``path`` from the answer to its signed probe; its verdict
    goes in ``verdicts`` (``check_cli`` and ``doctor_host.run`` read them)."""
    name = f"key {path}"
    reason, who, operator = reason_of(response), loaded.fingerprint, "tell the server's operator"
    gate = gate_reason(response)
    if gate is None:  # it passed the gate: Ollama answered
        if response.status >= 500:  # admitted, but nothing works: the server's problem, not "admitted"
            verdicts[path] = "server"
            return Check(
                name,
                "fail",
                f"{who}: passed the gate, but Ollama behind it answered {response.status} ({reason}): a problem on the server",
                f"{operator} (Ollama's log on the box says why)",
            )
        verdicts[path] = "admitted"
        answered = "" if response.status == 200 else f" (Ollama answered {response.status})"
        return Check(name, "ok", f"{who}: admitted: a signed GET {PROBE} passed the gate{answered}")
    if gate == "":  # an older gate, or a front server's copy of a refusal: only the status and its words
        gate = {403: "not-granted"}.get(response.status, "")
        if response.status == 401:
            gate = "unknown-key" if "not in this server's authorized_keys" in reason else "stale" if "clock" in reason else ""
    if gate == "unknown-key":
        verdicts[path] = "unknown"
        return Check(
            name,
            "warn",
            f"{who}: not in the server's authorized_keys",
            f"send the operator the line: {loaded.public_key_line} <your name> *   "
            f"(ollama-credential-helper key --identity {path} prints it)",
        )
    if gate == "not-granted":
        verdicts[path] = "listed"
        return Check(
            name,
            "warn",
            f"{who}: listed in the server's authorized_keys, but not granted "
            f"GET {PROBE} (its endpoint list decides what it may call; a signed HEAD /, the CLI's heartbeat, passes)",
            "if it needs more endpoints, ask the operator to add them to its line",
        )
    if gate == "model":
        verdicts[path] = "listed"
        return Check(
            name,
            "warn",
            f"{who}: listed in the server's authorized_keys for some models only (models=), "
            f"and GET {PROBE} was refused: {reason}",
            "if it needs more models, ask the operator to add them to its line",
        )
    if gate == "concurrency":  # verified and admitted; the server (or the key's max-concurrent) was full
        verdicts[path] = "admitted"
        return Check(
            name,
            "warn",
            f"{who}: admitted, but the server was busy ({response.status}: {reason})",
            "run doctor again in a moment; if it stays busy, tell the server's operator",
        )
    verdicts[path] = {
        "keyfile-unusable": "keyfile",  # the gate admits no key, so it says nothing of this one
        "upstream": "server",
        "expired": "expired",
        "address": "address",
        "stale": "clock",
    }.get(gate, "refused")
    if gate == "expired":
        return Check(
            name,
            "fail",
            f"{who}: the line for this key expired (ask the operator): {reason}",
            "ask the operator to renew the line's expiry-time in the server's authorized_keys",
        )
    if gate == "address":
        return Check(
            name,
            "fail",
            f"{who}: the gate sees you from an address its from= does not allow: {reason}",
            "connect from an address the line allows (VPN, office network), or ask the operator to add this one to its from=",
        )
    if gate == "keyfile-unusable":
        return Check(
            name,
            "fail",
            f"{who}: the server's authorized_keys is unusable, so the gate admits no key ({response.status}): {reason}",
            f"{operator}: the gate's log names the file's problem; nothing on this machine can fix it",
        )
    if gate == "upstream":
        return Check(
            name,
            "fail",
            f"{who}: passed the gate, but the gate got no answer from Ollama behind it ({response.status}): {reason}",
            f"{operator}: Ollama on the box is down, slow or unreachable from the gate",
        )
    if gate == "stale":
        return Check(name, "fail", f"{who}: refused: {reason}", "sync the clock: timedatectl set-ntp true")
    from .sanitize import shown

    named = f" ({shown(gate, 40)})" if gate else ""
    return Check(
        name,
        "fail",
        f"{who}: a signed GET {PROBE} got {response.status}{named}: {reason}",
        "show this line to the server's operator",
    )


# --- clock -----------------------------------------------------------------------------------


def check_clock(date_header: str | None) -> Check:
    skew = tokens.clock_skew(date_header, time.time())
    if skew is None:
        return Check("clock", "warn", "the server sent no usable Date header; the clock could not be compared")
    direction = "behind" if skew > 0 else "ahead of"
    detail = f"the local clock is {abs(skew):.0f}s {direction} the server's"
    if abs(skew) > GATE_MAX_SKEW:
        return Check(
            "clock",
            "fail",
            f"{detail}: past the gate's default --max-skew ({GATE_MAX_SKEW:.0f}s), every signature is refused",
            "sync the clock: timedatectl set-ntp true (or your system's time service), and ask the operator to check the box's",
        )
    if abs(skew) > CLOCK_WARN:
        return Check(
            "clock",
            "warn",
            f"{detail} (the gate allows {GATE_MAX_SKEW:.0f}s by default)",
            "sync the clock: timedatectl set-ntp true",
        )
    return Check("clock", "ok", f"within {max(abs(skew), 0.5):.0f}s of the server's")


# --- Ollama's CLI ----------------------------------------------------------------------------


def check_cli(base: protocol.URL, verdicts: dict[str, str], not_checked: str | None = None) -> Check:
    """Which key Ollama's CLI signs with, and what to do about it. ``not_checked``: why no key was
    (the server unreachable, not a gate, a gate --auth-only): then no advice about keys, which would
    blame the key for the server's problem."""
    default = identity.default_identity_path()
    verdict = verdicts.get(default)
    others = [path for path, found in verdicts.items() if found == "admitted" and path != default]
    use = f"OLLAMA_HOST={base.scheme}://{base.host} OLLAMA_AUTH=1 ollama ..."
    why = "Ollama's CLI always signs with ~/.ollama/id_ed25519 (auth/auth.go; it has no option for another key)"
    if not_checked is not None:
        return Check("ollama CLI", "warn", f"{why}; not checked: {not_checked}")
    # The key the proxy is told to sign with: an admitted one, else the second key the advice makes.
    second = others[0] if others else SECOND_KEY
    proxy = (
        f"for another key use the proxy: ollama-credential-helper proxy --listen 127.0.0.1:11471 "
        f"--upstream {base.scheme}://{base.host} --identity {second}"
    )
    if not others and os.path.lexists(os.path.expanduser(SECOND_KEY)):  # there, but not admitted (yet)
        proxy = (
            f"once the operator adds the line of {SECOND_KEY} (ollama-credential-helper key --identity {SECOND_KEY} "
            f"prints it), {proxy}"
        )
    elif not others:  # no other key got in: make the one the proxy command names, and have it added
        proxy = (
            f"make a second key, not linked to ollama.com: ollama-credential-helper key --generate --identity {SECOND_KEY} "
            f"(send the operator the line it prints); then {proxy}"
        )
    if verdict == "admitted":
        return Check(
            "ollama CLI",
            "ok",
            f"{why}; that key is admitted: {use} works. The server's operator can replay "
            "its signatures at ollama.com while their ts is fresh",
        )
    if not os.path.lexists(default):
        return Check("ollama CLI", "warn", f"{why}, and there is none at {default}", proxy)
    state = {
        "unknown": "is not in the server's authorized_keys",
        "listed": "is listed but not granted every endpoint",
        "expired": "has a line that expired",
        "address": "is refused from this address (from=)",
        "server": "cannot get in while the server has the problem above",
        "keyfile": "cannot get in while the server has the problem above",
        "clock": "is refused while the clock is off (see the clock check)",
        "unusable": "cannot be used here",
        "error": "could not be checked",
        None: "was not checked",
    }.get(verdict, "is refused")
    meanwhile = f"; until then, {proxy}" if others else ""
    if verdict == "unknown":  # the fix is the line the key check printed, not a second key
        return Check(
            "ollama CLI",
            "warn",
            f"{why}; that key {state}",
            f"send the operator the line printed for key {default} above; once it is added, {use} works{meanwhile}",
        )
    if verdict in ("listed", "expired", "address", "server", "keyfile", "clock", "unusable", "error"):
        # Not the key's problem, or one its own check names the fix of: no second key.
        return Check("ollama CLI", "warn", f"{why}; that key {state}", f"see the check of key {default} above{meanwhile}")
    return Check("ollama CLI", "warn", f"{why}; that key {state}", proxy)

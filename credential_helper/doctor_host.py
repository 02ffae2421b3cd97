"""``doctor --host URL``: a shared server (a gate) checked from a member's machine.

Four things decide whether a member gets in, and each is one check here:

- **server**: the URL answers, with TLS verified through this system's trust
  store (``transport.tls_context``, as every command uses), and it is a gate
  (an unsigned request is refused; Ollama alone would answer it);
- **clock**: the local clock against the box's ``Date`` (a signature's ``ts``
  must be within the gate's ``--max-skew``, 300 s by default);
- **key PATH**, once per key of the member's: a signed ``GET /api/version``.
  An answer of the gate's own names its class in ``X-Ollama-Reason`` (the
  log's word, serve/engine.py); read that, never the prose: ``unknown-key``
  (warn, and the line to send the operator), ``not-granted`` (warn),
  ``expired``, ``address``, ``keyfile-unusable``, ``upstream``, ``stale``
  (fail, each with whose fix it is). An answer without it passed the gate and
  is Ollama's: admitted, unless it is a 5xx (the server's problem);
- **ollama CLI**: which key Ollama's own CLI will sign with (always
  ``~/.ollama/id_ed25519``: auth/auth.go reads only that file) and whether it
  is admitted.

``GET /api/version`` because a signature cannot be limited to the gate: a
scheme-2 signature names neither host nor body, so whoever runs the server can
replay it at ollama.com while its ts is fresh, and there this request reveals
nothing. Nothing here prints a signature, a ts or a query value.
"""

from __future__ import annotations

import os
import time

from . import client, identity, protocol, tokens
from .doctor import Check
from .errors import HelperError, IdentityError, InputError, NetworkError
from .response import Response

PROBE = "/api/version"
GATE_MAX_SKEW = 300.0  # the gate's default --max-skew
CLOCK_WARN = 30.0


def member_keys(identity_path: str | None) -> list[str]:
    """The keys to check: the default key, ``--identity``, and every key in
    ``~/.ollama`` that has its ``.pub`` beside it (what ``key --generate --identity``
    makes), each once."""
    default = identity.default_identity_path()
    found = [default] if os.path.lexists(default) else []
    if identity_path is not None:
        found.append(identity_path)
    directory = os.path.dirname(default)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(".pub") and name + ".pub" in names and os.path.isfile(path):
            found.append(path)
    unique, seen = [], set()
    for path in found:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            unique.append(path)
    return unique


def run(*, host: str, identity_path: str | None, timeout: float) -> list[Check]:
    deadline = time.monotonic() + timeout
    try:
        base = _base(host)
    except InputError as exc:
        return [Check("server", "fail", str(exc), "give --host the server's URL, e.g. https://box:11435")]
    dates: list[str] = []
    checks = [check_server(base, deadline, dates)]
    reachable = checks[0].status != "fail"
    if reachable and not dates:
        try:  # an unsigned HEAD / is the health check a gate passes on: Ollama's answer has a Date
            _send("HEAD", protocol.URL(base.scheme, base.host, "/", ""), deadline, dates)
        except HelperError:
            pass
    verdicts: dict[str, str] = {}
    if reachable:
        keyed = [check_key(base, path, deadline, dates, verdicts) for path in member_keys(identity_path)]
        if not any(found in ("admitted", "listed") for found in verdicts.values()):
            for check in keyed:  # no key of yours gets in: an unknown key is then the failure itself
                if check.status == "warn":
                    check.status = "fail"
        checks += keyed or [
            Check(
                "keys",
                "fail",
                "no key to check: none at ~/.ollama/id_ed25519 and no --identity",
                "ollama-credential-helper key --generate --identity ~/.ollama/box_ed25519, then send the operator its line",
            )
        ]
    else:
        checks.append(Check("keys", "warn", "not checked: the server could not be reached"))
    checks.append(
        check_clock(dates[0] if dates else None)
        if reachable
        else Check("clock", "warn", "not checked: the server could not be reached")
    )
    checks.append(check_cli(base, verdicts))
    return checks


def _base(host: str) -> protocol.URL:
    url = protocol.parse_url(host.rstrip("/") if "://" in host else f"https://{host}", what="--host")
    if url.path not in ("", "/") or url.raw_query:
        raise InputError("--host is the shared server's scheme, host and port only (its gate serves at the root)")
    if url.scheme not in ("http", "https"):
        raise InputError("--host must be an https URL (http only for loopback)")
    return protocol.URL(url.scheme, url.host, "", "")


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.05)


def _send(method: str, url: protocol.URL, deadline: float, dates: list[str], authorization: str | None = None) -> Response:
    from . import transport

    headers = {"Authorization": authorization} if authorization else None
    response = transport.send(method, url, headers=headers, timeout=_left(deadline), max_body=64 * 1024)
    date = response.header("date")
    if date:
        dates.append(date)
    return response


def _reason(response: Response) -> str:
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


# --- server ----------------------------------------------------------------------------------


def check_server(base: protocol.URL, deadline: float, dates: list[str]) -> Check:
    url = protocol.URL(base.scheme, base.host, PROBE, "")
    try:
        if base.scheme != "https":
            from . import policy

            policy.check_cleartext(base, "signed requests")
        response = _send("GET", url, deadline, dates)
    except NetworkError as exc:
        from . import transport

        message = str(exc)
        if exc.fix == transport.FIXES["tls"]:  # diagnosed where it failed (transport.diagnose)
            fix = (
                "install the server's CA in this system's trust store (e.g. /usr/local/share/ca-certificates/, then "
                "update-ca-certificates; the Keychain on macOS), or point SSL_CERT_FILE at its PEM file"
            )
        else:
            fix = "check the URL and port, and that the gate runs (gate --listen ... on the box)"
        return Check("server", "fail", message, fix)
    except InputError as exc:
        return Check("server", "fail", str(exc), "use https (the gate needs --tls-cert off loopback)")
    tls = ""
    if base.scheme == "https":
        tls = (
            ", TLS verified against SSL_CERT_FILE"
            if os.environ.get("SSL_CERT_FILE")
            else ", TLS verified through this system's trust store"
        )
    where = f"{base.scheme}://{base.host}"
    if response.status == 401:  # the gate's answer (WWW-Authenticate: Ollama ...), or its front server's
        return Check("server", "ok", f"{where} answered{tls}; an unsigned request is refused (401): a gate")
    if 200 <= response.status < 300:
        return Check(
            "server",
            "warn",
            f"{where} answered{tls}, and an unsigned GET {PROBE} got {response.status}: "
            "nothing checks signatures there, so anyone who reaches it can use it",
            "the operator puts the gate in front: ollama-credential-helper gate (see the README's Share your Ollama server)",
        )
    return Check(
        "server",
        "warn",
        f"{where} answered{tls}; an unsigned GET {PROBE} got {response.status} ({_reason(response)}): not the answer of a gate",
        "check the URL: it should be the gate's, not Ollama's or a front server's",
    )


# --- keys ------------------------------------------------------------------------------------


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


def check_key(base: protocol.URL, path: str, deadline: float, dates: list[str], verdicts: dict[str, str]) -> Check:
    name = f"key {path}"
    try:
        loaded = identity.load_identity(path)
    except IdentityError as exc:
        verdicts[path] = "unusable"
        return Check(name, "fail", str(exc), "fix the key (see 'ollama-credential-helper doctor --identity PATH')")
    url = protocol.URL(base.scheme, base.host, PROBE, "")
    try:
        plan, authorization = client.sign_parsed("GET", url, loaded)
        response = _send("GET", plan.url, deadline, dates, authorization)
    except HelperError as exc:
        verdicts[path] = "error"
        return Check(name, "fail", f"{loaded.fingerprint}: {exc}", "fix the server check first")
    reason, who, operator = _reason(response), loaded.fingerprint, "tell the server's operator"
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
    verdicts[path] = {"keyfile-unusable": "server", "upstream": "server", "expired": "expired", "address": "address"}.get(
        gate, "refused"
    )
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


def check_cli(base: protocol.URL, verdicts: dict[str, str]) -> Check:
    default = identity.default_identity_path()
    verdict = verdicts.get(default)
    others = [path for path, found in verdicts.items() if found == "admitted" and path != default]
    use = f"OLLAMA_HOST={base.scheme}://{base.host} OLLAMA_AUTH=1 ollama ..."
    why = "Ollama's CLI always signs with ~/.ollama/id_ed25519 (auth/auth.go; it has no option for another key)"
    proxy = (
        f"for another key use the proxy: ollama-credential-helper proxy --listen 127.0.0.1:11471 "
        f"--upstream {base.scheme}://{base.host} --identity {others[0] if others else 'PATH'}"
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
    if verdict in ("listed", "expired", "address", "server", "error"):
        return Check("ollama CLI", "warn", f"{why}; that key {state}", f"see the check of key {default} above{meanwhile}")
    return Check(
        "ollama CLI",
        "warn",
        f"{why}; that key {state}",
        proxy
        if others
        else f"{proxy} (a second key, not linked to ollama.com: ollama-credential-helper key --generate --identity ~/.ollama/box_ed25519)",
    )

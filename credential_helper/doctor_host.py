"""``doctor --host URL``: a shared server (a gate) checked from a member's machine.

Four things decide whether a member gets in, and each is one check here:

- **server**: the URL answers, with TLS verified through this system's trust
  store (``transport.tls_context``, as every command uses), and it is a gate
  (an unsigned request is refused; Ollama alone would answer it);
- **clock**: the local clock against the box's ``Date`` (a signature's ``ts``
  must be within the gate's ``--max-skew``, 300 s by default);
- **key PATH**, once per key of the member's: a signed ``GET /api/version``
  tells admitted (200), unknown to the server (401 and the line to send the
  operator) and listed but not granted (403) apart; the gate's verifier
  (serve/verify.py) answers exactly these;
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
        checks += keyed or [Check("keys", "fail", "no key to check: none at ~/.ollama/id_ed25519 and no --identity",
                                  "ollama-credential-helper key --generate --identity ~/.ollama/box_ed25519, then send the operator its line")]
    else:
        checks.append(Check("keys", "warn", "not checked: the server could not be reached"))
    checks.append(check_clock(dates[0] if dates else None) if reachable else Check("clock", "warn", "not checked: the server could not be reached"))
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
            fix = ("install the server's CA in this system's trust store (e.g. /usr/local/share/ca-certificates/, then "
                   "update-ca-certificates; the Keychain on macOS), or point SSL_CERT_FILE at its PEM file")
        else:
            fix = "check the URL and port, and that the gate runs (gate --listen ... on the box)"
        return Check("server", "fail", message, fix)
    except InputError as exc:
        return Check("server", "fail", str(exc), "use https (the gate needs --tls-cert off loopback)")
    tls = ""
    if base.scheme == "https":
        tls = ", TLS verified against SSL_CERT_FILE" if os.environ.get("SSL_CERT_FILE") else ", TLS verified through this system's trust store"
    where = f"{base.scheme}://{base.host}"
    if response.status == 401:  # the gate's answer (WWW-Authenticate: Ollama ...), or its front server's
        return Check("server", "ok", f"{where} answered{tls}; an unsigned request is refused (401): a gate")
    if 200 <= response.status < 300:
        return Check("server", "warn", f"{where} answered{tls}, and an unsigned GET {PROBE} got {response.status}: "
                     "nothing checks signatures there, so anyone who reaches it can use it",
                     "the operator puts the gate in front: ollama-credential-helper gate (see the README's Share your Ollama server)")
    return Check("server", "warn", f"{where} answered{tls}; an unsigned GET {PROBE} got {response.status} ({_reason(response)}): "
                 "not the answer of a gate", "check the URL: it should be the gate's, not Ollama's or a front server's")


# --- keys ------------------------------------------------------------------------------------


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
        verdicts[path] = "unknown"
        return Check(name, "fail", f"{loaded.fingerprint}: {exc}", "fix the server check first")
    reason = _reason(response)
    if response.status not in (401, 403) and not (response.status == 400 and response.header("x-ollama-error")):
        # Not a refusal of the gate (401/403; a 400 of its own carries X-Ollama-Error, which nginx's
        # error_page may turn into the body only): it passed the gate, and Ollama answered.
        verdicts[path] = "admitted"
        answered = "" if response.status == 200 else f" (Ollama answered {response.status})"
        return Check(name, "ok", f"{loaded.fingerprint}: admitted: a signed GET {PROBE} passed the gate{answered}")
    if response.status == 403:
        verdicts[path] = "listed"
        return Check(name, "warn", f"{loaded.fingerprint}: listed in the server's authorized_keys, but not granted "
                     f"GET {PROBE} (its endpoint list decides what it may call; a signed HEAD /, the CLI's heartbeat, passes)",
                     "if it needs more endpoints, ask the operator to add them to its line")
    if response.status == 401 and "not in this server's authorized_keys" in reason:
        verdicts[path] = "unknown"
        return Check(name, "warn", f"{loaded.fingerprint}: not in the server's authorized_keys",
                     f"send the operator the line: {loaded.public_key_line} <your name> *   "
                     f"(ollama-credential-helper key --identity {path} prints it)")
    verdicts[path] = "refused"
    if response.status == 401 and "clock" in reason:
        return Check(name, "fail", f"{loaded.fingerprint}: refused: {reason}", "sync the clock: timedatectl set-ntp true")
    return Check(name, "fail", f"{loaded.fingerprint}: a signed GET {PROBE} got {response.status}: {reason}",
                 "show this line to the server's operator")


# --- clock -----------------------------------------------------------------------------------


def check_clock(date_header: str | None) -> Check:
    skew = tokens.clock_skew(date_header, time.time())
    if skew is None:
        return Check("clock", "warn", "the server sent no usable Date header; the clock could not be compared")
    direction = "behind" if skew > 0 else "ahead of"
    detail = f"the local clock is {abs(skew):.0f}s {direction} the server's"
    if abs(skew) > GATE_MAX_SKEW:
        return Check("clock", "fail", f"{detail}: past the gate's default --max-skew ({GATE_MAX_SKEW:.0f}s), every signature is refused",
                     "sync the clock: timedatectl set-ntp true (or your system's time service), and ask the operator to check the box's")
    if abs(skew) > CLOCK_WARN:
        return Check("clock", "warn", f"{detail} (the gate allows {GATE_MAX_SKEW:.0f}s by default)", "sync the clock: timedatectl set-ntp true")
    return Check("clock", "ok", f"within {max(abs(skew), 0.5):.0f}s of the server's")


# --- Ollama's CLI ----------------------------------------------------------------------------


def check_cli(base: protocol.URL, verdicts: dict[str, str]) -> Check:
    default = identity.default_identity_path()
    verdict = verdicts.get(default)
    others = [path for path, found in verdicts.items() if found == "admitted" and path != default]
    use = f"OLLAMA_HOST={base.scheme}://{base.host} OLLAMA_AUTH=1 ollama ..."
    why = "Ollama's CLI always signs with ~/.ollama/id_ed25519 (auth/auth.go; it has no option for another key)"
    proxy = (f"for another key use the proxy: ollama-credential-helper proxy --listen 127.0.0.1:11471 "
             f"--upstream {base.scheme}://{base.host} --identity {others[0] if others else 'PATH'}")
    if verdict == "admitted":
        return Check("ollama CLI", "ok", f"{why}; that key is admitted: {use} works. The server's operator can replay "
                     "its signatures at ollama.com while their ts is fresh")
    if not os.path.lexists(default):
        return Check("ollama CLI", "warn", f"{why}, and there is none at {default}", proxy)
    state = {"unknown": "is not in the server's authorized_keys", "listed": "is listed but not granted every endpoint",
             None: "was not checked"}.get(verdict, "is refused")
    return Check("ollama CLI", "warn", f"{why}; that key {state}", proxy if others else
                 f"{proxy} (a second key, not linked to ollama.com: ollama-credential-helper key --generate --identity ~/.ollama/box_ed25519)")

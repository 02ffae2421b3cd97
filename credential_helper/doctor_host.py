"""``doctor --host URL``: a shared server (a gate) checked from a member's machine.

Four things decide whether a member gets in, and each is one check here:

- **server**: the URL answers, with TLS verified through this system's trust
  store (``transport.tls_context``, as every command uses), and it is a gate
  (an unsigned request is refused; Ollama alone would answer it). At a server
  that is not a gate, or at a ``gate --auth-only`` (which answers only its
  front server's auth requests), no signed request is sent: any server answers
  one, so its answer would admit nothing; the check fails and the keys and the
  CLI's key are "not checked";
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

This module sends the probes; what each answer means, and its fix, is read in
``doctor_host_verdicts.py``.
"""

from __future__ import annotations

import os
import time

from . import client, identity, protocol
from .doctor import Check
from .doctor_host_verdicts import KNOWN, PROBE, check_cli, check_clock, gate_reason, read_key_answer, reason_of
from .errors import HelperError, IdentityError, InputError, NetworkError
from .response import Response


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
    server, found = check_server(base, deadline, dates)
    checks = [server]
    reachable = found != "unreachable"
    if reachable and not dates:
        try:  # an unsigned HEAD / is the health check a gate passes on: Ollama's answer has a Date
            _send("HEAD", protocol.URL(base.scheme, base.host, "/", ""), deadline, dates)
        except HelperError:
            pass
    verdicts: dict[str, str] = {}
    where = f"{base.scheme}://{base.host}"
    # Why the keys were not checked: no signed request goes to a server that is not a gate (any
    # server may answer it, so an answer would mean nothing), nor to a gate that forwards nothing.
    not_checked = {
        "unreachable": "the server could not be reached",
        "auth-only": f"{where} is a gate --auth-only, which answers only its front server's auth requests",
        "not-gate": f"{where} is not a gate",
    }.get(found)
    if not_checked is None:
        paths = member_keys(identity_path)
        keyed = [check_key(base, path, deadline, dates, verdicts) for path in paths]
        if not any(verdict in KNOWN for verdict in verdicts.values()):
            # No key of yours is known to the gate: an unknown key is then the failure itself. With another
            # key known (admitted, listed, or refused for a reason of its line's or the server's), it is a
            # warning, whatever that key's own verdict: the same state, the same severity.
            for path, check in zip(paths, keyed, strict=True):
                if verdicts.get(path) == "unknown":
                    check.status = "fail"
                    check.detail += " (and no other key of yours is: the reason you cannot get in)"
        checks += keyed or [
            Check(
                "keys",
                "fail",
                "no key to check: none at ~/.ollama/id_ed25519 and no --identity",
                "ollama-credential-helper key --generate --identity ~/.ollama/box_ed25519, then send the operator its line",
            )
        ]
    else:
        checks.append(Check("keys", "warn", f"not checked: {not_checked}"))
    checks.append(
        check_clock(dates[0] if dates else None)
        if reachable
        else Check("clock", "warn", "not checked: the server could not be reached")
    )
    checks.append(check_cli(base, verdicts, not_checked))
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


# --- server ----------------------------------------------------------------------------------


# Plain HTTP read as a TLS record: what OpenSSL says when a TLS hello gets an HTTP answer.
PLAIN_HTTP = ("wrong_version_number", "wrong version number", "http request", "record layer failure", "record_layer_failure")


def check_server(base: protocol.URL, deadline: float, dates: list[str]) -> tuple[Check, str]:
    """The server check, and what was found there: "gate", "auth-only" (a ``gate --auth-only``),
    "not-gate" (an answer no gate gives to an unsigned request) or "unreachable"."""
    url = protocol.URL(base.scheme, base.host, PROBE, "")
    try:
        if base.scheme != "https":
            from . import policy

            policy.check_cleartext(base, "signed requests")
        response = _send("GET", url, deadline, dates)
    except NetworkError as exc:
        from . import transport

        message = str(exc)
        if exc.fix == transport.FIXES["tls"] and any(sign in message.lower() for sign in PLAIN_HTTP):
            fix = (
                f"the server at {base.host} speaks plain http, not TLS: for a gate on loopback use "
                f"--host http://{base.host} (--host without a scheme means https://); elsewhere the operator "
                "gives the gate --tls-cert and --tls-key"
            )
            message += " (the server answered in plain http, not TLS)"
        elif exc.fix == transport.FIXES["tls"]:  # diagnosed where it failed (transport.diagnose)
            fix = (
                "install the server's CA in this system's trust store (e.g. /usr/local/share/ca-certificates/, then "
                "update-ca-certificates; the Keychain on macOS), or point SSL_CERT_FILE at its PEM file"
            )
        else:
            fix = "check the URL and port, and that the gate runs (gate --listen ... on the box)"
        return Check("server", "fail", message, fix), "unreachable"
    except InputError as exc:
        return Check("server", "fail", str(exc), "use https (the gate needs --tls-cert off loopback)"), "unreachable"
    tls = ""
    if base.scheme == "https":
        tls = (
            ", TLS verified against SSL_CERT_FILE"
            if os.environ.get("SSL_CERT_FILE")
            else ", TLS verified through this system's trust store"
        )
    where = f"{base.scheme}://{base.host}"
    if response.status == 401:  # the gate's answer (WWW-Authenticate: Ollama ...), or its front server's
        return Check("server", "ok", f"{where} answered{tls}; an unsigned request is refused (401): a gate"), "gate"
    if 200 <= response.status < 300:  # a gate never admits an unsigned GET
        return Check(
            "server",
            "fail",
            f"{where} answered{tls}, and an unsigned GET {PROBE} got {response.status}: not a gate; "
            "nothing checks signatures there, so anyone who reaches it can use it",
            "the operator puts the gate in front: ollama-credential-helper gate (see the README's Share your Ollama server)",
        ), "not-gate"
    if response.status == 400 and gate_reason(response) == "malformed" and _asks_for_the_front(base, deadline):
        return Check(
            "server",
            "fail",
            f"{where} answered{tls}: a gate --auth-only (forward auth), which checks requests only for a front server "
            f"(nginx, Caddy, Traefik) and forwards nothing; an unsigned GET {PROBE} without the front server's "
            f"X-Original-*/X-Forwarded-* headers got 400 (malformed)",
            "run doctor --host against the front server's URL (the one members use), not the gate's",
        ), "auth-only"
    return Check(
        "server",
        "fail",
        f"{where} answered{tls}; an unsigned GET {PROBE} got {response.status} ({reason_of(response)}): not the answer of a gate",
        "check the URL: it should be the gate's, not Ollama's or a front server's",
    ), "not-gate"


def _asks_for_the_front(base: protocol.URL, deadline: float) -> bool:
    """Whether the server is a ``gate --auth-only``: given the headers nginx's auth_request
    sends (still unsigned), it refuses as a gate does (401) instead of 400."""
    from . import transport

    try:
        response = transport.send(
            "GET",
            protocol.URL(base.scheme, base.host, PROBE, ""),
            headers={"X-Original-Method": "GET", "X-Original-URI": PROBE},
            timeout=_left(deadline),
            max_body=64 * 1024,
        )
    except HelperError:
        return False
    return response.status == 401 and gate_reason(response) not in (None, "")


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
        verdicts[path] = "error"
        return Check(name, "fail", f"{loaded.fingerprint}: {exc}", "fix the server check first")
    return read_key_answer(path, loaded, response, verdicts)

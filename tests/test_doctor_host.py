"""Issue 19: ``doctor --host URL`` checks a shared server from a member's machine,
against the installed gate (a subprocess, with TLS from a private CA the
member's system store holds through SSL_CERT_DIR, as tests/test_truststore.py
does) in front of a stand-in Ollama."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import textwrap
import threading
from typing import ClassVar

import pytest

from conftest import GOLDEN, helper_executable
from faults import CertificateAuthority
from frontends import issue_certificate
from test_gate import local_ollama  # noqa: F401 (fixtures)
from test_truststore import hashed_directory

pytestmark = pytest.mark.process


@pytest.fixture
def share(tmp_path, env, home, keys, start_gate, local_ollama):  # noqa: F811
    """Start a gate on https://localhost:PORT: ``share(options="", upstream=None)``. Its file
    admits the member's second key (every endpoint, with ``options`` before the key) and key b
    for /api/tags only; the member's default key (golden key a) is not in it."""
    for name in ("ca", "box"):
        (tmp_path / name).mkdir()
    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = issue_certificate(ca, tmp_path / "box", "localhost")
    box_key = home / ".ollama" / "box_ed25519"
    made = subprocess.run(
        [*helper_executable(), "key", "--generate", "--identity", str(box_key)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    authorized = tmp_path / "authorized_keys"
    b_line = " ".join((GOLDEN / "keys" / "ed25519-b.pub").read_text().split()[:2])
    environment = {k: v for k, v in env.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    environment["SSL_CERT_DIR"] = hashed_directory(ca, tmp_path / "capath")

    def start(options: str = "", upstream: str | None = None) -> tuple[str, dict, object]:
        authorized.write_text(f"{options} {made.stdout.splitlines()[0]} member *\n{b_line} bob /api/tags\n".lstrip())
        os.chmod(authorized, 0o600)
        gate_ = start_gate(
            "--upstream",
            upstream or local_ollama.base_url,
            "--authorized-keys",
            str(authorized),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        )
        return f"https://localhost:{gate_.port}", environment, box_key

    return start


@pytest.fixture
def shared(share):
    return share()


def doctor(url: str, environment: dict, *args: str) -> tuple[int, dict]:
    done = subprocess.run(
        [*helper_executable(), "doctor", "--json", "--host", url, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stderr == "", done.stderr
    return done.returncode, {check["name"]: check for check in json.loads(done.stdout)["checks"]}


def test_doctor_host_tells_admitted_unknown_and_not_granted_keys_apart(shared, home, keys):
    # Break caught: check_key treating every 401 alike (the unknown key got 'fail' with no line to send),
    # a 403 read as unknown, or the CLI check looking at the wrong key.
    url, environment, box_key = shared
    code, checks = doctor(url, environment, "--identity", str(keys / "ed25519-b"))
    default = str(home / ".ollama" / "id_ed25519")
    assert checks["server"]["status"] == "ok" and "TLS verified through this system's trust store" in checks["server"]["detail"]
    assert "a gate" in checks["server"]["detail"]
    assert checks[f"key {box_key}"]["status"] == "ok" and "admitted" in checks[f"key {box_key}"]["detail"], checks
    unknown = checks[f"key {default}"]
    a_line = " ".join((GOLDEN / "keys" / "ed25519-a.pub").read_text().split()[:2])
    assert unknown["status"] == "warn" and "not in the server's authorized_keys" in unknown["detail"] and a_line in unknown["fix"]
    listed = checks[f"key {keys / 'ed25519-b'}"]
    assert listed["status"] == "warn" and "not granted" in listed["detail"]
    assert checks["clock"]["status"] == "ok"
    cli = checks["ollama CLI"]
    assert (
        cli["status"] == "warn"
        and "~/.ollama/id_ed25519" in cli["detail"]
        and "is not in the server's authorized_keys" in cli["detail"]
    )
    # The fix for the CLI's key is the line printed above it, not a second key (the one admitted serves until then).
    assert cli["fix"].startswith(f"send the operator the line printed for key {default} above") and "--generate" not in cli["fix"]
    assert f"--identity {box_key}" in cli["fix"] and f"--upstream {url}" in cli["fix"]
    assert code == 0  # warnings only: the member gets in with the second key


def test_doctor_host_says_when_the_clis_key_is_admitted(shared, home, tmp_path):
    url, environment, box_key = shared
    (home / ".ollama" / "id_ed25519").unlink()
    os.link(box_key, home / ".ollama" / "id_ed25519")  # the admitted key is now the default one
    _, checks = doctor(url, environment)
    assert checks["ollama CLI"]["status"] == "ok" and f"OLLAMA_HOST={url} OLLAMA_AUTH=1 ollama" in checks["ollama CLI"]["detail"]


def test_doctor_host_fails_when_none_of_the_keys_gets_in(shared, home):
    # Break caught: leaving an unknown key at 'warn' when it is the only key (exit 0 for a member who cannot get in).
    url, environment, box_key = shared
    box_key.unlink(), box_key.with_suffix(".pub").unlink()
    code, checks = doctor(url, environment)
    assert code == 1 and checks[f"key {home / '.ollama' / 'id_ed25519'}"]["status"] == "fail"


def test_doctor_host_fails_when_the_servers_key_file_becomes_unusable(share, tmp_path, home):
    # The operator's file turned group-writable under a running gate: every signed request gets 503
    # keyfile-unusable (serve/keyfile.py rule 2). Break caught: a 503 read as "passed the gate" (admitted, exit 0).
    url, environment, box_key = share()
    os.chmod(tmp_path / "authorized_keys", 0o620)
    code, checks = doctor(url, environment)
    for path in (box_key, home / ".ollama" / "id_ed25519"):
        check = checks[f"key {path}"]
        assert check["status"] == "fail" and ": admitted" not in check["detail"], check
        assert "the server's authorized_keys is unusable" in check["detail"] and "tell the server's operator" in check["fix"]
    assert "problem above" in checks["ollama CLI"]["detail"]
    assert code == 1


@pytest.mark.parametrize(
    "options, detail, fix",
    [
        ('expiry-time="20200101"', "the line for this key expired (ask the operator)", "expiry-time"),
        ('from="10.0.0.0/8"', "the gate sees you from an address its from= does not allow", "from="),  # it sees 127.0.0.1
    ],
)
def test_doctor_host_fails_a_line_that_expired_or_does_not_allow_this_address(share, options, detail, fix):
    # Break caught: every 403 read as "listed but not granted" (a warning, exit 0) for a member who cannot get in.
    url, environment, box_key = share(options)
    code, checks = doctor(url, environment)
    check = checks[f"key {box_key}"]
    assert check["status"] == "fail" and detail in check["detail"] and fix in check["fix"], check
    assert "not granted" not in check["detail"]
    assert code == 1


class _Busy(http.server.BaseHTTPRequestHandler):
    """Ollama's own 503 (server/sched.go ErrMaxQueue, two spaces as there: "server busy, please try again.  maximum pending requests exceeded")."""

    def do_GET(self):
        body = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("behind", ["busy", "down"])
def test_doctor_host_fails_when_ollama_behind_the_gate_answers_5xx_or_not_at_all(share, home, behind):
    # Ollama's own 503 relayed (no X-Ollama-Reason), and the gate's own 502 (reason upstream):
    # the key passed the gate, but nothing works. Break caught: either read as "admitted" (ok, exit 0).
    if behind == "busy":
        ollama_ = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
        threading.Thread(target=ollama_.serve_forever, daemon=True).start()
        upstream = f"http://127.0.0.1:{ollama_.server_address[1]}"
    else:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            upstream = f"http://127.0.0.1:{free.getsockname()[1]}"  # closed: connection refused
    try:
        url, environment, box_key = share(upstream=upstream)
        code, checks = doctor(url, environment)
    finally:
        if behind == "busy":
            ollama_.shutdown()
            ollama_.server_close()
    check = checks[f"key {box_key}"]
    assert check["status"] == "fail" and "passed the gate, but" in check["detail"] and ": admitted" not in check["detail"], check
    # The default key's state is the same as when the second key is admitted (not in the file): the same
    # warning, not a failure. Break caught: only "admitted"/"listed" kept it a warning (FAIL here, warn there).
    unknown = checks[f"key {home / '.ollama' / 'id_ed25519'}"]
    assert unknown["status"] == "warn" and "not in the server's authorized_keys" in unknown["detail"], unknown
    assert (
        ("server busy" in check["detail"])
        if behind == "busy"
        else ("got no answer from Ollama" in check["detail"] and "(502)" in check["detail"])
    )
    assert "operator" in check["fix"] and code == 1


def test_doctor_host_says_tls_and_how_to_trust_the_box(shared, tmp_path):
    url, environment, _ = shared
    (tmp_path / "other-ca").mkdir()
    environment = dict(
        environment, SSL_CERT_DIR=hashed_directory(CertificateAuthority(tmp_path / "other-ca"), tmp_path / "other")
    )
    code, checks = doctor(url, environment)
    server = checks["server"]
    assert (
        code == 1
        and server["status"] == "fail"
        and "TLS failure" in server["detail"]
        and "certificate verification failed" in server["detail"]
    )
    assert "trust store" in server["fix"] and "SSL_CERT_FILE" in server["fix"]


SHIFTED_CLOCK = textwrap.dedent(
    """
    import time
    _real = time.time
    time.time = lambda: _real() + 3600
    """
)


def test_doctor_host_finds_a_clock_an_hour_ahead(shared, tmp_path):
    # Break caught: check_clock never run against the box's Date (no clock line), or the skew's sign reversed.
    url, environment, box_key = shared
    (tmp_path / "shift").mkdir()
    (tmp_path / "shift" / "sitecustomize.py").write_text(SHIFTED_CLOCK)
    code, checks = doctor(url, dict(environment, PYTHONPATH=str(tmp_path / "shift")))
    assert code == 1
    import re

    shown = re.search(r"the local clock is (\d+)s ahead of the server's", checks["clock"]["detail"])
    assert checks["clock"]["status"] == "fail" and shown and abs(int(shown.group(1)) - 3600) <= 5, checks["clock"]
    refused = checks[f"key {box_key}"]
    assert refused["status"] == "fail" and "clock" in refused["detail"] and "timedatectl" in refused["fix"]
    # The clock, not the CLI's key, is the problem: no second key, no proxy. Break caught: a stale refusal
    # read as "refused" (the advice to add ~/.ollama/box_ed25519's line and use the proxy).
    cli = checks["ollama CLI"]
    assert "clock" in cli["detail"] and "box_ed25519" not in cli["fix"] and "proxy" not in cli["fix"], cli


def test_doctor_host_over_http_off_loopback_is_refused_before_signing(env):
    code, checks = doctor("http://192.0.2.1:11435", env, "--timeout", "2")
    assert code == 1 and checks["server"]["status"] == "fail" and "https" in checks["server"]["detail"]
    # Nothing was checked, so no advice about the CLI's key. Break caught: the "once the operator adds the
    # line of ~/.ollama/box_ed25519 ... use the proxy" advice for a server never reached.
    assert checks["ollama CLI"]["fix"] is None and "not checked" in checks["ollama CLI"]["detail"]


class _AnyServer(http.server.BaseHTTPRequestHandler):
    """Not a gate: answers every GET with ``status`` (200: Ollama alone; 404: python -m http.server)
    and records each request's Authorization."""

    status = 404
    seen: ClassVar[list] = []

    def do_GET(self):
        self.seen.append(self.headers.get("Authorization"))
        body = b'{"version":"0.12.0"}' if self.status == 200 else b"not found"
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [404, 200])
def test_doctor_host_fails_a_server_that_is_not_a_gate_and_signs_nothing_for_it(env, status):
    # Any server answers a signed GET, so its answer admits nothing. Break caught (run() checking the keys
    # whatever the server check found): "[ ok ] key ...: admitted" and "ollama CLI ... works", exit 0,
    # with a signed request sent to a server that is not a gate.
    seen: list = []
    handler = type("Handler", (_AnyServer,), {"status": status, "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, checks = doctor(url, env)
    finally:
        server.shutdown()
        server.server_close()
    assert all("admitted" not in check["detail"] for check in checks.values()), checks
    assert seen and not any(seen), seen  # asked, unsigned only
    assert code == 1 and checks["server"]["status"] == "fail" and "not" in checks["server"]["detail"], checks["server"]
    assert not [name for name in checks if name.startswith("key ")], checks
    assert checks["keys"]["status"] != "ok" and checks["keys"]["detail"] == f"not checked: {url} is not a gate"
    cli = checks["ollama CLI"]
    assert cli["status"] != "ok" and f"not checked: {url} is not a gate" in cli["detail"] and cli["fix"] is None, cli


def test_doctor_host_names_a_gate_auth_only_and_blames_no_key(tmp_path, env, start_gate):
    # A gate --auth-only answers 400 (malformed) without a front server's X-Original-* headers. Break caught
    # (no auth-only recognition): "not the answer of a gate ... not Ollama's or a front server's", then a
    # "[FAIL] key ...: 400 (malformed)" per key and advice to add a second key.
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(" ".join((GOLDEN / "keys" / "ed25519-a.pub").read_text().split()[:2]) + " member *\n")
    os.chmod(authorized, 0o600)
    gate_ = start_gate("--auth-only", "--authorized-keys", str(authorized))
    url = f"http://127.0.0.1:{gate_.port}"
    code, checks = doctor(url, env)
    server = checks["server"]
    assert code == 1 and server["status"] == "fail" and "gate --auth-only" in server["detail"], server
    assert "front server's URL" in server["fix"] and "not Ollama's" not in server["fix"], server
    assert not [name for name in checks if name.startswith("key ")], checks
    assert checks["keys"]["status"] == "warn" and "gate --auth-only" in checks["keys"]["detail"]
    assert checks["ollama CLI"]["fix"] is None and "not checked" in checks["ollama CLI"]["detail"]
    assert not [line for line in gate_.log if "/api/version" in line and "unsigned" not in line and "malformed" not in line]


def test_doctor_host_without_a_scheme_at_a_plain_http_gate_says_plain_http(start_gate, tmp_path, env, local_ollama):  # noqa: F811
    # --host without a scheme is https; a plain-HTTP gate answers the TLS hello in plain http
    # (WRONG_VERSION_NUMBER). Break caught: the advice to install the server's CA in the trust store.
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(" ".join((GOLDEN / "keys" / "ed25519-a.pub").read_text().split()[:2]) + " member *\n")
    os.chmod(authorized, 0o600)
    gate_ = start_gate("--upstream", local_ollama.base_url, "--authorized-keys", str(authorized))
    code, checks = doctor(f"127.0.0.1:{gate_.port}", env)
    server = checks["server"]
    assert code == 1 and server["status"] == "fail" and "TLS failure" in server["detail"], server
    assert "plain http" in server["fix"] and f"http://127.0.0.1:{gate_.port}" in server["fix"], server
    assert "--tls-cert" in server["fix"] and "trust store" not in server["fix"], server
    assert checks["ollama CLI"]["fix"] is None


@pytest.mark.interop
def test_the_readmes_python_route_reaches_the_gate_with_the_second_key(shared, monkeypatch):
    # The README table's third row as written, over TLS from a CA in the 'system store' (SSL_CERT_DIR, which
    # httpx would also read itself here: tests/test_adapters_tls.py shows certifi refusing it): the gate admits
    # the second key. A documentation check: it fails when the README's route does not work.
    from pathlib import Path

    import ollama

    import credential_helper
    from credential_helper.integrations.httpx import OllamaAuth

    url, environment, box_key = shared
    monkeypatch.setenv("HOME", environment["HOME"])
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", environment["SSL_CERT_DIR"])
    assert box_key == Path.home() / ".ollama/box_ed25519"
    client = ollama.Client(
        host=url,
        auth=OllamaAuth(api_base=url, identity=Path.home() / ".ollama/box_ed25519"),
        verify=credential_helper.tls_context(),
    )
    assert client.list().models is not None

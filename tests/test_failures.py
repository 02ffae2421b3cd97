"""Failing cleanly: server faults, hostile input, TLS trouble, a wrong clock.

Every case runs the installed executable against a real loopback server and
checks the exit code, the single stderr line, and that no secret leaked.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import time

import pytest

from conftest import assert_one_line_error
from credential_helper import cli
from credential_helper.standin import StandIn
from faults import CertificateAuthority, ScriptedServer, drip_until_close, endless_body, reply, silent, slow_drip

API_KEY = "sk-live-0123456789abcdef-SECRET"
KNOWN_TOKEN = "tok-KNOWN-abcdef0123456789"
SIGNATURE_SHAPE = re.compile(r"AAAAC3NzaC1lZDI1NTE5[A-Za-z0-9+/=]+:[A-Za-z0-9+/]{40,}")


@pytest.fixture
def secret_env(env):
    """The key file exists, so the API key must never be used or shown."""
    return dict(env, OLLAMA_API_KEY=API_KEY)


def assert_no_secret(result) -> None:
    for stream in (result.err,):
        assert API_KEY not in stream
        assert KNOWN_TOKEN not in stream
        assert not SIGNATURE_SHAPE.search(stream), stream


# --- token endpoint faults -----------------------------------------------------------


@pytest.mark.parametrize("status", ["500 Internal Server Error", "502 Bad Gateway", "503 Service Unavailable"])
def test_5xx_exits_4(run, secret_env, status):
    with ScriptedServer(reply(status, b"upstream down")) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert_one_line_error(result, 4)
    assert status.split()[0] in result.err
    assert_no_secret(result)


@pytest.mark.parametrize(
    "status, body",
    [
        ("401 Unauthorized", b'{"error": "unauthorized: key not linked"}'),
        ("403 Forbidden", b'{"error": "pull access denied"}'),
        ("418 I'm a teapot", b"short and stout"),
    ],
)
def test_4xx_exits_1_with_status_and_body_excerpt(run, secret_env, status, body):
    with ScriptedServer(reply(status, body)) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert_one_line_error(result, 1)
    assert status.split()[0] in result.err
    assert body.decode()[:20] in result.err
    assert_no_secret(result)


def test_refusal_body_echoing_the_signature_is_redacted(run, secret_env):
    def echo(conn, head):
        authorization = [line for line in head.decode().split("\r\n") if line.lower().startswith("authorization:")][0]
        body = f"bad signature {authorization} and token {KNOWN_TOKEN}".encode()
        reply("401 Unauthorized", body)(conn, head)

    with ScriptedServer(echo) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert_one_line_error(result, 1)
    assert "[redacted]" in result.err
    assert not SIGNATURE_SHAPE.search(result.err)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>not json</html>", "not JSON"),
        (b'{"access_token": "x"}', 'string "token"'),
        (b'{"token": 12}', 'string "token"'),
        (b'{"token": ""}', "empty"),
        (b'["token"]', "not an object"),
        (b'{"token": "has space"}', "unusable"),
    ],
)
def test_malformed_token_response_exits_4(run, secret_env, body, message):
    with ScriptedServer(reply("200 OK", body)) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert_one_line_error(result, 4)
    assert message in result.err


def test_oversized_declared_body_exits_4(run, secret_env):
    def big(conn, head):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 100)

    with ScriptedServer(big) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert_one_line_error(result, 4)
    assert "limit" in result.err


def test_endless_body_exits_4_quickly(run, secret_env):
    with ScriptedServer(endless_body) as server:
        started = time.monotonic()
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, 4)
    assert "1048576-byte limit" in result.err
    assert elapsed < 10


def test_redirect_is_never_followed(run, secret_env):
    with ScriptedServer(reply("200 OK", b'{"token": "stolen"}')) as elsewhere:
        location = f"http://{elsewhere.host}/token"
        with ScriptedServer(reply("302 Found", headers={"Location": location})) as server:
            result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
        assert elsewhere.requests == []
    assert_one_line_error(result, 4)
    assert "redirect" in result.err and "302" in result.err


def test_silent_server_times_out_within_the_bound(run, secret_env):
    with ScriptedServer(silent) as server:
        started = time.monotonic()
        result = run(["get", "--no-cache", "--timeout", "2"], server.realm_challenge(), environment=secret_env)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, 4)
    assert "timed out" in result.err and server.host in result.err
    assert elapsed < 2 + 1.5


def test_slow_drip_is_bounded_by_the_whole_exchange_timeout(run, secret_env):
    # Each byte arrives well within any per-read timeout; only a deadline over
    # the whole exchange stops it.
    with ScriptedServer(slow_drip) as server:
        started = time.monotonic()
        result = run(["get", "--no-cache", "--timeout", "2"], server.realm_challenge(), environment=secret_env)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, 4)
    assert elapsed < 2 + 1.5


def test_a_body_dripped_until_close_is_bounded_by_the_timeout(run, secret_env):
    # Issue 21: the cut-off timer found no socket to close once http.client had
    # handed the socket to the response (a body delimited by close): --timeout 1 took 6 s.
    with ScriptedServer(drip_until_close) as server:
        started = time.monotonic()
        result = run(["get", "--no-cache", "--timeout", "1"], server.realm_challenge(), environment=secret_env)
        elapsed = time.monotonic() - started
    assert_one_line_error(result, 4)
    assert "timed out" in result.err
    assert elapsed < 1 + 1.5


def test_dns_failure_names_the_host(run, secret_env):
    host = "no-such-host.invalid"
    result = run(
        ["get", "--no-cache", "--host", host, "--timeout", "5"],
        f'Bearer realm="https://{host}/token",service="s",scope="x"',
        environment=secret_env,
    )
    assert_one_line_error(result, 4)
    assert host in result.err
    assert_no_secret(result)


# --- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority(tmp_path)


def test_private_ca_through_ssl_cert_file(run, env, ca, public_line):
    with StandIn(tls_context=ca.server_context([], ["127.0.0.1"])) as server:
        server.authorize(public_line("ed25519-a"))
        result = run(
            ["get"], f"{server.base_url}/v2/library/x/manifests/latest", environment=dict(env, SSL_CERT_FILE=str(ca.ca_file))
        )
        assert result.code == 0, result
        assert server.exchanges == 1


def test_private_ca_through_ssl_cert_dir(run, env, ca, public_line, tmp_path):
    import subprocess

    directory = tmp_path / "certs"
    directory.mkdir()
    (directory / "ca.pem").write_bytes(ca.ca_file.read_bytes())
    subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)
    with StandIn(tls_context=ca.server_context([], ["127.0.0.1"])) as server:
        server.authorize(public_line("ed25519-a"))
        environment = dict(env, SSL_CERT_DIR=str(directory), SSL_CERT_FILE=str(tmp_path / "none.pem"))
        result = run(["get"], f"{server.base_url}/v2/library/x/manifests/latest", environment=environment)
        assert result.code == 0, result


def test_untrusted_certificate_exits_4_naming_tls(run, secret_env, ca, public_line):
    with StandIn(tls_context=ca.server_context([], ["127.0.0.1"])) as server:
        server.authorize(public_line("ed25519-a"))
        stdin = json.dumps({"realm": f"{server.base_url}/token", "service": "s", "scope": "x"})
        result = run(["get"], stdin, environment=secret_env)
        assert server.exchanges == 0
    assert_one_line_error(result, 4)
    assert "TLS" in result.err and "certificate" in result.err
    assert_no_secret(result)


def test_mismatched_certificate_exits_4(run, env, ca, public_line):
    with StandIn(tls_context=ca.server_context(["other.example"], [])) as server:
        server.authorize(public_line("ed25519-a"))
        stdin = json.dumps({"realm": f"{server.base_url}/token", "service": "s", "scope": "x"})
        result = run(["get"], stdin, environment=dict(env, SSL_CERT_FILE=str(ca.ca_file)))
        assert server.exchanges == 0
    assert_one_line_error(result, 4)
    assert "TLS" in result.err


# --- a wrong clock -------------------------------------------------------------------------


def test_skewed_clock_is_corrected_once_with_a_warning(run, env, public_line):
    with StandIn(clock_offset=3600, max_skew=30) as server:
        server.authorize(public_line("ed25519-a"))
        result = run(["get", "--no-cache"], json.dumps({"realm": f"{server.base_url}/token", "service": "s", "scope": "x"}))
        assert result.code == 0, result
        assert server.exchanges == 1
    assert "clock" in result.err and "warning" in result.err
    assert len(result.err.splitlines()) == 1
    assert result.json()["token"] not in result.err


def refuse_with_clock_ahead(seconds: float):
    """A script answering 401 with a Date header ``seconds`` ahead of this clock."""
    from email.utils import formatdate

    def script(conn, head):
        reply("401 Unauthorized", b'{"error": "stale"}', {"Date": formatdate(time.time() + seconds, usegmt=True)})(conn, head)

    return script


def test_clock_retry_happens_at_most_once(run, secret_env):
    with ScriptedServer(refuse_with_clock_ahead(7200)) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert result.code == 1
    assert len(server.requests) == 2
    ts_values = [re.search(rb"[?&]ts=(\d+)", request).group(1) for request in server.requests]
    assert 7100 < int(ts_values[1]) - int(ts_values[0]) < 7300


def test_small_skew_is_not_retried(run, secret_env):
    with ScriptedServer(refuse_with_clock_ahead(5)) as server:
        result = run(["get", "--no-cache"], server.realm_challenge(), environment=secret_env)
    assert_one_line_error(result, 1)
    assert len(server.requests) == 1


# --- hostile standard input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "stdin, message",
    [
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b'{"realm": "https://ollama.com/token", "scope": ', "not valid JSON"),
        (b"{" + b'"a":[' * 50000 + b"]" * 50000 + b"}", "larger than 64 KiB|nested"),
        (b'{"a":' + b"[" * 20000 + b"]" * 20000 + b"}", 'nested too deeply|no "realm"'),
        (b'{"realm": "https://ollama.com/token", "scope": 5}', '"scope" must be a string'),
        (b'[{"realm": "https://ollama.com/token"}]', "Bearer|object"),
        (b'{"realm": "not a url"}', "not an absolute URL"),
        (b'{"realm": "javascript:alert(1)"}', "http or https"),
        (b'Bearer realm="https://ollama.com/token,service="s"', "unbalanced|malformed"),
        (b'Bearer realm="https://ollama.com/t\x01oken"', "control character"),
        (b'{"realm": "https://ollama.com/t\\u0000oken"}', "control character"),
        (b"x" * (20 * 1024 * 1024), "larger than 64 KiB"),
    ],
)
def test_hostile_stdin_exits_2_without_traceback(run, secret_env, stdin, message):
    started = time.monotonic()
    result = run(["get"], stdin, environment=secret_env)
    assert_one_line_error(result, 2)
    assert re.search(message, result.err), result.err
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("stdin", [b"\xff", b'{"method": 5, "url": "https://ollama.com/api/me"}', b"[]", b"x" * 70000])
def test_hostile_stdin_for_sign_exits_2(run, secret_env, stdin):
    assert_one_line_error(run(["sign"], stdin, environment=secret_env), 2)


# --- internal errors and --verbose -----------------------------------------------------------


def _run_in_process(monkeypatch, capsys, argv, stdin=b""):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_unexpected_error_is_one_line_and_exit_5(monkeypatch, capsys, home):
    from credential_helper import client

    def broken(*args, **kwargs):
        raise RuntimeError(f"bug that mentions {API_KEY}")

    monkeypatch.setattr(client, "sign_request", broken)
    code, out = _run_in_process(monkeypatch, capsys, ["sign", "GET", "https://ollama.com/api/tags"])
    assert code == 5 and out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("ollama-credential-helper: internal error (RuntimeError)")
    assert API_KEY not in out.err


def test_unexpected_error_traceback_only_with_verbose(monkeypatch, capsys, home):
    from credential_helper import client

    monkeypatch.setenv("OLLAMA_API_KEY", API_KEY)

    def broken(*args, **kwargs):
        raise RuntimeError(f"bug that mentions {API_KEY}")

    monkeypatch.setattr(client, "sign_request", broken)
    code, out = _run_in_process(monkeypatch, capsys, ["sign", "--verbose", "GET", "https://ollama.com/api/tags"])
    assert code == 5
    assert "Traceback" in out.err and "RuntimeError" in out.err
    assert API_KEY not in out.err  # redacted even in the traceback


def test_verbose_logs_steps_with_secrets_redacted(run, secret_env, standin):
    stdin = json.dumps({"realm": f"{standin.base_url}/token", "service": "s", "scope": "x"})
    result = run(["get", "--verbose"], stdin, environment=secret_env)
    assert result.code == 0, result
    token = result.json()["token"]
    assert "GET http://" in result.err and "answered 200" in result.err
    assert "Authorization: [redacted]" in result.err
    assert token not in result.err
    assert_no_secret(result)
    signed = run(["sign", "--verbose", "POST", f"{standin.base_url}/api/me"], environment=secret_env)
    assert signed.json()["authorization"] not in signed.err
    assert "[redacted]" in signed.err


def test_verbose_with_api_key_fallback_never_shows_the_key(run, secret_env, standin):
    environment = dict(secret_env, HOME=secret_env["HOME"] + "-nokey")
    result = run(["get", "--verbose"], json.dumps({"realm": f"{standin.base_url}/token"}), environment=environment)
    assert result.code == 0 and result.json()["token"] == API_KEY
    assert API_KEY not in result.err and "OLLAMA_API_KEY" in result.err


def test_every_failure_exit_code_is_documented_in_the_man_page():
    page = open(os.path.join(os.path.dirname(__file__), "..", "man", "ollama-credential-helper.1")).read()
    section = page.split(".SH EXIT STATUS", 1)[1].split(".SH", 1)[0]
    from credential_helper import errors

    codes = sorted({value for name, value in vars(errors).items() if name.startswith("EXIT_")})
    assert [int(m) for m in re.findall(r"^\.B (\d)$", section, re.M)] == codes


def test_timeout_bounds_probe_and_exchange_together(run, secret_env):
    # Input form 3: a slow challenge (1.5 s) then a token endpoint that never
    # answers. --timeout 2 must bound the whole command, not each request.
    def script(conn, head):
        if head.startswith(b"GET /v2/"):
            time.sleep(1.5)
            challenge = f'Bearer realm="http://{server.host}/token",service="s",scope="x"'
            reply("401 Unauthorized", b"", {"WWW-Authenticate": challenge})(conn, head)
        else:
            silent(conn, head)

    with ScriptedServer(script) as server:
        started = time.monotonic()
        result = run(
            ["get", "--no-cache", "--timeout", "2"], f"http://{server.host}/v2/x/manifests/latest", environment=secret_env
        )
        elapsed = time.monotonic() - started
        assert len(server.requests) == 2
    assert_one_line_error(result, 4)
    assert "timed out" in result.err
    assert elapsed < 2 + 1.5

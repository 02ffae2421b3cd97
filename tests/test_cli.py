"""The installed executable, run as a subprocess against the loopback stand-in.

The stand-in verifies every signature from the raw request target and Host
header it received, so a passing exchange is an independent check of the bytes
the helper put on the wire.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import urllib.error
import urllib.request

import pytest

from conftest import assert_one_line_error
from credential_helper.standin import public_key_from_blob

SECRET_API_KEY = "sk-test-4b1d-never-print-me-9f3e"


def challenge_for(server, repo: str = "library/gpt-oss") -> str:
    """The WWW-Authenticate value the stand-in answers an anonymous pull with."""
    url = f"{server.base_url}/v2/{repo}/manifests/latest"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=10)
    assert caught.value.code == 401
    return caught.value.headers["WWW-Authenticate"]


def pull_with(server, token: str, repo: str = "library/gpt-oss") -> dict:
    request = urllib.request.Request(
        f"{server.base_url}/v2/{repo}/manifests/latest", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


# --- the three input forms ----------------------------------------------------------


def test_form_json_round_trip(run, standin):
    scope = "repository:library/gpt-oss:pull"
    stdin = json.dumps({"realm": f"{standin.base_url}/token", "service": "ollama.com", "scope": scope, "host": standin.host})
    result = run(["get"], stdin)
    assert result.code == 0, result
    printed = result.json()
    assert printed["token_type"] == "Bearer" and printed["source"] == "ed25519"
    assert printed["expires_at"].endswith("Z")
    assert pull_with(standin, printed["token"])["name"] == "library/gpt-oss"
    assert standin.exchanges == 1
    assert result.err == ""


def test_form_header_with_host(run, standin):
    result = run(["get", "--host", standin.host], challenge_for(standin))
    assert result.code == 0, result
    pull_with(standin, result.json()["token"])


def test_form_header_with_leading_field_name(run, standin):
    result = run(["get", "--host", standin.host], "WWW-Authenticate: " + challenge_for(standin) + "\n")
    assert result.code == 0, result
    pull_with(standin, result.json()["token"])


def test_form_header_loopback_realm_needs_no_host(run, standin):
    # Loopback realms are allowed without --host (issue 2's rule).
    result = run(["get"], challenge_for(standin))
    assert result.code == 0, result


def test_form_url_fetches_the_challenge(run, standin):
    url = f"{standin.base_url}/v2/library/qwen3/manifests/latest"
    result = run(["get"], url + "\n")
    assert result.code == 0, result
    pull_with(standin, result.json()["token"], "library/qwen3")


def test_form_url_without_challenge_is_a_server_failure(run, standin):
    result = run(["get"], f"{standin.base_url}/api/tags")
    assert_one_line_error(result, 4)
    assert "without a Bearer challenge" in result.err


def test_python_module_entry_point_works_too(env, standin):
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "credential_helper", "get"],
        input=challenge_for(standin),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    pull_with(standin, json.loads(completed.stdout)["token"])


# --- dry run ------------------------------------------------------------------


def test_dry_run_sends_nothing_and_prints_a_verifiable_request(run, standin, public_line):
    result = run(["get", "--dry-run", "--host", standin.host], challenge_for(standin))
    assert result.code == 0, result
    printed = result.json()
    assert standin.exchanges == 0
    assert not any("/token" in line for line in standin.log)
    assert printed["token_url"].startswith(f"{standin.base_url}/token?")
    assert printed["host"] == standin.host
    assert (
        printed["signed_data"]
        == f"GET,{printed['token_url']},ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="
    )
    blob, signature = printed["authorization"].split(":")
    assert blob == public_line("ed25519-a").split()[1]
    public_key_from_blob(blob).verify(base64.b64decode(signature), printed["signed_data"].encode())


# --- scheme 2 -------------------------------------------------------------------------


def test_sign_arguments_and_the_stand_in_accepts_it(run, standin):
    result = run(["sign", "POST", f"{standin.base_url}/api/me"])
    assert result.code == 0, result
    printed = result.json()
    assert printed["method"] == "POST" and printed["source"] == "ed25519"
    assert printed["url"] == f"{standin.base_url}/api/me?ts={printed['ts']}"
    request = urllib.request.Request(printed["url"], data=b"", method="POST", headers={"Authorization": printed["authorization"]})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["name"] == "jdoe"


def test_sign_from_stdin_json(run, standin):
    result = run(["sign"], json.dumps({"method": "post", "url": f"{standin.base_url}/api/generate?b=2&a=1"}))
    assert result.code == 0, result
    printed = result.json()
    assert printed["method"] == "POST"  # upper-cased, as sign --help, the README and the man page say
    assert printed["url"] == f"{standin.base_url}/api/generate?a=1&b=2&ts={printed['ts']}"
    request = urllib.request.Request(
        printed["url"], data=b"{}", method="POST", headers={"Authorization": printed["authorization"]}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["account"] == "jdoe"


def test_sign_refuses_cleartext_to_a_remote_host(run):
    result = run(["sign", "GET", "http://ollama.com/api/tags"])
    assert_one_line_error(result, 2)


def test_signature_from_an_unlinked_key_is_refused(run, standin, keys):
    result = run(["sign", "--identity", str(keys / "ed25519-b"), "POST", f"{standin.base_url}/api/me"])
    assert result.code == 0 and result.err == "", result  # signing succeeds; the server refuses
    request = urllib.request.Request(
        result.json()["url"], data=b"", method="POST", headers={"Authorization": result.json()["authorization"]}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 401


# --- exit 1: the server refused --------------------------------------------------


def test_unknown_key_is_refused_with_exit_1(run, standin, keys):
    result = run(["get", "--identity", str(keys / "ed25519-b")], challenge_for(standin))
    assert_one_line_error(result, 1)
    assert "401" in result.err and "invalid signature or unknown key" in result.err


def test_replayed_nonce_is_refused(run, standin):
    stdin = json.dumps(
        {
            "realm": f"{standin.base_url}/token",
            "service": "ollama.com",
            "scope": "repository:library/x:pull",
            "nonce": "fixed-nonce-1",
        }
    )
    assert run(["get", "--no-cache"], stdin).code == 0
    replay = run(["get", "--no-cache"], stdin)
    assert_one_line_error(replay, 1)
    assert "replayed nonce" in replay.err


def test_stale_timestamp_is_refused(run, public_line):
    from credential_helper.standin import StandIn

    # The stand-in's clock is an hour ahead. A caller-supplied nonce rules out the
    # clock-skew retry (it would replay the nonce), so the stale ts is refused.
    with StandIn(clock_offset=3600) as server:
        server.authorize(public_line("ed25519-a"))
        stdin = json.dumps({"realm": f"{server.base_url}/token", "service": "s", "scope": "x", "nonce": "n-stale"})
        result = run(["get", "--no-cache"], stdin)
    assert_one_line_error(result, 1)
    assert "too old or too new" in result.err


# --- exit 2: usage, input, realm rules ---------------------------------------------


@pytest.mark.parametrize(
    "stdin, message",
    [
        ('Bearer realm="http://ollama.com/token",service="s",scope="x"', "must use https"),
        ('Bearer realm="https://evil.example/token",service="s",scope="x"', "--host"),
        ("not a challenge at all", "Bearer"),
        ("", "no challenge"),
    ],
)
def test_bad_input_and_refused_realms_exit_2_before_the_key_is_read(run, env, stdin, message):
    # No key and no API key: an identity error would be exit 3, so exit 2 proves
    # the input and realm were checked first.
    environment = dict(env, HOME=env["HOME"] + "-missing")
    result = run(["get"], stdin, environment=environment)
    assert_one_line_error(result, 2)
    assert message in result.err


def test_cross_origin_realm_is_refused(run, standin):
    result = run(["get", "--host", "registry.example.com"], challenge_for(standin))
    assert_one_line_error(result, 2)
    assert "must be equal" in result.err
    assert standin.exchanges == 0


def test_host_in_json_and_flag_must_agree(run, standin):
    stdin = json.dumps({"realm": f"{standin.base_url}/token", "host": standin.host})
    assert_one_line_error(run(["get", "--host", "other.example"], stdin), 2)


@pytest.mark.parametrize(
    "args",
    [
        ["frobnicate"],
        ["get", "--timeout", "0"],
        ["get", "--timeout", "soon"],
        ["sign", "GET"],
        ["get", "--refresh", "--no-cache"],
    ],
)
def test_usage_errors_exit_2_with_one_line(run, args):
    assert_one_line_error(run(args, '{"realm": "https://ollama.com/t"}'), 2)


# --- exit 3: identity ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key, message",
    [
        ("ed25519-encrypted", "passphrase-protected"),
        ("rsa-2048", "only Ed25519"),
        ("ecdsa-p256", "only Ed25519"),
        ("garbage", "not a valid private key"),
        ("truncated", "not a valid private key"),
    ],
)
def test_unusable_keys_exit_3(run, keys, key, message):
    for args in (["get", "--dry-run"], ["sign", "GET", "https://ollama.com/api/tags"]):
        stdin = 'Bearer realm="https://ollama.com/token",service="ollama.com",scope="x"' if args[0] == "get" else ""
        result = run([*args[:1], "--identity", str(keys / key), *args[1:]], stdin)
        assert_one_line_error(result, 3)
        assert message in result.err


def test_key_readable_by_others_is_refused_with_chmod_advice(run, keys):
    os.chmod(keys / "ed25519-a", 0o644)
    result = run(["sign", "--identity", str(keys / "ed25519-a"), "GET", "https://ollama.com/api/tags"])
    assert_one_line_error(result, 3)
    assert "chmod 600" in result.err


def test_key_writable_by_group_is_refused(run, keys):
    os.chmod(keys / "ed25519-a", 0o620)
    assert_one_line_error(run(["key", "--identity", str(keys / "ed25519-a")]), 3)


def test_missing_key_without_api_key_names_the_way_out(run, env):
    shutil.rmtree(os.path.join(env["HOME"], ".ollama"))
    result = run(["sign", "GET", "https://ollama.com/api/tags"])
    assert_one_line_error(result, 3)
    assert os.path.join(env["HOME"], ".ollama", "id_ed25519") in result.err
    assert "key --generate" in result.err and "ollama signin" in result.err


def test_directory_instead_of_key_is_an_identity_error(run, tmp_path):
    assert_one_line_error(run(["key", "--identity", str(tmp_path)]), 3)


# --- API key fallback ------------------------------------------------------------------


def test_api_key_fallback_only_when_the_key_file_is_missing(run, env, standin):
    shutil.rmtree(os.path.join(env["HOME"], ".ollama"))
    environment = dict(env, OLLAMA_API_KEY=SECRET_API_KEY)
    got = run(["get"], challenge_for(standin), environment=environment)
    assert got.code == 0, got
    assert got.json() == {"token": SECRET_API_KEY, "token_type": "Bearer", "expires_at": None, "source": "api_key"}
    signed = run(["sign", "POST", "https://ollama.com/api/chat"], environment=environment)
    assert signed.code == 0, signed
    assert signed.json()["authorization"] == f"Bearer {SECRET_API_KEY}"
    assert signed.json()["source"] == "api_key"
    assert standin.exchanges == 0  # no network for the fallback


@pytest.mark.parametrize(
    "args, stdin",
    [
        (["get", "--host", "auth.example.com"], 'Bearer realm="https://auth.example.com/token",service="s",scope="x"'),
        (["sign", "POST", "https://api.example.com/v1/chat"], ""),
    ],
)
def test_api_key_is_never_handed_out_for_another_host(run, env, args, stdin):
    shutil.rmtree(os.path.join(env["HOME"], ".ollama"))
    result = run(args, stdin, environment=dict(env, OLLAMA_API_KEY=SECRET_API_KEY))
    assert_one_line_error(result, 2)
    assert "OLLAMA_API_KEY" in result.err and SECRET_API_KEY not in result.err


def test_broken_key_never_falls_back_to_the_api_key(run, env, keys, standin):
    environment = dict(env, OLLAMA_API_KEY=SECRET_API_KEY)
    result = run(["get", "--identity", str(keys / "garbage")], challenge_for(standin), environment=environment)
    assert_one_line_error(result, 3)
    assert SECRET_API_KEY not in result.err


def test_empty_api_key_is_no_fallback(run, env):
    shutil.rmtree(os.path.join(env["HOME"], ".ollama"))
    assert_one_line_error(run(["sign", "GET", "https://ollama.com/api/tags"], environment=dict(env, OLLAMA_API_KEY="")), 3)


# --- exit 4: network and server failures ------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_exits_4_naming_the_host(run):
    port = _closed_port()
    result = run(["get", "--no-cache"], f'Bearer realm="http://127.0.0.1:{port}/token",service="s",scope="x"')
    assert_one_line_error(result, 4)
    assert f"127.0.0.1:{port}" in result.err and "refused" in result.err


# --- help and version ----------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["get"], ["sign"], ["erase"], ["key"], ["whoami"]])
def test_help_for_program_and_each_command(run, command):
    result = run([*command, "--help"])
    assert result.code == 0
    assert result.out.startswith("usage: ollama-credential-helper")


def test_version(run):
    from credential_helper import __version__

    result = run(["--version"])
    assert result.code == 0 and result.out.strip() == f"ollama-credential-helper {__version__}"


def test_no_command_prints_usage_and_exits_2(run):
    result = run([])
    assert result.code == 2 and "usage:" in result.err and result.out == ""

"""Identity and account commands: key, key --generate, whoami.

Checked against ssh-keygen (public line, fingerprint, comment), the reference
vectors (connect URL) and the stand-in, which verifies whoami's signature.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess

import pytest

from conftest import assert_one_line_error, load_vectors
from credential_helper.standin import StandIn

IDENTITY = {v["key"]: v for v in load_vectors("identity.json")}


def ssh_keygen(*args: str) -> str:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, check=True).stdout


# --- key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ed25519-a", "ed25519-b", "ed25519-a.pkcs8.pem"])
def test_key_prints_the_public_line_without_comment(run, keys, name):
    result = run(["key", "--identity", str(keys / name)])
    assert result.code == 0
    assert result.out == IDENTITY[name]["public_key"] + "\n"


@pytest.mark.parametrize("name", ["ed25519-a", "ed25519-b"])
def test_key_matches_ssh_keygen_y(run, keys, name):
    derived = " ".join(ssh_keygen("-y", "-f", str(keys / name)).split()[:2])
    assert run(["key", "--identity", str(keys / name)]).out.strip() == derived


@pytest.mark.parametrize("name", ["ed25519-a", "ed25519-b"])
def test_fingerprint_as_ssh_keygen_l_prints_it(run, keys, name):
    listed = ssh_keygen("-l", "-f", str(keys / f"{name}.pub")).split()
    expected = f"{listed[0]} {listed[1]} {listed[-1]}"  # drop the comment, as the identity has none
    assert run(["key", "--fingerprint", "--identity", str(keys / name)]).out.strip() == expected
    assert listed[1] == IDENTITY[name]["fingerprint"]


def test_connect_url_uses_this_host_name_and_the_reference_key_encoding(run, keys):
    result = run(["key", "--connect-url", "--identity", str(keys / "ed25519-a")])
    expected_key = IDENTITY["ed25519-a"]["connect_url"].split("&key=")[1]
    assert result.out.strip().endswith("&key=" + expected_key)
    assert result.out.startswith("https://ollama.com/connect?name=")
    name = result.out.split("name=")[1].split("&")[0]
    hostname = socket.gethostname()
    assert name == "".join(c if c.isalnum() or c in "-_.~" else "%%%02X" % ord(c) for c in hostname)
    assert base64.urlsafe_b64decode(expected_key + "==").decode() == IDENTITY["ed25519-a"]["public_key"]


def test_key_options_are_exclusive(run, keys):
    assert_one_line_error(run(["key", "--fingerprint", "--generate", "--identity", str(keys / "ed25519-a")]), 2)


# --- key --generate ---------------------------------------------------------------------------


def test_generate_creates_an_identity_as_ollama_does(run, env, tmp_path):
    home = tmp_path / "fresh-home"
    home.mkdir()
    environment = dict(env, HOME=str(home))
    old_umask = os.umask(0o022)
    try:
        result = run(["key", "--generate"], environment=environment)
    finally:
        os.umask(old_umask)
    assert result.code == 0, result
    key_file = home / ".ollama" / "id_ed25519"
    pub_file = home / ".ollama" / "id_ed25519.pub"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pub_file).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(home / ".ollama").st_mode) == 0o755
    assert key_file.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # ssh-keygen derives the same public line; an empty comment means nothing after it.
    derived = ssh_keygen("-y", "-f", str(key_file)).strip()
    assert derived == pub_file.read_text().strip() == result.out.splitlines()[0]
    assert len(derived.split()) == 2
    # Alone (no .pub beside it), ssh-keygen reports the private key's own comment.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "k").write_bytes(key_file.read_bytes())
    os.chmod(alone / "k", 0o600)
    listed = ssh_keygen("-l", "-f", str(alone / "k")).split()
    assert len(listed) == 3 and listed[0] == "256" and listed[2] == "(ED25519)"  # empty comment
    assert "https://ollama.com/connect?name=" in result.out
    # And it is usable at once.
    assert run(["key", "--fingerprint"], environment=environment).code == 0


def test_generate_refuses_to_overwrite(run, env, home):
    key_file = home / ".ollama" / "id_ed25519"
    before = key_file.read_bytes()
    result = run(["key", "--generate"])
    assert_one_line_error(result, 3)
    assert "already exists" in result.err
    assert key_file.read_bytes() == before
    assert not (home / ".ollama" / "id_ed25519.pub").exists()


def test_generate_refuses_when_only_the_pub_file_exists(run, tmp_path):
    target = tmp_path / "k"
    (tmp_path / "k.pub").write_text("ssh-ed25519 AAAA old\n")
    assert_one_line_error(run(["key", "--generate", "--identity", str(target)]), 3)
    assert not target.exists()


def test_generate_is_never_readable_by_others_even_with_a_loose_umask(run, tmp_path):
    old_umask = os.umask(0)
    try:
        result = run(["key", "--generate", "--identity", str(tmp_path / "id")])
    finally:
        os.umask(old_umask)
    assert result.code == 0
    assert stat.S_IMODE(os.stat(tmp_path / "id").st_mode) == 0o600


# --- whoami -------------------------------------------------------------------------------------


def test_whoami_names_the_account(run, env, standin):
    environment = dict(env, OLLAMA_CLOUD_BASE_URL=standin.base_url)
    result = run(["whoami"], environment=environment)
    assert result.code == 0, result
    assert result.out.strip() == "jdoe <jdoe@example.com>, plan pro"
    as_json = run(["whoami", "--json"], environment=environment)
    assert as_json.json() == {"name": "jdoe", "email": "jdoe@example.com", "plan": "pro"}


def test_whoami_unlinked_key_exits_1_with_the_connect_url(run, env, keys, standin):
    environment = dict(env, OLLAMA_CLOUD_BASE_URL=standin.base_url)
    result = run(["whoami", "--identity", str(keys / "ed25519-b")], environment=environment)
    assert_one_line_error(result, 1)
    assert IDENTITY["ed25519-b"]["connect_url"].split("&key=")[1] in result.err


def test_whoami_empty_name_means_not_linked(run, env, keys):
    with StandIn() as server:
        server.authorize((keys / "ed25519-a.pub").read_text(), name="", email="", plan="")
        result = run(["whoami"], environment=dict(env, OLLAMA_CLOUD_BASE_URL=server.base_url))
    assert_one_line_error(result, 1)
    assert "not linked" in result.err and "https://ollama.com/connect?" in result.err


def test_whoami_reads_fields_case_insensitively(run, env):
    from faults import ScriptedServer, reply

    body = json.dumps({"Name": "Jane", "Email": "j@example.com", "Plan": "pro"}).encode()
    with ScriptedServer(reply("200 OK", body)) as server:
        result = run(["whoami", "--json"], environment=dict(env, OLLAMA_CLOUD_BASE_URL=f"http://{server.host}"))
        request = server.requests[0].decode()
    assert result.json() == {"name": "Jane", "email": "j@example.com", "plan": "pro"}
    assert request.startswith("POST /api/me?ts=")
    assert "\r\nContent-Length: 0\r\n" in request


@pytest.mark.parametrize(
    "base",
    ["http://ollama.example", "https://ollama.example/prefix", "https://ollama.example/?a=1", "https://u:p@ollama.example"],
)
def test_whoami_refuses_bases_ollama_refuses(run, env, base):
    # server/cloud_proxy.go resolveCloudProxyBaseURL: https unless loopback; no path, query or user info.
    assert_one_line_error(run(["whoami"], environment=dict(env, OLLAMA_CLOUD_BASE_URL=base)), 2)


def test_whoami_accepts_a_base_with_a_trailing_slash(run, env, standin):
    result = run(["whoami"], environment=dict(env, OLLAMA_CLOUD_BASE_URL=standin.base_url + "/"))
    assert result.code == 0, result


# --- the missing-key message ----------------------------------------------------------------


def test_missing_key_mentions_the_system_service_key_when_present(monkeypatch, tmp_path):
    from credential_helper import identity
    from credential_helper.errors import KeyNotFoundError

    service_pub = tmp_path / "usr-share-ollama" / "id_ed25519.pub"
    service_pub.parent.mkdir()
    service_pub.write_text("ssh-ed25519 AAAA\n")
    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", str(service_pub))
    monkeypatch.setenv("HOME", str(tmp_path))  # the default path: nothing there
    missing = identity.default_identity_path()
    with pytest.raises(KeyNotFoundError) as caught:
        identity.read_key_file(missing)
    message = str(caught.value)
    assert missing in message and "key --generate" in message and "ollama signin" in message
    assert "system service" in message and str(service_pub.parent) in message
    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", str(tmp_path / "absent.pub"))
    with pytest.raises(KeyNotFoundError) as caught:
        identity.read_key_file(missing)
    assert "system service" not in str(caught.value)


def test_a_mistyped_identity_path_is_told_to_check_it_not_to_generate_a_key(run, keys):
    # Break caught: _missing_key_message without its typed-path branch (it said 'key --generate').
    result = run(["sign", "GET", "https://ollama.com/api/tags", "--identity", str(keys / "ed25519-x")])
    assert_one_line_error(result, 3)
    assert "check the path" in result.err and "key --generate" not in result.err
    assert "did you mean " in result.err and str(keys / "ed25519-a") in result.err and str(keys / "ed25519-b") in result.err
    elsewhere = run(["key", "--identity", str(keys / "no-such-dir" / "k")])
    assert_one_line_error(elsewhere, 3)
    assert "does not exist" in elsewhere.err and "key --generate" not in elsewhere.err


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_a_public_key_given_as_identity_names_the_private_key_not_chmod(run, keys, mode):
    # Break caught: _refuse_public_key returning at once (0644: 'chmod 600 ...pub'; 0600: 'not a valid private key').
    os.chmod(keys / "ed25519-a.pub", mode)
    result = run(["sign", "GET", "https://ollama.com/api/tags", "--identity", str(keys / "ed25519-a.pub")])
    assert_one_line_error(result, 3)
    assert "is a public key" in result.err and f"the private key is {keys / 'ed25519-a'}" in result.err
    assert "chmod" not in result.err


def test_doctor_names_the_private_key_for_a_pub_and_no_key_generation_for_a_typo(run, keys):
    import json

    for given, fix in (
        (keys / "ed25519-a.pub", f"--identity {keys / 'ed25519-a'}"),
        (keys / "ed25519-x", "give --identity the path of an existing private key"),
    ):
        os.chmod(keys / "ed25519-a.pub", 0o644)
        result = run(["doctor", "--json", "--identity", str(given), "--timeout", "1", "--registry", "http://127.0.0.1:9"])
        identity_check = next(c for c in json.loads(result.out)["checks"] if c["name"] == "identity")
        assert identity_check["status"] == "fail" and identity_check["fix"] == fix, identity_check


def test_generate_for_a_second_key_does_not_ask_to_link_it(run, env, tmp_path):
    # Break caught: printing the connect page for every key (the README had to say 'ignore it').
    result = run(["key", "--generate", "--identity", str(tmp_path / "box_ed25519")], environment=env)
    assert result.code == 0, result
    assert result.out.splitlines()[0].startswith("ssh-ed25519 AAAA")
    assert "https://ollama.com/connect" not in result.out and "operator" in result.out
    assert f"key --connect-url --identity {tmp_path / 'box_ed25519'}" in result.out

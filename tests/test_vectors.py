"""Byte-for-byte checks against the reference vectors in golden/.

Every expected value here was computed by an independent Go program on the
libraries Ollama uses (golang.org/x/crypto/ssh, net/url), or comes from
RFC 8032 or ssh-keygen; none was produced by this project.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys

import pytest
from freezegun import freeze_time

from pathlib import Path

from conftest import KEY_NAMES, asset, load_vectors
from credential_helper import cli, client, protocol
from credential_helper.account import connect_url
from credential_helper.identity import Identity, load_identity

REGISTRY = load_vectors("registry.json")
REQUESTS = load_vectors("request.json")
IDENTITIES = load_vectors("identity.json")


def _ts_to_iso(ts: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat()


@pytest.mark.parametrize("vector", REGISTRY, ids=[v["name"] for v in REGISTRY])
def test_token_request_matches_reference(vector, keys):
    challenge = protocol.Challenge(**vector["challenge"])
    realm = protocol.parse_url(challenge.realm)
    request = protocol.build_token_request(challenge, realm, vector["ts"], vector["nonce"])
    assert request.token_url == vector["token_url"]
    assert request.host_header == vector["host_header"]
    assert request.signed_data == vector["signed_data"]
    assert load_identity(keys / vector["key"]).sign(request.signed_data) == vector["authorization"]


@pytest.mark.parametrize("vector", REGISTRY, ids=[v["name"] for v in REGISTRY])
def test_get_dry_run_matches_reference_with_frozen_clock(vector, keys, monkeypatch, capsys):
    """The CLI end to end (in-process, so freezegun pins ts): stdin JSON -> dry run."""
    stdin = dict(vector["challenge"], nonce=vector["nonce"])
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(stdin).encode())))
    with freeze_time(_ts_to_iso(vector["ts"])):
        code = cli.main(
            [
                "get",
                "--dry-run",
                "--identity",
                str(keys / vector["key"]),
                "--host",
                protocol.parse_url(vector["challenge"]["realm"]).host,
            ]
        )
    out = capsys.readouterr()
    assert code == 0, out.err
    printed = json.loads(out.out)
    assert printed["token_url"] == vector["token_url"]
    assert printed["host"] == vector["host_header"]
    assert printed["signed_data"] == vector["signed_data"]
    assert printed["authorization"] == vector["authorization"]


@pytest.mark.parametrize("vector", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_signed_request_matches_reference_with_frozen_clock(vector, keys):
    with freeze_time(_ts_to_iso(vector["ts"])):
        signed = client.sign_request(vector["method"], vector["url"], identity=keys / vector["key"])
    assert signed.url == vector["signed_url"]
    assert signed.ts == vector["ts"]
    assert signed.authorization == vector["authorization"]
    plan = protocol.build_signed_request(vector["method"], protocol.parse_url(vector["url"]), vector["ts"])
    assert plan.signed_data == vector["signed_data"]


@pytest.mark.parametrize("vector", IDENTITIES, ids=[v["key"] for v in IDENTITIES])
def test_identity_matches_reference(vector, keys):
    identity = load_identity(keys / vector["key"])
    assert identity.public_key_line == vector["public_key"]
    assert identity.fingerprint == vector["fingerprint"]
    assert connect_url(identity, vector["hostname"]) == vector["connect_url"]


@pytest.mark.process
@pytest.mark.parametrize("name", ["ed25519-a", "ed25519-b"])
def test_public_key_and_fingerprint_match_ssh_keygen(name, keys):
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(keys / name)], capture_output=True, text=True, check=True)
    # ssh-keygen -y appends the comment, if any; the identity has none (as Ollama).
    expected_line = " ".join(derived.stdout.split()[:2])
    identity = load_identity(keys / name)
    assert identity.public_key_line == expected_line
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(keys / name)], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[1] == identity.fingerprint


def test_pkcs8_and_openssh_forms_sign_identically(keys):
    data = "GET,https://ollama.com/token?ts=1,digest"
    assert load_identity(keys / "ed25519-a").sign(data) == load_identity(keys / "ed25519-a.pkcs8.pem").sign(data)


# RFC 8032 section 7.1, TEST 1 and TEST 2: secret key, public key, message, signature.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize("secret, public, message, signature", RFC8032)
def test_signature_format_against_rfc8032(secret, public, message, signature):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    identity = Identity(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret)))
    public_part, signature_part = identity.sign(bytes.fromhex(message)).split(":")
    assert base64.b64decode(signature_part) == bytes.fromhex(signature)
    # The public part is the SSH wire format: string "ssh-ed25519", string key.
    blob = base64.b64decode(public_part)
    assert blob == b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes.fromhex(public)


def test_empty_body_digest_is_the_documented_constant():
    """server/auth.go's digest of an empty body, derived here from hashlib rather than trusted."""
    derived = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
    assert protocol.EMPTY_BODY_DIGEST == derived
    assert all(v["signed_data"].endswith("," + derived) for v in REGISTRY)


def test_golden_assets_stand_alone():
    """The tests read golden/, never the shared folder outside the repository,
    and every vector file the tests load is there."""
    tests_dir = Path(__file__).resolve().parent
    for source in tests_dir.glob("*.py"):
        text = source.read_text()
        outside = ("..", "/shared")  # spelled in two parts so this file does not match itself
        assert "".join(outside) not in text and "shared" + "/vectors" not in text, source.name
    for name in ("registry.json", "request.json", "identity.json"):
        assert isinstance(json.loads(asset(name).read_text()), list) and json.loads(asset(name).read_text()), name
    for name in KEY_NAMES:
        assert asset(f"keys/{name}").is_file(), name
    assert "computed by an independent program" in asset("README.md").read_text()

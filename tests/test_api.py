"""The in-process Python API: the same exchange, errors and cache as the CLI."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

import credential_helper
from credential_helper import (
    Challenge,
    HelperError,
    IdentityError,
    InputError,
    NetworkError,
    RealmRefusedError,
    ServerRefusedError,
    TokenCache,
    fetch_challenge,
    get_token,
    load_identity,
    parse_www_authenticate,
    sign_request,
)
from credential_helper.errors import KeyNotFoundError


def test_get_token_in_process_round_trip(standin, keys, tmp_path):
    challenge, host = fetch_challenge(f"{standin.base_url}/v2/library/x/manifests/latest")
    assert host == standin.host and challenge.scope == "repository:library/x:pull"
    cache = TokenCache(str(tmp_path / "cache"))
    token = get_token(challenge, host=host, identity=keys / "ed25519-a", cache=cache)
    again = get_token(challenge, host=host, identity=keys / "ed25519-a", cache=cache)
    assert token.token == again.token and standin.exchanges == 1
    assert token.source == "ed25519" and token.expires_at is not None
    request = urllib.request.Request(
        f"{standin.base_url}/v2/library/x/manifests/latest", headers={"Authorization": f"Bearer {token.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_get_token_accepts_a_header_string(standin, keys):
    value = f'Bearer realm="{standin.base_url}/token",service="ollama.com",scope="repository:a:pull"'
    assert parse_www_authenticate(value) == Challenge(f"{standin.base_url}/token", "ollama.com", "repository:a:pull")
    assert get_token(value, identity=keys / "ed25519-a").token


def test_sign_request_with_a_loaded_identity(standin, keys):
    identity = load_identity(keys / "ed25519-a")
    signed = sign_request("POST", f"{standin.base_url}/api/me", identity=identity)
    request = urllib.request.Request(signed.url, data=b"", method="POST", headers={"Authorization": signed.authorization})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "call, error, code",
    [
        (lambda k: get_token('Bearer realm="http://ollama.com/token"', identity=k / "ed25519-a"), RealmRefusedError, 2),
        (lambda k: get_token("Basic x", identity=k / "ed25519-a"), InputError, 2),
        (lambda k: load_identity(k / "rsa-2048"), IdentityError, 3),
        (lambda k: load_identity(k / "missing"), KeyNotFoundError, 3),
        (lambda k: get_token('Bearer realm="http://127.0.0.1:1/token"', identity=k / "ed25519-a", timeout=2), NetworkError, 4),
    ],
)
def test_errors_form_one_tree_with_exit_codes(keys, call, error, code):
    with pytest.raises(error) as caught:
        call(keys)
    assert isinstance(caught.value, HelperError)
    assert caught.value.exit_code == code


def test_unknown_key_raises_server_refused(standin, keys):
    with pytest.raises(ServerRefusedError) as caught:
        get_token(f'Bearer realm="{standin.base_url}/token"', identity=keys / "ed25519-b")
    assert caught.value.status == 401 and caught.value.exit_code == 1


def test_reprs_never_show_secrets(standin, keys, tmp_path):
    token = get_token(f'Bearer realm="{standin.base_url}/token"', identity=keys / "ed25519-a")
    signed = sign_request("GET", "https://ollama.com/api/tags", identity=keys / "ed25519-a")
    dry = get_token('Bearer realm="https://ollama.com/token"', identity=keys / "ed25519-a", dry_run=True)
    identity = load_identity(keys / "ed25519-a")
    assert token.token not in repr(token) and "[redacted]" in repr(token)
    assert signed.authorization.split(":")[1] not in repr(signed)
    assert dry.authorization.split(":")[1] not in repr(dry)
    private_pem = (keys / "ed25519-a").read_text().splitlines()[1]
    assert private_pem not in repr(identity)


@pytest.mark.process
def test_public_names_resolve_lazily():
    assert set(credential_helper.__all__) >= {"get_token", "sign_request", "load_identity", "TokenCache", "HelperError"}
    with pytest.raises(AttributeError):
        credential_helper.no_such_name  # noqa: B018
    # In a fresh interpreter: importing the package loads none of its modules;
    # touching a name loads just the module that defines it.
    probe = (
        "import sys, credential_helper as c\n"
        "mods = lambda: sorted(m for m in sys.modules if m.startswith(('credential_helper.', 'cryptography', 'urllib3')))\n"
        "print(mods()); c.sign_request; print(mods())\n"
    )
    before, after = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert before == "[]"
    assert "credential_helper.client" in after and "cryptography" not in after and "urllib3" not in after

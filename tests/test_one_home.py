"""One rule, one place (issue 21): each rule below lives in one function, and
every caller goes through it. Each test replaces the rule's one home and checks
that every caller then follows the replacement, so no caller can keep a copy
of its own that drifts."""

from __future__ import annotations

import pytest

from credential_helper import client, protocol, tokens
from credential_helper.integrations import _core
from credential_helper.response import Response
from credential_helper.serve import sign, verify
from credential_helper.serve.messages import Head

# --- the Bearer credential: protocol.bearer_credential / is_bearer_challenge / bearer -------------


@pytest.mark.parametrize("value, credential", [
    ("Bearer abc", "abc"),
    ("bearer abc", "abc"),
    ("BEARER   abc", "abc"),  # RFC 9110 11.1: the scheme is case-insensitive
    ("  Bearer abc \t", "abc"),
    ("Bearer", None),
    ("Bearerabc", None),
    ("Basic abc", None),
    ("abc", None),
    ("", None),
])
def test_the_bearer_rule(value, credential):
    assert protocol.bearer_credential(value) == credential
    assert protocol.is_bearer_challenge(value) is (credential is not None)


def test_bearer_formats_what_bearer_credential_reads():
    assert protocol.bearer("t0k") == "Bearer t0k"
    assert protocol.bearer_credential(protocol.bearer("t0k")) == "t0k"


def test_every_reader_of_a_bearer_value_uses_the_one_rule(monkeypatch):
    seen: list[str] = []

    def spy(value: str) -> str | None:
        seen.append(value)
        return None  # "not Bearer", whatever the value says

    monkeypatch.setattr(protocol, "bearer_credential", spy)
    # The proxy's local token: with the rule saying "not Bearer", no token is presented.
    assert sign.presented_token(Head("GET", "/", "1.1", (("Authorization", "Bearer och-x"),))) is None
    # The gate strips an optional Bearer scheme only through the rule.
    verify._parse_authorization("Bearer AAAA:BBBB")
    # Challenges: the Python API and the adapters pick the Bearer one through it.
    core = _core.KeylessCore(cache=False)
    assert core.challenge(401, ['Bearer realm="https://ollama.com/token"'], "https://ollama.com/v2/") is None
    assert seen == ["Bearer och-x", "Bearer AAAA:BBBB", 'Bearer realm="https://ollama.com/token"']


def test_every_writer_of_a_bearer_value_uses_the_one_rule(monkeypatch):
    monkeypatch.setattr(protocol, "bearer", lambda token: f"X-{token}")
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-test")
    signed = client.sign_request("GET", "https://ollama.com/api/tags", identity="/nonexistent/id_ed25519")
    assert signed.authorization == "X-sk-test"


# --- the clock-skew rule: tokens.clock_skew, read by the token flow and doctor ---------------------


def test_the_skew_rule_has_one_home(monkeypatch):
    monkeypatch.setattr(tokens, "clock_skew", lambda date, now: 500.0)
    answer = Response(401, "Unauthorized", {"date": ["whatever"]}, b"{}")
    assert tokens.skew_to_correct(answer) == 500.0


# --- the public key's forms: credential_helper.keys ----------------------------------------------


def test_the_identity_and_the_gate_take_the_fingerprint_from_keys(monkeypatch, keys):
    import base64

    from credential_helper import keys as key_forms
    from credential_helper.identity import load_identity
    from credential_helper.serve import authorized_keys, verify as verifier

    # The key file and the verifier hold the very function (imported by name), not a copy.
    assert authorized_keys.fingerprint is key_forms.fingerprint and verifier.fingerprint is key_forms.fingerprint
    assert authorized_keys.is_ed25519_blob is key_forms.is_ed25519_blob is verifier.is_ed25519_blob
    identity = load_identity(str(keys / "ed25519-a"))
    blob = base64.b64decode(identity.public_key_b64)
    assert key_forms.line(blob) == identity.public_key_line
    monkeypatch.setattr(key_forms, "fingerprint", lambda data: "SHA256:one-home")
    assert identity.fingerprint == "SHA256:one-home"  # read through keys at each call

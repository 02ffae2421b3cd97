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


@pytest.mark.parametrize(
    "value, credential",
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc", "abc"),  # RFC 9110 11.1: the scheme is case-insensitive
        ("  Bearer abc \t", "abc"),
        ("Bearer", None),
        ("Bearerabc", None),
        ("Basic abc", None),
        ("abc", None),
        ("", None),
    ],
)
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


# --- untrusted text in a message: sanitize.shown / quoted -----------------------------------------


@pytest.mark.parametrize(
    "text, limit, expected",
    [
        ("plain", 80, "plain"),
        ("a\x1b[2Jb\r\nc", 80, "ab c"),  # an escape sequence gone, CR/LF one space: one line that paints nothing
        ("x" * 90, 80, "x" * 80 + "..."),
    ],
)
def test_shown_and_quoted(text, limit, expected):
    from credential_helper import sanitize

    assert sanitize.shown(text, limit) == expected
    assert sanitize.quoted(text, limit) == repr(expected)


def test_every_message_quoting_untrusted_text_goes_through_sanitize(monkeypatch):
    from credential_helper import sanitize
    from credential_helper.serve import authorized_keys, record

    # protocol and the key file hold the very function (imported by name) ...
    assert protocol.quoted is sanitize.quoted and authorized_keys.quoted is sanitize.quoted
    # ... and the log line calls through the module at each use.
    monkeypatch.setattr(sanitize, "shown", lambda text, limit=80: "<shown>")
    line = record.text_line(record.Record(time=0.0, method="GET", path="/api/\x1bchat", status=200, bytes=0, ms=1.0))
    assert line.startswith("<shown> <shown> 200")


# --- the diagnosis travels on the error (errors.HelperError.fix) ---------------------------------


def test_identity_errors_carry_their_fix(keys, tmp_path):
    import os
    import shutil

    from credential_helper.errors import IdentityError
    from credential_helper.identity import load_identity

    open_key = tmp_path / "open_key"
    shutil.copy(keys / "ed25519-a", open_key)
    os.chmod(open_key, 0o644)
    cases = {
        str(open_key): f"chmod 600 {open_key}",
        str(keys / "ed25519-encrypted"): f'ssh-keygen -p -N "" -f {keys / "ed25519-encrypted"}',
    }
    for path, fix in cases.items():
        with pytest.raises(IdentityError) as failed:
            load_identity(path)
        assert failed.value.fix == fix


def test_doctor_reads_the_fix_from_the_error_not_from_its_words(monkeypatch):
    from credential_helper import doctor, identity
    from credential_helper.errors import IdentityError

    def refuse(path):
        raise IdentityError("chmod passphrase is a public key", fix="the fix the raiser knew")

    monkeypatch.setattr(identity, "load_identity", refuse)
    assert doctor.check_identity("/some/key").fix == "the fix the raiser knew"


def test_network_failures_are_diagnosed_by_kind():
    import socket
    import ssl

    from credential_helper import transport

    assert transport.diagnose(socket.gaierror(-2, "Name or service not known"), "h")[1] == "dns"
    assert transport.diagnose(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "h")[1] == "tls"
    assert transport.diagnose(ConnectionRefusedError(111, "refused"), "h")[1] == "refused"
    assert transport.diagnose(TimeoutError("timed out"), "h") == (None, "timeout")
    assert set(transport.FIXES) >= {"dns", "tls", "proxy", "timeout", "refused", "other"}

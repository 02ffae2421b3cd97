"""The proxy's policy at its edges (serve/sign.py, serve/messages.py; issue 21, found by
mutation): the reason class of each refusal (the log, the metrics and X-Ollama-Reason
carry it), the words a refused client reads, the local token's bounds, and the
real Signer against golden/request.json (signatures computed by an independent Go
program) -- never the module's own output."""

from __future__ import annotations

import datetime
import os
import stat

import pytest
from freezegun import freeze_time

from conftest import load_vectors
from credential_helper import protocol
from credential_helper.errors import IdentityError, InputError, NetworkError, RealmRefusedError
from credential_helper.serve import sign
from credential_helper.serve.messages import Answer, Forward, Head, connection_tokens

TOKEN = "och-" + "t" * 40
REQUESTS = load_vectors("request.json")


def head(method="POST", target="/api/me", **fields) -> Head:
    return Head(method, target, "1.1", tuple((name.replace("_", "-"), value) for name, value in fields.items()))


class FailingSigner:
    upstream = protocol.URL("https", "ollama.com", "", "")

    def __init__(self, error: Exception) -> None:
        self.error = error

    def sign(self, method, target):
        raise self.error


class FakeSigner(FailingSigner):
    def __init__(self) -> None:
        pass

    def sign(self, method, target):
        return target, "PUB:SIG"


def decide(policy: sign.SigningPolicy, **fields) -> Forward | Answer:
    return policy.decide(head(**fields))


# --- each refusal's status, reason class and words ---------------------------------------------


def test_a_foreign_host_is_refused_as_origin_naming_the_proxys_address():
    policy = sign.SigningPolicy(FakeSigner(), TOKEN, ("127.0.0.1", 11470))
    answer = decide(policy, Host="evil.example:11470", Authorization=f"Bearer {TOKEN}")
    assert (answer.status, answer.reason) == (403, "origin")
    assert answer.message == (
        "the Host header must name this proxy (127.0.0.1:11470): a DNS name "
        "that points at loopback is how a web page would reach it"
    )


def test_a_proxy_on_a_non_loopback_address_says_so():
    policy = sign.SigningPolicy(FakeSigner(), TOKEN, ("192.0.2.1", 11470))
    answer = decide(policy, Host="192.0.2.1:11470")
    assert answer.status == 403 and "(a loopback address)" in answer.message


def test_a_browser_request_is_refused_as_origin():
    policy = sign.SigningPolicy(FakeSigner(), TOKEN, ("127.0.0.1", 11470))
    answer = decide(policy, Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}", Sec_Fetch_Site="cross-site")
    assert (answer.status, answer.reason) == (403, "origin")


def test_a_wrong_token_is_a_401_whose_status_line_says_why():
    policy = sign.SigningPolicy(FakeSigner(), TOKEN, ("127.0.0.1", 11470))
    answer = decide(policy, Host="127.0.0.1:11470", Authorization="Bearer wrong")
    assert (answer.status, answer.reason) == (401, "token")
    assert answer.reason_phrase() == "Unauthorized (missing or wrong local access token)"
    assert dict(answer.headers) == {"WWW-Authenticate": 'Bearer realm="ollama-credential-helper proxy"'}
    assert answer.message.startswith("missing or wrong local access token: send it as 'Authorization: Bearer <token>'")


def test_a_lower_case_method_is_malformed():
    policy = sign.SigningPolicy(FakeSigner(), TOKEN, ("127.0.0.1", 11470))
    answer = policy.decide(head("post", Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}"))
    assert (answer.status, answer.reason) == (400, "malformed")


@pytest.mark.parametrize(
    "error, status, reason",
    [
        (InputError("the request URL has an invalid %-escape in its path"), 400, "malformed"),
        (IdentityError("the key cannot be read"), 503, "identity"),
        (NetworkError("x"), 503, "identity"),  # any other helper error: the proxy cannot sign
    ],
)
def test_a_target_that_cannot_be_signed(error, status, reason):
    policy = sign.SigningPolicy(FailingSigner(error), TOKEN, ("127.0.0.1", 11470))
    answer = decide(policy, Host="127.0.0.1:11470", Authorization=f"Bearer {TOKEN}")
    assert (answer.status, answer.reason, answer.message) == (status, reason, str(error))


def test_no_token_still_needs_some_key_for_the_clients():
    assert "export OPENAI_API_KEY=unused" in sign.env_lines("http://127.0.0.1:11470", None)
    assert "export ANTHROPIC_API_KEY=och-x" in sign.env_lines("http://127.0.0.1:11470", "och-x")


def test_an_allow_origin_that_is_not_a_url_names_the_option():
    with pytest.raises(InputError, match="^the --allow-origin has an invalid host 'a b'$"):
        sign.parse_origins(["http://a b"])


# --- the local token file ------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path, monkeypatch):
    directory = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(directory))
    return directory / "ollama-credential-helper"


def test_the_token_is_made_once_private_and_unguessable(config):
    token = sign.local_token()
    assert token.startswith("och-") and len(token) == 4 + 43  # 32 random bytes, base64url
    path = config / "proxy-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and path.read_text() == token + "\n"
    assert sign.local_token() == token  # read back, not made again


@pytest.mark.parametrize("length, usable", [(31, False), (32, True)])
def test_a_token_file_holds_at_least_32_characters(config, length, usable):
    config.mkdir(parents=True, mode=0o700)
    path = config / "proxy-token"
    path.write_text("x" * length + "\n")
    path.chmod(0o600)
    if usable:
        assert sign.local_token() == "x" * length
    else:
        with pytest.raises(IdentityError, match="does not hold a usable token"):
            sign.local_token()


def test_a_token_file_others_may_read_is_refused(config):
    config.mkdir(parents=True, mode=0o700)
    path = config / "proxy-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(IdentityError, match="is not a private regular file of yours"):
        sign.local_token()


# --- the real signer -------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", [v for v in REQUESTS if v["url"].startswith("https://ollama.com/")], ids=lambda v: v["name"])
def test_the_signer_signs_as_the_go_vectors_do(vector, keys, monkeypatch):
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    signer = sign.Signer(protocol.parse_url("https://ollama.com"), str(keys / vector["key"]))
    assert signer.description.startswith("key SHA256:")
    target = vector["url"][len("https://ollama.com") :]
    with freeze_time(datetime.datetime.fromtimestamp(vector["ts"], datetime.timezone.utc)):
        sent, authorization = signer.sign(vector["method"], target)
    assert sent == vector["signed_data"].split(",", 1)[1]
    assert authorization == vector["authorization"]


def test_an_api_key_is_sent_as_bearer_toward_ollama_only(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", "sk-test")
    signer = sign.Signer(protocol.parse_url("https://ollama.com"), str(tmp_path / "no-key"))
    assert signer.description == "OLLAMA_API_KEY (an API key)"
    assert signer.sign("POST", "/api/chat?x=1") == ("/api/chat?x=1", "Bearer sk-test")
    with pytest.raises(InputError, match="^the request URL has an invalid %-escape in its path$"):
        signer.sign("POST", "/a%zz")
    with pytest.raises(RealmRefusedError):
        sign.Signer(protocol.parse_url("https://api.example.com"), str(tmp_path / "no-key"))


# --- the answer's shape (messages.Answer) ------------------------------------------------------------


@pytest.mark.parametrize(
    "status, kind",
    [(400, "invalid_request_error"), (404, "not_found_error"), (405, "api_error"), (401, "api_error"), (503, "api_error")],
)
def test_a_v1_error_has_openais_type(status, kind):
    # Ollama's openai.NewError (openai/openai.go): 400 invalid_request_error, 404 not_found_error, else api_error.
    import json

    body = json.loads(Answer(status, "m", reason="r").payload("/v1/chat/completions"))
    assert body == {"error": {"message": "m", "type": kind, "param": None, "code": "r"}}


def test_a_status_without_a_known_phrase_has_an_empty_one():
    assert Answer(418).reason_phrase() == ""
    assert Answer(403, reason="token").reason_phrase() == "Forbidden"  # the short reason is for 401 only
    assert Answer(401, reason="expired", key="SHA256:abc").reason_phrase() == "Unauthorized (key expired)"
    assert Answer(401, reason="unknown-key", key="SHA256:abc").reason_phrase() == (
        "Unauthorized (key not in the server's authorized_keys: SHA256:abc)"
    )


def test_connection_tokens_are_lower_case_field_names():
    # RFC 9110 7.6.1: Connection lists field names, compared case-insensitively.
    fields = [("Connection", "Keep-Alive, X-Trace ,,"), ("connection", "close"), ("X-Other", "a")]
    assert connection_tokens(fields) == {"keep-alive", "x-trace", "close"}

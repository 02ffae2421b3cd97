"""The one token flow (issue 21): tokens.exchange, checked against the reference
vectors (golden/registry.json, computed by an independent Go program), and the
proof that the Python API and the adapters both drive it rather than a copy."""

from __future__ import annotations

import datetime
import re
import email.utils

import pytest
from freezegun import freeze_time

from conftest import load_vectors
from credential_helper import client, protocol, tokens
from credential_helper.errors import NetworkError, ServerRefusedError
from credential_helper.identity import load_identity
from credential_helper.integrations import _core
from credential_helper.response import Response

VECTOR = load_vectors("registry.json")[0]


def identity(keys):
    return load_identity(str(keys / VECTOR["key"]))


def start(keys, nonce=VECTOR["nonce"]):
    challenge = protocol.Challenge(**VECTOR["challenge"])
    realm = protocol.parse_url(challenge.realm)
    return tokens.exchange(challenge, realm, identity(keys), nonce)


def token_answer(status=200, date=None, body=b'{"token": "t0k3n", "expires_in": 300}') -> Response:
    headers = {"date": [date]} if date else {}
    return Response(status, "OK" if status == 200 else "Unauthorized", headers, body)


def test_the_first_call_is_the_reference_token_request(keys):
    with freeze_time(datetime.datetime.fromtimestamp(VECTOR["ts"], datetime.timezone.utc)):
        call = next(start(keys))
    assert call.request.token_url == VECTOR["token_url"]
    assert call.request.host_header == VECTOR["host_header"]
    assert call.request.signed_data == VECTOR["signed_data"]
    assert call.authorization == VECTOR["authorization"]


def test_a_token_answer_ends_the_flow(keys):
    flow = start(keys)
    next(flow)
    with pytest.raises(StopIteration) as done:
        flow.send(token_answer())
    assert done.value.value.token == "t0k3n" and done.value.value.note == ""


def test_a_401_with_a_skewed_date_is_retried_once_with_the_corrected_ts(keys):
    challenge = protocol.Challenge(**VECTOR["challenge"])
    realm = protocol.parse_url(challenge.realm)
    flow = tokens.exchange(challenge, realm, identity(keys))  # no fixed nonce: a retry is allowed
    first = next(flow)
    first_ts = int(dict(p.split("=", 1) for p in first.request.token_url.split("?", 1)[1].split("&"))["ts"])
    ahead = email.utils.formatdate(first_ts + 120, usegmt=True)  # the server's clock is 120 s ahead
    second = flow.send(token_answer(401, ahead, b'{"error": "unauthorized"}'))
    second_ts = int(dict(p.split("=", 1) for p in second.request.token_url.split("?", 1)[1].split("&"))["ts"])
    assert 118 <= second_ts - first_ts <= 122
    with pytest.raises(StopIteration) as done:
        flow.send(token_answer())
    assert re.search(r"(119|120|121)s behind ollama.com:443", done.value.value.note), done.value.value.note


def test_the_clock_is_corrected_in_the_right_direction(keys):
    challenge = protocol.Challenge(**VECTOR["challenge"])
    realm = protocol.parse_url(challenge.realm)
    flow = tokens.exchange(challenge, realm, identity(keys))
    first = next(flow)
    first_ts = int(first.request.token_url.rsplit("ts=", 1)[1].split("&")[0])
    behind = email.utils.formatdate(first_ts - 600, usegmt=True)  # the server's clock is 10 minutes behind
    second = flow.send(token_answer(401, behind, b"{}"))
    second_ts = int(second.request.token_url.rsplit("ts=", 1)[1].split("&")[0])
    assert -602 <= second_ts - first_ts <= -598
    with pytest.raises(ServerRefusedError) as refused:
        flow.send(token_answer(401, behind, b"{}"))
    assert "ahead of" in str(refused.value)  # the second refusal carries the note: one line


def test_a_fixed_nonce_is_never_resigned_with_another_ts(keys):
    # A caller's fixed nonce replays a challenge exactly: a skewed 401 ends the flow.
    flow = start(keys)
    next(flow)
    with pytest.raises(ServerRefusedError):
        flow.send(token_answer(401, email.utils.formatdate(VECTOR["ts"] + 3600, usegmt=True), b"{}"))


def test_a_send_error_thrown_in_comes_back_with_the_flows_note(keys):
    challenge = protocol.Challenge(**VECTOR["challenge"])
    realm = protocol.parse_url(challenge.realm)
    flow = tokens.exchange(challenge, realm, identity(keys))
    first = next(flow)
    first_ts = int(first.request.token_url.rsplit("ts=", 1)[1].split("&")[0])
    flow.send(token_answer(401, email.utils.formatdate(first_ts + 90, usegmt=True), b"{}"))
    with pytest.raises(NetworkError) as failed:
        flow.throw(NetworkError("connection to ollama.com:443 failed: reset"))
    assert "reset" in str(failed.value) and "retried once" in str(failed.value)


def test_the_signature_never_appears_in_a_refusal(keys):
    flow = start(keys)
    call = next(flow)
    echo = call.authorization.encode()
    with pytest.raises(ServerRefusedError) as refused:
        flow.send(token_answer(403, None, b'{"error": "bad ' + echo + b'"}'))
    assert call.authorization.split(":")[1] not in str(refused.value)


@pytest.mark.parametrize("driver", ["client", "adapters"])
def test_both_drivers_run_the_one_flow(driver, keys, monkeypatch):
    """Replace the flow: each driver must then do what the replacement says, so
    neither can hold a copy of the exchange of its own."""
    seen = []

    def replacement(challenge, realm, ident, nonce=None):
        seen.append(realm.host)
        return tokens.Exchanged("from-the-one-flow", 0.0, 0.0, "")
        yield  # a generator that returns at once

    monkeypatch.setattr(tokens, "exchange", replacement)
    challenge = protocol.Challenge(**VECTOR["challenge"])
    realm = protocol.parse_url(challenge.realm)
    if driver == "client":
        token = client._exchange(challenge, realm, identity(keys), None, 5.0, lambda line: None)
        assert token.token == "from-the-one-flow"
    else:
        core = _core.KeylessCore(identity=str(keys / VECTOR["key"]), cache=False)
        result = None
        generator = _core._obtain(core, "k", challenge, realm)
        try:
            next(generator)
        except StopIteration as done:
            result = done.value
        assert result == ("from-the-one-flow", False)
    assert seen == [realm.host]

"""The token flow's smaller rules, each at its edge (tokens.py; issue 21, found by mutation):
when a 401's Date is a clock to correct to, in which direction, how each status
class is reported, and what a token answer must hold. Expectations come from
RFC 9110 (Date is an IMF-fixdate; status classes, 15), Ollama's server/auth.go
(status >= 400 is an error, the body explains it) and the documented bounds in
tokens.py's constants (a 30 s tolerance, Dates from 2020 to 2200)."""

from __future__ import annotations

import email.utils

import pytest
from freezegun import freeze_time

from credential_helper import tokens
from credential_helper.errors import EXIT_NETWORK, EXIT_REFUSED, NetworkError, ServerRefusedError
from credential_helper.response import Response

NOW = 1_780_000_000  # 2026-05-28, a whole second


def dated(status: int, offset: float, body: bytes = b"{}") -> Response:
    return Response(status, "Unauthorized", {"date": [email.utils.formatdate(NOW + offset, usegmt=True)]}, body)


# --- a 401's Date: correct the clock or not ------------------------------------------------


@pytest.mark.parametrize(
    "status, offset, expected",
    [
        (401, 30, None),  # within the tolerance: the clock is not the problem
        (401, -30, None),
        (401, 31, 31.0),  # the server is ahead: our ts must move forward
        (401, -31, -31.0),  # the server is behind: backward
        (401, 3600, 3600.0),
        (403, 3600, None),  # only a 401 is about the credential
        (200, 3600, None),
    ],
)
def test_skew_to_correct(status, offset, expected):
    with freeze_time(email.utils.formatdate(NOW, usegmt=True)):
        assert tokens.skew_to_correct(dated(status, offset)) == expected


@pytest.mark.parametrize(
    "date, expected",
    [
        (None, None),
        ("", None),
        ("yesterday", None),
        ("Tue, 31 Dec 2019 23:59:59 GMT", None),  # before 2020: a server with no clock
        ("Wed, 01 Jan 2020 00:00:00 GMT", 1577836800.0 - NOW),
        ("Sat, 01 Jan 2200 00:00:00 GMT", 7258118400.0 - NOW),
        ("Sat, 01 Jan 2200 00:00:01 GMT", None),
    ],
)
def test_clock_skew_takes_only_a_plausible_date(date, expected):
    assert tokens.clock_skew(date, NOW) == expected


def test_the_note_says_which_way_the_clock_is_off():
    assert tokens.skew_note(125.4, "ollama.com") == (
        " (retried once with a timestamp corrected for the local clock being 125s behind ollama.com: sync your clock)"
    )
    assert "125s ahead of ollama.com" in tokens.skew_note(-125.4, "ollama.com")


def test_a_note_is_appended_to_the_error_it_explains():
    plain = ServerRefusedError("r refused x: 401", 401)
    assert tokens.with_note(plain, "") is plain
    noted = tokens.with_note(plain, " (note)")
    assert type(noted) is ServerRefusedError and str(noted) == "r refused x: 401 (note)" and noted.status == 401


# --- status classes ------------------------------------------------------------------------


def answer(status: int, reason: str = "Reason", body: bytes = b"") -> Response:
    return Response(status, reason, {}, body)


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_success(status):
    tokens.raise_for_status(answer(status), "ollama.com", "the request")


@pytest.mark.parametrize("status", [400, 401, 404, 429, 499])
def test_4xx_is_a_refusal(status):
    with pytest.raises(ServerRefusedError) as refused:
        tokens.raise_for_status(answer(status, "Nope", b"why not"), "ollama.com", "the request", " (hint)")
    assert str(refused.value) == f"ollama.com refused the request: {status} Nope: why not (hint)"
    assert refused.value.status == status and refused.value.exit_code == EXIT_REFUSED


@pytest.mark.parametrize("status", [500, 502, 599])
def test_5xx_is_a_network_failure(status):
    with pytest.raises(NetworkError) as failed:
        tokens.raise_for_status(answer(status, "Bad", b""), "ollama.com", "the request", " (hint)")
    assert str(failed.value) == f"ollama.com failed with {status} Bad"  # no excerpt, no hint
    assert failed.value.status == status and failed.value.exit_code == EXIT_NETWORK


@pytest.mark.parametrize("status", [100, 199, 300, 302, 399])
def test_other_statuses_are_unexpected_answers(status):
    with pytest.raises(NetworkError) as failed:
        tokens.raise_for_status(answer(status, "Odd"), "ollama.com", "the request")
    assert str(failed.value) == f"ollama.com answered {status} Odd to the request"
    assert failed.value.status == status and failed.value.exit_code == EXIT_NETWORK


def test_the_body_excerpt_is_at_most_200_characters():
    with pytest.raises(ServerRefusedError) as refused:
        tokens.raise_for_status(answer(403, "Forbidden", b"a" * 200 + b"b" * 100), "h", "x")
    assert str(refused.value) == "h refused x: 403 Forbidden: " + "a" * 200 + "..."


# --- a token answer ----------------------------------------------------------------------


def token_response(body: bytes, status: int = 200) -> Response:
    return Response(status, "OK", {}, body)


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"token": 5}', 'ollama.com answered 200 without a string "token"'),
        (b"{}", 'ollama.com answered 200 without a string "token"'),
        (b'{"token": ""}', "ollama.com answered 200 with an empty or unusable token (not visible ASCII)"),
        (b'{"token": "a b"}', "ollama.com answered 200 with an empty or unusable token (not visible ASCII)"),
    ],
)
def test_a_token_answer_must_hold_a_usable_token(body, message):
    with pytest.raises(NetworkError) as failed:
        tokens.read_token_response(token_response(body), "ollama.com")
    assert str(failed.value) == message


def test_a_token_answer_gives_the_token_and_its_lifetime():
    with freeze_time(email.utils.formatdate(NOW, usegmt=True)):
        token, expires_at, lifetime = tokens.read_token_response(token_response(b'{"token": "t", "expires_in": 90}'), "h")
    assert (token, expires_at, lifetime) == ("t", NOW + 90.0, 90.0)


def test_a_401_from_the_token_endpoint_says_how_to_link_the_key():
    with pytest.raises(ServerRefusedError) as refused:
        tokens.read_token_response(token_response(b"", 401), "ollama.com", "sig")
    assert str(refused.value).endswith(
        " (is this key linked to your ollama.com account? see 'ollama-credential-helper key --connect-url')"
    )
    with pytest.raises(ServerRefusedError) as refused:
        tokens.read_token_response(token_response(b"", 403), "ollama.com", "sig")
    assert "linked" not in str(refused.value)


def test_the_authorization_sent_is_redacted_from_the_refusal():
    with pytest.raises(ServerRefusedError) as refused:
        tokens.read_token_response(token_response(b"echo: key:SIGNATURE", 400), "ollama.com", "key:SIGNATURE")
    assert "SIGNATURE" not in str(refused.value)


def test_a_refusal_without_a_hint_ends_with_the_excerpt():
    with pytest.raises(ServerRefusedError) as refused:
        tokens.raise_for_status(answer(404, "Not Found", b"no such model"), "ollama.com", "the request")
    assert str(refused.value) == "ollama.com refused the request: 404 Not Found: no such model"


def test_a_token_endpoints_refusal_names_the_token_request():
    with pytest.raises(ServerRefusedError) as refused:
        tokens.read_token_response(token_response(b"denied", 403), "ollama.com:443")
    assert str(refused.value) == "ollama.com:443 refused the token request: 403 OK: denied"


def test_a_token_answer_that_is_not_json_names_the_server():
    with pytest.raises(NetworkError, match="^ollama.com answered 200 but the body is not JSON$"):
        tokens.read_token_response(token_response(b"<html>"), "ollama.com")


# --- the flow with the reference vector ----------------------------------------------------


def _vector_flow(keys):
    from conftest import load_vectors
    from credential_helper import protocol
    from credential_helper.identity import load_identity

    vector = load_vectors("registry.json")[0]
    challenge = protocol.Challenge(**vector["challenge"])
    return vector, challenge, protocol.parse_url(challenge.realm), load_identity(str(keys / vector["key"]))


def test_prepare_uses_the_clock_as_it_is_by_default(keys):
    import datetime

    vector, challenge, realm, identity = _vector_flow(keys)
    with freeze_time(datetime.datetime.fromtimestamp(vector["ts"], datetime.timezone.utc)):
        call = tokens.prepare(challenge, realm, identity, nonce=vector["nonce"])
    assert call.request.token_url == vector["token_url"] and call.authorization == vector["authorization"]


def test_the_exchange_returns_the_token_and_its_lifetime(keys):
    vector, challenge, realm, identity = _vector_flow(keys)
    flow = tokens.exchange(challenge, realm, identity)
    next(flow)
    with freeze_time(email.utils.formatdate(NOW, usegmt=True)):
        with pytest.raises(StopIteration) as done:
            flow.send(token_response(b'{"token": "t0k3n", "expires_in": 300}'))
    assert done.value.value == tokens.Exchanged("t0k3n", NOW + 300.0, 300.0, "")

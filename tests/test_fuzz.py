"""Fuzzing the parsers that take an attacker's input, through the real command.

``cli.main`` runs in-process (for speed) against a real loopback server whose
answer each example chooses, and against real cache files. Whatever the JSON,
the command must end in 0, 1, 2 or 4 -- never 5, the exit status of a bug --
and a success must print a usable token and a valid RFC 3339 time.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credential_helper import cli
from credential_helper.cache import entry_key, identity_digest
from faults import ScriptedServer, reply

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.lists(st.sampled_from(["\ud800", "\x1b", "\x00", "a"]), max_size=5).map("".join)
)
# Any code point, with the troublesome ones (surrogates, C0 and C1 controls,
# escapes, characters Go's escaping treats specially) made common.
hostile_chars = st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\x1b", "\r", "\n", "\x85", "\u2028", "%", "+", "~", " ", "#", "?"]
) | st.characters(blacklist_categories=())


def hostile_text(max_size: int):
    # st.text() silently drops lone surrogates; a list of characters keeps them.
    return st.lists(hostile_chars, max_size=max_size).map("".join)


json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
# Field values that matter, plus anything at all.
tokens = st.sampled_from(["tok-0123456789", "a.b.c", ""]) | st.text(max_size=40) | json_values
lifetimes = st.sampled_from([300, 0, -1, 1e300, 1e17, 9e18, "300"]) | json_values
times = st.sampled_from(["2026-11-29T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "not a time"]) | json_values


def jwt(claims: object) -> str:
    import base64

    part = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()  # noqa: E731
    return f"{part(b'{}')}.{part(json.dumps(claims).encode())}.c2ln"


token_bodies = st.one_of(
    st.fixed_dictionaries({"token": tokens}, optional={"expires_in": lifetimes, "issued_at": times}),
    st.fixed_dictionaries({"token": st.dictionaries(st.sampled_from(["exp", "iat"]), json_values | lifetimes).map(jwt)}),
    json_values,
)


def run_main(monkeypatch, capsys, args: list[str], stdin: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8", "surrogatepass"))))
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def check_outcome(code: int, out: str, err: str) -> None:
    assert code in (0, 1, 2, 4), (code, err)
    if code == 0:
        printed = json.loads(out)
        assert RFC3339.fullmatch(printed["expires_at"]), printed
        assert re.fullmatch(r"[\x21-\x7e]+", printed["token"])
    else:
        assert out == "" and len(err.splitlines()) == 1, err


@pytest.fixture
def isolated(env, monkeypatch):
    for name in ("HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    return env


@pytest.mark.process
@FUZZ
@given(body=token_bodies)
def test_any_token_response_ends_in_0_1_or_4(isolated, monkeypatch, capsys, body):
    payload = json.dumps(body).encode()
    with ScriptedServer(reply("200 OK", payload, {"Content-Type": "application/json"})) as server:
        stdin = json.dumps({"realm": f"http://{server.host}/token", "service": "s", "scope": "x"})
        first = run_main(monkeypatch, capsys, ["get"], stdin)
        check_outcome(*first)
        assert first[0] in (0, 4)
        # Whatever the first call stored, the second reads it back safely.
        check_outcome(*run_main(monkeypatch, capsys, ["get"], stdin))


# Mostly well-formed entries with one or more absurd fields, then anything at all.
good_token = st.just("tok-0123456789")
absurd_numbers = st.sampled_from([1e300, -1e300, 9e18, float("inf"), float("nan"), 0, -1, 2**63, 1.5e9, True])
entries = st.one_of(
    st.fixed_dictionaries(
        {
            "token": good_token | tokens,
            "expires_at": absurd_numbers | st.floats() | st.integers() | json_values,
            "lifetime": st.just(300) | absurd_numbers | json_values,
        }
    ),
    st.fixed_dictionaries({}, optional={"token": tokens, "expires_at": lifetimes | times, "lifetime": lifetimes}),
    json_values,
)


@FUZZ
@given(entry=entries)
def test_any_cache_entry_is_a_hit_or_a_miss(isolated, standin, monkeypatch, capsys, entry):
    realm = f"{standin.base_url}/token"
    with open(os.path.join(isolated["HOME"], ".ollama", "id_ed25519"), "rb") as handle:
        key = entry_key(identity_digest(handle.read()), realm, "s", ["x"])
    directory = os.path.join(isolated["XDG_CACHE_HOME"], "ollama-credential-helper")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, key + ".json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        json.dump(entry, handle)
    code, out, err = run_main(monkeypatch, capsys, ["get"], json.dumps({"realm": realm, "service": "s", "scope": "x"}))
    assert code == 0, err  # a hit, or a miss that the stand-in answers
    check_outcome(code, out, err)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=hostile_text(60),
    field=st.sampled_from(["realm", "service", "scope", "nonce", "host", "header", "url"]),
)
def test_any_challenge_input_is_refused_cleanly(isolated, monkeypatch, capsys, text, field):
    """Arbitrary Unicode (controls and lone surrogates included) in every field.

    Nothing listens on port 9, so anything that gets past the checks ends in 4.
    """
    base = {"realm": "http://127.0.0.1:9/token", "service": "s", "scope": "x"}
    if field == "header":
        stdin = f'Bearer realm="http://127.0.0.1:9/{text}",service="s"'
    elif field == "url":
        stdin = "http://127.0.0.1:9/" + text
    else:
        stdin = json.dumps({**base, field: base.get(field, "") + text})
    code, out, err = run_main(monkeypatch, capsys, ["get", "--timeout", "2", "--no-cache"], stdin)
    assert code in (2, 4), err
    assert out == "" and len(err.splitlines()) == 1, err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=hostile_text(10), url_tail=hostile_text(60))
def test_any_sign_input_is_refused_cleanly(isolated, monkeypatch, capsys, method, url_tail):
    stdin = json.dumps({"method": method or "GET", "url": "https://ollama.com/api/" + url_tail})
    code, out, err = run_main(monkeypatch, capsys, ["sign"], stdin)
    assert code in (0, 2), err
    if code == 0:
        assert json.loads(out)["url"].startswith("https://ollama.com/api/")

"""The pure protocol layer: encoder, URL parser, challenge parser, realm rules.

Expectations come from the rules stated in golden/README.md and Ollama's own
sources (Go's net/url as api/client.go and server/auth.go use it),
from Python's own urllib.parse (an independent implementation of the same
escaping), and from hand-written tables -- never from the module's output.
"""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from credential_helper import policy, protocol
from credential_helper.errors import InputError, RealmRefusedError

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


@pytest.mark.parametrize("byte", range(256))
def test_query_escape_follows_the_stated_rule_for_every_byte(byte):
    """golden/README.md: space as '+', all but A-Z a-z 0-9 - _ . ~ as upper-case %XX."""
    # A lone high byte is reached through surrogateescape: Go escapes raw bytes.
    text = bytes([byte]).decode("utf-8", "surrogateescape")
    if chr(byte) in UNRESERVED:
        expected = chr(byte)
    elif byte == 0x20:
        expected = "+"
    else:
        expected = "%" + format(byte, "02X")
    assert protocol.query_escape(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_query_escape_agrees_with_urllib_quote_plus(text):
    """Python's quote_plus(safe='') implements the same rule independently."""
    assert protocol.query_escape(text) == urllib.parse.quote_plus(text, safe="")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(min_size=1), st.lists(st.text(), min_size=1, max_size=3), max_size=5))
def test_encode_then_parse_round_trips_and_sorts_keys(values):
    encoded = protocol.encode_query(values)
    assert protocol.parse_query(encoded) == {k: v for k, v in values.items()}
    keys = [urllib.parse.unquote_plus(pair.split("=")[0]) for pair in encoded.split("&") if pair]
    assert keys == sorted(keys, key=lambda k: k.encode())


def test_parse_query_drops_pairs_go_rejects():
    # Go 1.17+: a pair with ';' is invalid; a bad %-escape drops the pair.
    assert protocol.parse_query("a=1;b=2&c=3&d=%zz&e=%41&&f") == {"c": ["3"], "e": ["A"], "f": [""]}


@pytest.mark.parametrize(
    "url, target",
    [
        ("https://ollama.com/api/tags", "/api/tags"),
        ("https://ollama.com", "/"),  # Go's RequestURI: an empty path is "/"
        ("https://ollama.com/a%2Fb", "/a%2Fb"),  # valid escapes kept as written
        ("https://ollama.com/a b", "/a%20b"),  # invalid path re-escaped
        ("https://ollama.com/café", "/caf%C3%A9"),
        ("https://ollama.com/x(y)!$&'*+,;=:@[]", "/x(y)!$&'*+,;=:@[]"),  # sub-delims allowed
    ],
)
def test_request_target_follows_go_escaped_path(url, target):
    assert protocol.parse_url(url).request_target == target


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://ollama.com/x", "http or https"),
        ("https://user:pw@ollama.com/token", "user info"),
        ("https://ollama.com/token#frag", "fragment"),
        ("https://ollama.com/to\x00ken", "control character"),
        ("https://ollama.com:99999/token", "invalid port"),
        ("https://ollama.com:/token", "invalid port"),
        ("https://oll ama.com/token", "invalid host"),
        ("https:///token", "no host"),
        ("https://ollama.com/a%zzb", "%-escape"),
        ("ollama.com/token", "not an absolute URL"),
        ("https://[::1/token", "unclosed"),
    ],
)
def test_parse_url_refuses(url, message):
    with pytest.raises(InputError, match=message):
        protocol.parse_url(url)


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            'Bearer realm="https://ollama.com:443/token",service="ollama.com",scope="repository:library/x:pull"',
            ("https://ollama.com:443/token", "ollama.com", "repository:library/x:pull"),
        ),
        (
            'WWW-Authenticate: Bearer realm="https://r/t", service="s" ,scope="a b"',
            ("https://r/t", "s", "a b"),
        ),
        ('bearer REALM="https://r/t",Scope=x', ("https://r/t", "", "x")),
        ('Bearer realm="https://r/t",error="invalid_token",scope="a\\"b"', ("https://r/t", "", 'a"b')),
    ],
)
def test_parse_www_authenticate(value, expected):
    challenge = protocol.parse_www_authenticate(value)
    assert (challenge.realm, challenge.service, challenge.scope) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ('Bearer realm="https://r/t,service="s"', "unbalanced|malformed"),
        ('Basic realm="x"', "Bearer"),
        ('Bearer service="s"', "no realm"),
        ('Bearer realm="a",realm="b"', "repeats"),
        ('Bearer realm="https://r/t"\x07', "control character"),
        ("Bearer realm", "malformed"),
        ('Bearer realm=ab"c', "unbalanced"),
    ],
)
def test_parse_www_authenticate_refuses(value, message):
    with pytest.raises(InputError, match=message):
        protocol.parse_www_authenticate(value)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_challenge_parser_never_raises_anything_but_input_error(text):
    try:
        protocol.parse_challenge_input(text)
    except InputError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40),
)
def test_quoted_parameters_round_trip(realm_tail, scope):
    realm = "https://ollama.com/" + realm_tail
    quote = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    value = f"Bearer realm={quote(realm)},scope={quote(scope)}"
    challenge = protocol.parse_www_authenticate(value)
    assert challenge.realm == realm and challenge.scope == scope


@pytest.mark.parametrize(
    "realm, host",
    [
        ("https://ollama.com/token", None),
        ("https://ollama.com:443/token", None),
        ("https://registry.ollama.ai/v2/token", None),
        ("http://127.0.0.1:8080/token", None),
        ("http://127.9.9.9/token", None),
        ("http://localhost:5000/token", None),
        ("http://[::1]:5000/token", None),
        ("https://auth.example.com/token", "auth.example.com"),
        ("https://auth.example.com:8443/token", "auth.example.com:8443"),
    ],
)
def test_realm_allowed(realm, host):
    policy.check_realm(protocol.parse_url(realm), host)


@pytest.mark.parametrize(
    "realm, host, message",
    [
        ("http://ollama.com/token", None, "https"),
        ("http://10.0.0.1/token", "10.0.0.1", "https"),
        ("http://128.0.0.1/token", None, "https"),
        ("https://auth.example.com/token", None, "--host"),
        ("https://ollama.com.evil.example/token", None, "--host"),
        ("https://127.0.0.1.evil.example/token", None, "--host"),
        ("https://evil.example/token", "ollama.com", "must be equal"),
        ("https://ollama.com:443/token", "ollama.com", "must be equal"),  # host[:port] exactly
        ("https://ollama.com/token", "ollama.com:443", "must be equal"),
    ],
)
def test_realm_refused(realm, host, message):
    with pytest.raises(RealmRefusedError, match=message):
        policy.check_realm(protocol.parse_url(realm), host)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no challenge"),
        ("   \n", "no challenge"),
        ("[1, 2]", "not an object|Bearer"),
        ('{"realm": 5}', "must be a string"),
        ('{"realm": "https://ollama.com/t", "scope": 5}', "must be a string"),
        ('{"realm": "https://ollama.com/t", "scope": ["a"]}', "must be a string"),
        ('{"service": "x"}', 'no "realm"'),
        ('{"realm": ""}', "empty"),
        ('{"realm": "https://ollama.com/t", "nonce": ""}', "empty"),
        ('{"realm": "https://ollama.com/t", "host": "a b"}', "invalid host"),
        ('{"realm": "https://ollama.com/t"', "not valid JSON"),
        # Found by mypy (ValueError has no .msg): int()'s digit limit (CPython 3.11, backported
        # to 3.10.7) raises a plain ValueError; before, an AttributeError and exit 5.
        ('{"realm": ' + "1" * 5000 + "}", "number too long"),
        ("[" * 100000 + "]" * 100000, "Bearer"),
        ("{" + '"a":' * 1 + "[" * 100000 + "]" * 100000 + "}", "nested too deeply|not valid JSON"),
        ("https://ollama.com/v2/x with space", "white space"),
        ('Bearer realm="https://r/t"\nBearer realm="https://r/t"', "single line"),
    ],
)
def test_challenge_input_refused(text, message):
    with pytest.raises(InputError, match=message):
        protocol.parse_challenge_input(text)


def test_challenge_input_forms():
    as_json = protocol.parse_challenge_input(
        '{"realm": "https://ollama.com/t", "scope": "s", "nonce": "n", "host": "ollama.com"}'
    )
    assert (as_json.challenge.realm, as_json.challenge.scope, as_json.nonce, as_json.host) == (
        "https://ollama.com/t",
        "s",
        "n",
        "ollama.com",
    )
    as_header = protocol.parse_challenge_input('Bearer realm="https://ollama.com/t",service="svc"')
    assert as_header.challenge.service == "svc" and as_header.host is None
    as_url = protocol.parse_challenge_input("https://registry.ollama.ai/v2/library/x/manifests/latest\n")
    assert as_url.url.host == "registry.ollama.ai" and as_url.challenge is None


def test_scopes_split_on_single_spaces_as_go_does():
    # strings.Split(scope, " "): an empty scope is one empty scope.
    assert protocol.Challenge("r", "s", "").scopes == [""]
    assert protocol.Challenge("r", "s", "a b").scopes == ["a", "b"]


def test_signed_request_replaces_every_existing_ts():
    plan = protocol.build_signed_request("post", protocol.parse_url("https://ollama.com/api/chat?ts=1&ts=2"), 99)
    assert plan.signed_data == "POST,/api/chat?ts=99"


@pytest.mark.parametrize("method", ["", "GE T", "GET\r\n", "PÖST"])
def test_signed_request_refuses_odd_methods(method):
    with pytest.raises(InputError):
        protocol.build_signed_request(method, protocol.parse_url("https://ollama.com/api/tags"), 1)

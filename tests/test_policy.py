"""The destination rules of ``policy``: loopback, cleartext, realms, API-key hosts, origins.

One function, ``policy.is_loopback``, decides both where http is allowed and
which hosts never use a proxy (``proxy_env.use_proxy``); the tables below pin
it from both sides, so the two decisions cannot drift apart again. The address
forms follow Go's net.ParseIP (no leading zeros, dotted decimal only) and
RFC 6761 §6.3 for ``localhost``.
"""

from __future__ import annotations

import ipaddress

import pytest

from credential_helper import policy
from credential_helper.errors import InputError, RealmRefusedError
from credential_helper.integrations._core import KeylessCore
from credential_helper.protocol import parse_url
from credential_helper.proxy_env import use_proxy

LOOPBACK = [
    "localhost",
    "LOCALHOST",
    "LocalHost",
    "127.0.0.1",
    "127.0.0.0",
    "127.1.2.3",
    "127.255.255.255",
    "127.0.0.10",
    "127.100.200.250",
    "::1",
    "0:0:0:0:0:0:0:1",
    "0000::0001",
]
NOT_LOOPBACK = [
    "evillocalhost",
    "localhost.evil.test",
    "local.localhost",
    "localhost.",
    "localhost.net",
    "",
    "127.0.0.300",
    "127.0.0.256",
    "127.256.0.1",
    "128.0.0.1",
    "126.255.255.255",
    "10.0.0.1",
    "0.0.0.0",
    # Not canonical dotted decimal: the C resolver reads some as octal or hex, or asks DNS.
    "127.000.000.001",
    "127.0.0.01",
    "0127.0.0.1",
    "127.0.0.099",
    "127.1",
    "127.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "2130706433",
    "127.0.0.1.",
    "127.0.0.1.1",
    "127..0.1",
    "１２７.0.0.1",
    "127.0.0.-1",
    "::2",
    "::",
    "::ffff:127.0.0.1",
    "::1%lo",
    "[::1]x",
    "ollama.com",
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_is_exactly_localhost_127_8_and_ipv6_one(host):
    assert policy.is_loopback(host) is True
    assert use_proxy(host, 80, "") is False  # the same rule decides "never through a proxy"
    policy.check_cleartext(parse_url(f"http://{'[' + host + ']' if ':' in host else host}:1/"), "x")


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_anything_else_is_not_loopback(host):
    assert policy.is_loopback(host) is False


@pytest.mark.parametrize("host", [h for h in NOT_LOOPBACK if h and "[" not in h and "%" not in h and "１" not in h])
def test_a_non_loopback_host_gets_no_cleartext_and_goes_through_the_proxy(host):
    url = parse_url(f"http://{'[' + host + ']' if ':' in host else host}:8080/")
    with pytest.raises(RealmRefusedError, match="must use https"):
        policy.check_cleartext(url, "a signature")
    assert use_proxy(url.hostname, 8080, "") is True


def test_every_canonical_127_address_agrees_with_ipaddress():
    # Exhaustive over the last octet and a sample of the others, against an independent parser.
    for a in (0, 1, 9, 10, 99, 100, 199, 200, 255):
        for d in range(256):
            text = f"127.{a}.{a}.{d}"
            assert policy.is_loopback(text) is ipaddress.ip_address(text).is_loopback
            assert policy.is_loopback(f"128.{a}.{a}.{d}") is False


@pytest.mark.parametrize("realm_host", ["ollama.com", "registry.ollama.ai", "127.0.0.1:5000", "example.test"])
def test_the_realm_query_rule_applies_to_every_realm_known_or_not(realm_host):
    scheme = "http" if realm_host.startswith("127.") else "https"
    bad = parse_url(f"{scheme}://{realm_host}/token?zzz=1")
    good = parse_url(f"{scheme}://{realm_host}/token?a=1")
    with pytest.raises(RealmRefusedError, match="follow ts"):
        policy.check_realm(bad, realm_host)
    with pytest.raises(RealmRefusedError, match="follow ts"):
        policy.check_realm(bad, None)
    policy.check_realm(good, realm_host)
    # tt sorts after ts; "t" and "tr" before it.
    with pytest.raises(RealmRefusedError):
        policy.check_realm_query(parse_url(f"{scheme}://{realm_host}/token?tt=1"))
    policy.check_realm_query(parse_url(f"{scheme}://{realm_host}/token?t=1&tr=2"))


@pytest.mark.parametrize(
    "value", ["http://example.test", "http://127.000.000.001:8080", "http://localhost.:8080", "http://127.1:80"]
)
def test_cloud_base_url_over_http_to_a_non_loopback_host_is_refused(value):
    with pytest.raises(RealmRefusedError, match="must use https"):
        policy.cloud_base_url(value)
    with pytest.raises(RealmRefusedError, match="must use https"):
        KeylessCore(api_base=value, cache=False)
    with pytest.raises(RealmRefusedError, match="must use https"):
        KeylessCore(api_base="https://ollama.com", api_hosts=[value], cache=False)


@pytest.mark.parametrize(
    "value", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:2", "https://example.test", "", None]
)
def test_cloud_base_url_allows_https_and_loopback_http(value):
    base = policy.cloud_base_url(value)
    assert str(base) in (value or "https://ollama.com", (value or "") + "/")


def test_cloud_base_url_is_a_scheme_and_host_only():
    for value in ("https://ollama.com/api", "https://ollama.com/?a=1"):
        with pytest.raises(InputError):
            policy.cloud_base_url(value)


def test_origins_compare_host_names_case_insensitively():
    assert policy.origin("HTTPS", "OLLAMA.COM", None) == ("https", "ollama.com", 443)
    assert policy.origin("http", "LocalHost.", 80) == ("http", "localhost", 80)
    assert policy.origin("http", "[::1]", None) == ("http", "::1", 80)
    core = KeylessCore(api_base="https://Ollama.COM", cache=False)
    assert core.is_api("https", "ollama.com", None) and core.is_api("HTTPS", "OLLAMA.com", 443)
    assert not core.is_api("http", "ollama.com", 443) and not core.is_api("https", "ollama.com", 8443)
    assert not core.is_api("https", "evilollama.com", None)


@pytest.mark.parametrize(
    "host, allowed",
    [
        ("ollama.com", True),
        ("OLLAMA.COM", True),
        ("registry.ollama.ai", True),
        ("api.ollama.com", True),
        ("ollama.com.", True),
        ("localhost", True),
        ("127.0.0.1", True),
        ("evilollama.com", False),
        ("ollama.com.evil.test", False),
        ("evillocalhost", False),
        ("127.000.000.001", False),
    ],
)
def test_the_api_key_goes_only_to_ollama_hosts_and_loopback(host, allowed):
    assert policy.may_receive_api_key(parse_url(f"https://{host}/")) is allowed

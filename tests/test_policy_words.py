"""Where a credential may go, refusal by refusal, with the words a user acts on
(policy.py; issue 21, found by mutation). Expectations: the README's realm and
API-key rules, RFC 4007 11 (an IPv6 zone names a link, not the loopback address),
Ollama's resolveCloudProxyBaseURL (scheme and host only)."""

from __future__ import annotations

import pytest

from credential_helper import policy, protocol
from credential_helper.errors import IdentityError, InputError, RealmRefusedError


def url(text: str) -> protocol.URL:
    return protocol.parse_url(text)


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("::1", True),
        ("0:0:0:0:0:0:0:1", True),
        ("::1%lo", False),  # a zone: a link-local scope, never this rule's ::1
        ("fe80::1%eth0", False),
        ("127.0.0.1", True),
        ("127..1", False),
        ("127.0.0.", False),
    ],
)
def test_is_loopback(host, loopback):
    assert policy.is_loopback(host) is loopback


def test_a_realm_over_http_is_refused_naming_the_signature():
    with pytest.raises(RealmRefusedError) as refused:
        policy.check_realm(url("http://registry.example/token"), "registry.example")
    assert str(refused.value) == (
        "refusing to send a signature to http://registry.example: it must use https (http is allowed only to loopback)"
    )


def test_an_unknown_realm_without_host_says_to_pass_host():
    with pytest.raises(RealmRefusedError) as refused:
        policy.check_realm(url("https://registry.example/token"), None)
    assert str(refused.value).endswith("pass --host HOST (the host[:port] of the request that got the 401)")


def test_a_realm_query_key_after_ts_is_named():
    with pytest.raises(RealmRefusedError) as refused:
        policy.check_realm_query(url("https://ollama.com/token?zz%20z=1"))
    assert str(refused.value) == "refusing the realm ollama.com/token: its query key 'zz+z' would follow ts in the signed string"


def test_an_api_key_over_http_is_refused_by_name():
    with pytest.raises(RealmRefusedError, match="^refusing to send OLLAMA_API_KEY to http://ollama.com: "):
        policy.check_api_key_destination(url("http://ollama.com/api/chat"))


@pytest.mark.parametrize(
    "value, message",
    [
        ("http://ollama.com", "^refusing to send signed requests \\(OLLAMA_CLOUD_BASE_URL\\) to http://ollama.com: "),
        ("https://ollama.com/v1", "^OLLAMA_CLOUD_BASE_URL must be a scheme and host only, without a path or query$"),
        ("https://a b", "^the OLLAMA_CLOUD_BASE_URL has an invalid host 'a b'$"),
    ],
)
def test_the_cloud_base_url_refusals(value, message):
    with pytest.raises((RealmRefusedError, InputError), match=message):
        policy.cloud_base_url(value)


def test_the_local_token_is_never_an_api_key():
    with pytest.raises(IdentityError) as refused:
        policy.check_not_local_token("och-" + "x" * 40)
    assert str(refused.value).endswith("not an ollama.com key: it is for clients of the proxy only; unset OLLAMA_API_KEY here")
    policy.check_not_local_token("sk-real")


def test_the_shared_server_warning_says_what_is_at_stake():
    warning = policy.shared_server_warning(url("https://gate.example/"), True)
    assert "ollama.com as you (same method and path, any body) while its ts is fresh; use a second key for " in warning

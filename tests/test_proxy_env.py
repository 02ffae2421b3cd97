"""HTTPS_PROXY, HTTP_PROXY and NO_PROXY as Go's http.ProxyFromEnvironment reads them.

The tables are the expectations of Go's own tests (golang.org/x/net/http/httpproxy,
proxy_test.go: UseProxyTests and proxyForURLTests); the end-to-end tests run the
installed executable through a loopback CONNECT proxy that records what passes,
to an https origin whose name only the proxy can resolve, with TLS verified end
to end against a private CA.
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error
from credential_helper.errors import NetworkError
from credential_helper.protocol import parse_url
from credential_helper.proxy_env import proxy_for, use_proxy
from credential_helper.standin import StandIn
from faults import CertificateAuthority, ConnectProxy

# httpproxy's TestUseProxy: this NO_PROXY, each host at port 80.
GO_NO_PROXY = (
    "foobar.com, .barbaz.net, *.wildcard.io, 192.168.1.1, 192.168.1.2:81, 192.168.1.3:80, 10.0.0.0/30, "
    "2001:db8::52:0:1, [2001:db8::52:0:2]:443, [2001:db8::52:0:3]:80, 2002:db8:a::45/64"
)
GO_USE_PROXY = [
    ("localhost", False),
    ("127.0.0.1", False),
    ("127.0.0.2", False),
    ("[::1]", False),
    ("[::2]", True),
    ("192.168.1.1", False),
    ("192.168.1.2", True),
    ("192.168.1.3", False),
    ("192.168.1.4", True),
    ("10.0.0.2", False),
    ("[2001:db8::52:0:1]", False),
    ("[2001:db8::52:0:2]", True),
    ("[2001:db8::52:0:3]", False),
    ("[2002:db8:a::123]", False),
    ("[fe80::424b:c8be:1643:a1b6]", True),
    ("barbaz.net", True),
    ("www.barbaz.net", False),
    ("foobar.com", False),
    ("www.foobar.com", False),
    ("foofoobar.com", True),
    ("baz.com", True),
    ("localhost.net", True),
    ("local.localhost", True),
    ("barbarbaz.net", True),
    ("wildcard.io", True),
    ("nested.wildcard.io", False),
    ("awildcard.io", True),
]


@pytest.mark.parametrize("host, expected", GO_USE_PROXY)
def test_use_proxy_matches_go(host, expected):
    assert use_proxy(host, 80, GO_NO_PROXY) is expected


@pytest.mark.parametrize("host, _", GO_USE_PROXY)
def test_no_proxy_star_matches_everything(host, _):
    assert use_proxy(host, 80, "*") is False


def test_malformed_no_proxy_entry_is_ignored():
    assert use_proxy("example.com", 80, ":1") is True


# httpproxy's TestProxyForURL, for the proxies this helper supports (http://).
GO_PROXY_FOR_URL = [
    ({"HTTP_PROXY": "127.0.0.1:8080"}, "http://example.com", "http://127.0.0.1:8080"),
    ({"HTTP_PROXY": "cache.corp.example.com:1234"}, "http://example.com", "http://cache.corp.example.com:1234"),
    ({"HTTP_PROXY": "cache.corp.example.com"}, "http://example.com", "http://cache.corp.example.com:80"),
    ({"HTTP_PROXY": "localhost"}, "http://example.com", "http://localhost:80"),
    ({"HTTP_PROXY": "http://127.0.0.1:8080"}, "http://example.com", "http://127.0.0.1:8080"),
    ({"HTTP_PROXY": "http.proxy.tld", "HTTPS_PROXY": "secure.proxy.tld"}, "http://insecure.tld/", "http://http.proxy.tld:80"),
    ({"HTTP_PROXY": "http.proxy.tld", "HTTPS_PROXY": "secure.proxy.tld"}, "https://secure.tld/", "http://secure.proxy.tld:80"),
    ({"HTTP_PROXY": "http.proxy.tld"}, "https://secure.tld/", None),
    ({}, "http://example.com", None),
    ({"NO_PROXY": "example.com", "HTTP_PROXY": "proxy"}, "http://example.com/", None),
    ({"NO_PROXY": ".example.com", "HTTP_PROXY": "proxy"}, "http://example.com/", "http://proxy:80"),
    ({"NO_PROXY": "ample.com", "HTTP_PROXY": "proxy"}, "http://example.com/", "http://proxy:80"),
    ({"NO_PROXY": "example.com", "HTTP_PROXY": "proxy"}, "http://foo.example.com/", None),
    ({"NO_PROXY": ".foo.com", "HTTP_PROXY": "proxy"}, "http://example.com/", "http://proxy:80"),
    # FromEnvironment: the upper-case name wins; the lower-case one is read too.
    ({"https_proxy": "lower:1", "HTTPS_PROXY": "upper:2"}, "https://x.test/", "http://upper:2"),
    ({"https_proxy": "lower:1"}, "https://x.test/", "http://lower:1"),
    ({"HTTPS_PROXY": "p:1", "no_proxy": "x.test"}, "https://x.test/", None),
    ({"HTTPS_PROXY": "p:1", "NO_PROXY": "x.test:443"}, "https://x.test/", None),
    ({"HTTPS_PROXY": "p:1", "NO_PROXY": "x.test:8443"}, "https://x.test/", "http://p:1"),
]


@pytest.mark.parametrize("environ, url, expected", GO_PROXY_FOR_URL)
def test_proxy_for_url_matches_go(environ, url, expected):
    proxy = proxy_for(parse_url(url), environ)
    assert (str(proxy) if proxy is not None else None) == expected


def test_http_proxy_is_refused_in_a_cgi_environment():
    with pytest.raises(NetworkError, match="CGI"):
        proxy_for(parse_url("http://example.com"), {"HTTP_PROXY": "http://10.1.2.3:8080", "REQUEST_METHOD": "GET"})
    # HTTPS_PROXY is still used (Go's historical behaviour).
    assert str(proxy_for(parse_url("https://x.test"), {"HTTPS_PROXY": "p:3", "REQUEST_METHOD": "GET"})) == "http://p:3"


@pytest.mark.parametrize("value", ["socks5://127.0.0.1", "https://secure.proxy.tld"])
def test_unsupported_proxy_schemes_are_named(value):
    with pytest.raises(NetworkError, match="only http:// proxies"):
        proxy_for(parse_url("https://x.test"), {"HTTPS_PROXY": value})


# --- through a real CONNECT proxy --------------------------------------------------------------

ORIGIN = "ollama.test"  # resolvable only by the proxy


@pytest.fixture
def tls_origin(tmp_path, public_line):
    ca = CertificateAuthority(tmp_path)
    server = StandIn(tls_context=ca.server_context([ORIGIN], []))
    server.authorize(public_line("ed25519-a"), name="proxied-user")
    server.start()
    yield server, str(ca.ca_file)
    server.stop()


def origin_url(server: StandIn, path: str) -> str:
    return f"https://{ORIGIN}:{server.server.server_address[1]}{path}"


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy"])
def test_get_goes_through_the_connect_proxy_with_tls_end_to_end(run, env, tls_origin, variable):
    server, ca_file = tls_origin
    with ConnectProxy({ORIGIN: "127.0.0.1"}) as proxy:
        environment = dict(env, SSL_CERT_FILE=ca_file, **{variable: proxy.url})
        result = run(["get", "--no-cache"], origin_url(server, "/v2/library/x/manifests/latest"), environment=environment)
    assert result.code == 0, result
    port = server.server.server_address[1]
    assert proxy.connects() == [f"{ORIGIN}:{port}", f"{ORIGIN}:{port}"]  # the probe, then the exchange
    assert server.exchanges == 1
    # The proxy saw only CONNECT lines: the signature travelled inside TLS.
    assert all(b"authorization" not in head.lower() for head in proxy.requests)


def test_whoami_goes_through_the_proxy(run, env, tls_origin):
    server, ca_file = tls_origin
    with ConnectProxy({ORIGIN: "127.0.0.1"}) as proxy:
        environment = dict(env, SSL_CERT_FILE=ca_file, HTTPS_PROXY=proxy.url, OLLAMA_CLOUD_BASE_URL=origin_url(server, ""))
        result = run(["whoami"], environment=environment)
    assert result.code == 0 and result.out.startswith("proxied-user"), result
    assert len(proxy.connects()) == 1


@pytest.mark.parametrize("no_proxy", [ORIGIN, ".test", "*.test", "*", f"{ORIGIN}:PORT"])
def test_no_proxy_bypasses_the_proxy(run, env, tls_origin, no_proxy):
    server, ca_file = tls_origin
    no_proxy = no_proxy.replace("PORT", str(server.server.server_address[1]))
    with ConnectProxy({ORIGIN: "127.0.0.1"}) as proxy:
        environment = dict(env, SSL_CERT_FILE=ca_file, HTTPS_PROXY=proxy.url, NO_PROXY=no_proxy)
        result = run(
            ["get", "--no-cache", "--timeout", "5"], origin_url(server, "/v2/library/x/manifests/latest"), environment=environment
        )
    # Direct, so this machine has to resolve a name only the proxy knows.
    assert_one_line_error(result, 4)
    assert f"cannot resolve {ORIGIN}" in result.err
    assert proxy.requests == []


def test_proxy_credentials_are_sent_and_never_shown(run, env, tls_origin):
    server, ca_file = tls_origin
    with ConnectProxy({ORIGIN: "127.0.0.1"}, credentials=("alice", "s3cr3t@pass")) as proxy:
        good = dict(env, SSL_CERT_FILE=ca_file, HTTPS_PROXY=f"http://alice:s3cr3t%40pass@{proxy.host}")
        ok = run(["get", "--no-cache"], origin_url(server, "/v2/library/x/manifests/latest"), environment=good)
        bad = dict(good, HTTPS_PROXY=f"http://alice:wrong-password@{proxy.host}")
        refused = run(["get", "--no-cache", "--verbose"], origin_url(server, "/v2/library/x/manifests/latest"), environment=bad)
    assert ok.code == 0, ok
    assert refused.code == 4 and "407" in refused.err and "proxy" in refused.err
    for text in (ok.err, refused.err):
        assert "s3cr3t" not in text and "wrong-password" not in text and "YWxpY2" not in text


def test_tls_is_verified_through_the_tunnel(run, env, tls_origin):
    server, _ = tls_origin
    with ConnectProxy({ORIGIN: "127.0.0.1"}) as proxy:
        result = run(
            ["get", "--no-cache"],
            origin_url(server, "/v2/library/x/manifests/latest"),
            environment=dict(env, HTTPS_PROXY=proxy.url),
        )
    assert_one_line_error(result, 4)
    assert "TLS" in result.err and "certificate" in result.err
    assert len(proxy.connects()) == 1 and server.exchanges == 0


def test_an_unreachable_proxy_is_named(run, env):
    result = run(
        ["get", "--no-cache"],
        "https://ollama.test/v2/x/manifests/latest",
        environment=dict(env, HTTPS_PROXY="http://127.0.0.1:9"),
    )
    assert_one_line_error(result, 4)
    assert "proxy http://127.0.0.1:9" in result.err and "HTTPS_PROXY" in result.err


def test_loopback_never_uses_the_proxy(run, env, standin):
    stdin = json.dumps({"realm": f"{standin.base_url}/token", "service": "s", "scope": "x"})
    result = run(["get"], stdin, environment=dict(env, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9"))
    assert result.code == 0, result


# --- one rule for loopback: what may go in clear text never goes through a proxy ------------

# Loopback spellings that the C resolver connects to but that are not canonical
# dotted decimal: not loopback for policy, so http is refused before anything
# is signed and before any connection (to a proxy or not) is made.
NON_CANONICAL_LOOPBACK = ["127.000.000.001", "127.0.0.01"]


@pytest.mark.parametrize("spelling", NON_CANONICAL_LOOPBACK)
def test_whoami_never_sends_a_signature_to_an_http_proxy(run, env, standin, spelling):
    port = standin.server.server_address[1]
    with ConnectProxy({spelling: "127.0.0.1"}) as proxy:
        environment = dict(env, HTTP_PROXY=proxy.url, OLLAMA_CLOUD_BASE_URL=f"http://{spelling}:{port}")
        result = run(["whoami"], environment=environment)
    assert_one_line_error(result, 2)
    assert "must use https" in result.err
    assert proxy.requests == [] and standin.signed_requests == []


@pytest.mark.parametrize("spelling", NON_CANONICAL_LOOPBACK)
def test_get_never_sends_a_signature_to_an_http_proxy(run, env, standin, spelling):
    port = standin.server.server_address[1]
    stdin = json.dumps({"realm": f"http://{spelling}:{port}/token", "service": "s", "scope": "repository:x:pull"})
    with ConnectProxy({spelling: "127.0.0.1"}) as proxy:
        result = run(["get", "--no-cache"], stdin, environment=dict(env, HTTP_PROXY=proxy.url))
        by_url = run(
            ["get", "--no-cache"],
            f"http://{spelling}:{port}/v2/library/x/manifests/latest",
            environment=dict(env, HTTP_PROXY=proxy.url),
        )
    assert_one_line_error(result, 2)
    assert "must use https" in result.err
    assert_one_line_error(by_url, 2)
    # The unsigned probe for the challenge may use the proxy; nothing signed ever does.
    assert all(b"authorization" not in head.lower() for head in proxy.requests), proxy.requests
    assert standin.exchanges == 0


def test_canonical_loopback_goes_direct_and_works(run, env, standin):
    """The control for the two tests above: the same calls, canonical spelling, succeed
    without touching the proxy."""
    port = standin.server.server_address[1]
    stdin = json.dumps({"realm": f"http://127.0.0.1:{port}/token", "service": "s", "scope": "repository:x:pull"})
    with ConnectProxy() as proxy:
        environment = dict(env, HTTP_PROXY=proxy.url, OLLAMA_CLOUD_BASE_URL=f"http://127.0.0.1:{port}")
        who = run(["whoami"], environment=environment)
        got = run(["get", "--no-cache"], stdin, environment=environment)
    assert who.code == 0 and who.out.startswith("jdoe"), who
    assert got.code == 0, got
    assert proxy.requests == []


# --- NO_PROXY details Go's tables do not pin ----------------------------------------------------


def test_the_request_host_is_lower_cased_before_no_proxy_matching():
    assert use_proxy("WWW.Example.COM", 443, "example.com") is False
    assert use_proxy("Example.Com", 443, ".EXAMPLE.com") is True  # only subdomains
    assert use_proxy("A.Example.Com", 443, ".EXAMPLE.com") is False
    assert proxy_for(parse_url("https://X.TEST/"), {"HTTPS_PROXY": "p:1", "NO_PROXY": "x.test"}) is None


def test_upper_case_no_proxy_wins_over_lower_case():
    environ = {"HTTPS_PROXY": "p:1", "NO_PROXY": "other.test", "no_proxy": "x.test"}
    assert str(proxy_for(parse_url("https://x.test/"), environ)) == "http://p:1"
    environ = {"HTTPS_PROXY": "p:1", "NO_PROXY": "x.test", "no_proxy": "other.test"}
    assert proxy_for(parse_url("https://x.test/"), environ) is None


@pytest.mark.parametrize("no_proxy", ["a.test,x.test", "a.test, x.test", "x.test,", ",x.test", " x.test ,a.test"])
def test_no_proxy_entries_are_separated_by_a_comma_with_or_without_space(no_proxy):
    assert use_proxy("x.test", 443, no_proxy) is False
    assert use_proxy("y.test", 443, no_proxy) is True


def test_no_proxy_entries_are_not_separated_by_spaces_alone():
    # Go splits on "," only; "a.test x.test" is one (unmatchable) entry.
    assert use_proxy("x.test", 443, "a.test x.test") is True

"""Go's net/url as Ollama signs with it, edge by edge (urls.py; issue 21, found by mutation).

Each expectation is Go's, read from net/url (url.go: getScheme, Parse, parseHost,
shouldEscape(c, encodePath), EscapedPath, RequestURI, String, Values.Encode),
or an RFC where this parser is stricter than Go on purpose (RFC 3986 3.2.2 and
RFC 4291 2.2 for an IPv6 literal, RFC 6335 for port 0): never the module's output.
"""

from __future__ import annotations

import pytest

from credential_helper import protocol
from credential_helper.errors import InputError


# --- EscapedPath / RequestURI ------------------------------------------------------------


@pytest.mark.parametrize(
    "url, target",
    [
        # An invalid escape elsewhere makes Go unescape the path and escape it again:
        # the raw byte %FF comes back as %FF (shouldEscape: every non-ASCII byte).
        ("https://ollama.com/a b%FF", "/a%20b%FF"),
        ("https://ollama.com/%E2%82%AC x", "/%E2%82%AC%20x"),
        # '!' is allowed as written (validEncoded) but escaped when Go re-escapes
        # (shouldEscape(c, encodePath) keeps only $&+,/:;=@ of the reserved set).
        ("https://ollama.com/x!a b", "/x%21a%20b"),
        ("https://ollama.com/x!a", "/x!a"),
        # The query starts at the first '?', and an empty path is "/".
        ("https://ollama.com?x=1", "/?x=1"),
        ("https://ollama.com/p?a=1?b", "/p?a=1?b"),
    ],
)
def test_request_target_as_go_escapes_it(url, target):
    assert protocol.parse_url(url).request_target == target


def test_the_host_ends_at_the_first_question_mark():
    url = protocol.parse_url("https://ollama.com?a=1?b=2")
    assert (url.host, url.path, url.raw_query) == ("ollama.com", "", "a=1?b=2")


def test_string_form_puts_a_slash_before_a_relative_path():
    # url.go String: "if path != "" && path[0] != '/' && u.Host != "" { buf.WriteByte('/') }".
    assert str(protocol.URL("https", "ollama.com", "api/tags", "")) == "https://ollama.com/api/tags"
    assert str(protocol.URL("https", "ollama.com", "", "")) == "https://ollama.com"


def test_urls_compare_by_their_string_form():
    a = protocol.parse_url("https://ollama.com/api/tags")
    assert a == protocol.parse_url("https://ollama.com/api/tags")
    assert a != protocol.parse_url("https://ollama.com/api/chat")
    assert a != "https://ollama.com/api/tags"  # a string is not a URL
    assert repr(a) == "URL('https://ollama.com/api/tags')"


# --- Values.Encode ---------------------------------------------------------------------


def test_encode_query_sorts_keys_by_their_bytes():
    # Go sorts keys as strings, which are bytes: a raw 0xFF byte (from "%FF") sorts
    # after U+10000 (F0 90 80 80), though its Python code point (U+DCFF) is lower.
    raw_ff = protocol.parse_query("%FF=1")
    assert list(raw_ff) == ["\udcff"]
    values = {"\udcff": ["1"], "\U00010000": ["2"]}
    assert protocol.encode_query(values) == "%F0%90%80%80=2&%FF=1"


# --- Parse: what is refused, and in which words ----------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("", "^the URL is empty$"),
        ("https://ollama.com/\x7f", "^the URL contains a control character$"),
        # getScheme: a scheme starts with a letter and holds only letters, digits, + - .
        ("1http://ollama.com/", "is not an absolute URL"),
        ("ht~tp://ollama.com/", "is not an absolute URL"),
        ("://ollama.com/", "is not an absolute URL"),
        ("https", "is not an absolute URL"),  # no ':' at all
        ("h://ollama.com/", "must be an http or https URL, not h:"),
        ("https:/ollama.com/x", "^the URL 'https:/ollama.com/x' has no host$"),
        ("https://oll ama.com/", "^the URL has an invalid host 'oll ama.com'$"),
    ],
)
def test_parse_url_refuses_with_its_reason(url, message):
    with pytest.raises(InputError, match=message):
        protocol.parse_url(url)


def test_the_caller_names_what_was_refused():
    with pytest.raises(InputError, match="^the realm has an invalid host 'a b'$"):
        protocol.parse_url("https://a b/", what="realm")


@pytest.mark.parametrize(
    "url, message",
    [
        ("https://[]/", "invalid IPv6 host"),
        ("https://[z::1]/", "invalid IPv6 host"),  # RFC 4291 2.2: hex digits, ':' and '.'
        ("https://[::1g]/", "invalid IPv6 host"),
        ("https://[X::1]/", "invalid IPv6 host"),
        ("https://[::1]x/", "^the URL has an invalid host$"),
        ("https://[::1]:99999/", "invalid port"),
        ("https://[::1]:/", "invalid port"),  # a ':' with no port (Go accepts it; we do not)
        ("https://ollama.com:0/", "invalid port"),  # RFC 6335: port 0 is reserved, never listened on
        ("https://ollama.com:65536/", "invalid port"),
    ],
)
def test_parse_url_refuses_hosts_and_ports(url, message):
    with pytest.raises(InputError, match=message):
        protocol.parse_url(url)


@pytest.mark.parametrize(
    "url, hostname, port",
    [
        ("https://[::1]/", "::1", 443),
        ("http://[::1]/", "::1", 80),
        ("https://[FE80::1]:8443/", "FE80::1", 8443),  # RFC 4291 2.2: hex digits in either case
        ("https://[::ffff:127.0.0.1]:1/", "::ffff:127.0.0.1", 1),
        ("https://ollama.com:65535/", "ollama.com", 65535),
    ],
)
def test_parse_url_accepts_hosts_and_ports(url, hostname, port):
    parsed = protocol.parse_url(url)
    assert (parsed.hostname, parsed.port) == (hostname, port)


# --- ParseQuery: a bad %-escape drops its pair, the others stay ---------------------------


@pytest.mark.parametrize("bad", ["%zA", "%Az", "%A", "%"])
def test_parse_query_drops_only_the_pair_with_a_bad_escape(bad):
    # url.ParseQuery keeps every good pair and reports the first error; URL.Query() drops it.
    assert protocol.parse_query(f"a={bad}&b=1&{bad}=c") == {"b": ["1"]}


def test_parse_query_keeps_a_raw_byte():
    # Go's strings hold bytes: "%FF" is the byte 0xFF, which encodes back to "%FF".
    values = protocol.parse_query("k=%FF")
    assert protocol.encode_query(values) == "k=%FF"


# --- control characters and lone surrogates (check_text) --------------------------------


@pytest.mark.parametrize("ch", ["\t", "\x00", "\x1f", "\x7f", "\x80", "\x9f"])
def test_control_characters_are_refused(ch):
    # Go's url.Parse: "net/url: invalid control character in URL" (C0 and DEL); C1 refused here too.
    with pytest.raises(InputError, match="^the URL contains a control character$"):
        protocol.parse_url(f"https://ollama.com/a{ch}b")


def test_a_tab_passes_only_where_the_caller_allows_it():
    with pytest.raises(InputError, match="^the field contains a control character$"):
        protocol.check_text("a\tb", "the field")
    assert protocol.check_text("a\tb", "the field", allow_tab=True) == "a\tb"
    with pytest.raises(InputError):
        protocol.check_text("a\nb", "the field", allow_tab=True)


@pytest.mark.parametrize("text", ["\xa0", "\u00ad", "\ue000", "\U000f0000", "\u2028"])
def test_other_unprintable_characters_pass(text):
    # Only C0, DEL, C1 and lone surrogates are refused: format, private-use and
    # separator characters have a UTF-8 form and split no header.
    assert protocol.check_text(text, "the field") == text


@pytest.mark.parametrize("surrogate", ["\ud800", "\udbff", "\udc00", "\udfff"])
def test_lone_surrogates_are_refused(surrogate):
    with pytest.raises(InputError, match="^the field contains a lone surrogate"):
        protocol.check_text(f"a{surrogate}", "the field")

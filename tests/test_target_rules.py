"""The request target's canonical form, message by message (serve/target.py; issue 21,
found by mutation). Expectations: RFC 9112 3.2 (request-target forms), RFC 3986 3.3
and 3.4 (path and query characters), and the module's stated rule that any spelling
two parsers could read differently is refused, each with the reason a caller reads."""

from __future__ import annotations

import pytest

from credential_helper.serve.target import canonical_path_problem, path_problem, split_target, ts_values


@pytest.mark.parametrize(
    "target, message",
    [
        ("", "the request target is empty"),
        (None, "the request target is empty"),
        ("/" + "a" * 8192, "the request target is longer than 8192 characters"),
        ("*", "the asterisk-form target (OPTIONS *) is not served"),
        ("http://ollama.com/api/tags", "the request target is not origin-form (a path starting with /)"),
        ("/api/tags x", "the request target holds spaces, control or non-ASCII characters"),
        ("/api/tags\x7f", "the request target holds spaces, control or non-ASCII characters"),
        ("/api/tags\x01", "the request target holds spaces, control or non-ASCII characters"),
        ("/api/t\u00e4gs", "the request target holds spaces, control or non-ASCII characters"),
        ("/api/tags#x", "the request target holds a fragment (#)"),
        ("/api/tags?a=<", "the query holds characters outside RFC 3986's query set (or ';')"),
        ("/api/tags?a=1;b=2", "the query holds characters outside RFC 3986's query set (or ';')"),
        ("/api/tags?a=%zz", "the query holds a malformed or needless percent-encoding"),
        ("/api/tags?a=%41", "the query holds a malformed or needless percent-encoding"),  # 'A' needs no escape
        ("/api/tags?a=%2F&ts=1", None),  # '/' escaped, as Go's QueryEscape writes it
        ("/api/tags", None),
        ("/api/tags?", None),
    ],
)
def test_canonical_path_problem(target, message):
    assert canonical_path_problem(target) == message


@pytest.mark.parametrize(
    "path, message",
    [
        ("api/tags", "the path does not start with /"),
        ("/api/t\u00e4gs", "the path holds non-ASCII characters"),
        ("/api/\x01tags", "the path holds control characters"),  # an endpoint list reads paths directly
        ("/api/\x7ftags", "the path holds control characters"),
        ("/api\\tags", "the path holds a backslash"),
        ("/api%2Ftags", "the path holds an encoded / or \\"),
        ("/api%5Ctags", "the path holds an encoded / or \\"),
        ("/api%5ctags", "the path holds an encoded / or \\"),
        ("/api/t%61gs", "the path is percent-encoded (it differs from its own decoding)"),
        ("/api//tags", "the path holds an empty segment (//)"),
        ("/api/./tags", "the path holds a dot segment (. or ..)"),
        ("/api/tags;v=1", "the path holds ';' (path parameters)"),
        ("/api/<tags>", "the path holds characters outside RFC 3986's path set"),
        ("/api/blobs/sha256:0f", None),
    ],
)
def test_path_problem(path, message):
    assert path_problem(path) == message


def test_split_target_tells_no_query_from_an_empty_one():
    assert split_target("/api/tags") == ("/api/tags", None)
    assert split_target("/api/tags?") == ("/api/tags", "")
    assert split_target("/api/tags?a=1?b") == ("/api/tags", "a=1?b")


def test_ts_values_as_go_splits_a_query():
    assert ts_values(None) == [] and ts_values("") == []
    assert ts_values("ts=1&&ts&x=ts&ts=2=3") == ["1", "", "2=3"]

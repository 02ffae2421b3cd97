"""The engine's failure rules (serve/failures.py), socket-free: which answer and
which log class each way an upstream can fail gets, and the tiny-pieces bound."""

from __future__ import annotations


import h11
import pytest

from credential_helper.serve.failures import (
    TINY_BYTES,
    TINY_PIECES,
    Stale,
    UpstreamMalformed,
    protocol_message,
    tiny,
    upstream_failure,
)

KNOWN = {"who": "bob", "key": "SHA256:x", "reason": "upstream"}


@pytest.mark.parametrize(
    "exc, status, failure, words",
    [
        (TimeoutError("timed out"), 504, "timeout", "did not answer in time"),
        (TimeoutError(), 504, "timeout", "did not answer in time"),
        (UpstreamMalformed("bad status line"), 502, "malformed", "sent a malformed answer: bad status line"),
        (ConnectionRefusedError(111, "refused"), 502, "connect", "connection refused"),
        (Stale(), 502, "connect", "failed before an answer"),
    ],
)
def test_each_upstream_failure_gets_its_answer_and_class(exc, status, failure, words):
    answer, kind = upstream_failure(exc, "127.0.0.1:11434", (), dict(KNOWN))
    assert (answer.status, kind) == (status, failure)
    assert words in answer.message and "127.0.0.1:11434" in answer.message
    assert (answer.who, answer.key, answer.reason) == ("bob", "SHA256:x", "upstream")


def test_an_upstreams_text_in_a_failure_is_cleaned_and_redacted():
    secret = "AAAAC3NzaC1lZDI1NTE5AAAAIOdKUK:c2lnbmF0dXJlLXRoYXQtbXVzdC1uZXZlci1zaG93"
    answer, _ = upstream_failure(UpstreamMalformed(f"\x1b[2Jechoed {secret}"), "up", (secret,), dict(KNOWN))
    assert "\x1b" not in answer.message and "c2lnbmF0dXJl" not in answer.message and "[redacted]" in answer.message


def test_tiny_pieces():
    assert not tiny(TINY_PIECES, 0)  # up to the bound, any size
    assert tiny(TINY_PIECES + 1, (TINY_PIECES + 1) * TINY_BYTES - 1)
    assert not tiny(TINY_PIECES + 1, (TINY_PIECES + 1) * TINY_BYTES)


def test_a_protocol_message_is_one_bounded_printable_line():
    message = protocol_message(h11.RemoteProtocolError("illegal header line: bytearray(b'\\x1b[31m" + "x" * 500 + "')"))
    assert message == "illegal header line"
    assert len(protocol_message(h11.RemoteProtocolError("y" * 500))) <= 123

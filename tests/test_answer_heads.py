"""The heads of the engine's answers, without a socket (serve/answers.py).

Each expectation comes from the rule it cites, not from the code's output:
RFC 9110 (Date, Content-Length of a HEAD answer, 204 without content), RFC 9112
(framing, Connection: close), and what each client reads (the /v1 error shape
as Ollama's openai.NewError writes it). The bytes are read back with h11 as a
client would: a head h11 cannot parse fails the test."""

from __future__ import annotations

import email.utils
import json

import h11
import pytest

from credential_helper.serve import answers
from credential_helper.serve.messages import Answer, Forward, Head


def _on_the_wire(response: h11.Response, body: bytes, method: str = "GET") -> tuple[h11.Response, bytes]:
    """The answer as a client reads it: serialised by h11's server side, parsed by its client side."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(f"{method} /x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert isinstance(server.next_event(), h11.Request)
    wire = server.send(response) or b""
    if body:
        wire += server.send(h11.Data(data=body)) or b""
    wire += server.send(h11.EndOfMessage()) or b""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/x", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    head = client.next_event()
    assert isinstance(head, h11.Response)
    got = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            got += event.data
        elif isinstance(event, h11.EndOfMessage):
            return head, got
        else:
            raise AssertionError(event)


def _fields(response: h11.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.headers:
        out.setdefault(name.decode().lower(), []).append(value.decode())
    return out


def test_an_answer_of_our_own_is_dated_sized_and_names_its_class():
    head = Head("GET", "/api/tags", "1.1", ())
    response, body = answers.own_answer(Answer(403, "not for you", reason="not-granted"), head, keep=True)
    read, got = _on_the_wire(response, body)
    fields = _fields(read)
    assert read.status_code == 403
    assert email.utils.parsedate_to_datetime(fields["date"][0]).tzname() == "UTC"  # RFC 9110 5.6.7 IMF-fixdate
    assert fields["content-length"] == [str(len(got))]
    assert fields["content-type"] == ["application/json"]
    assert fields["x-ollama-reason"] == ["not-granted"]
    assert "connection" not in fields  # kept alive: no close announced
    assert json.loads(got) == {"error": "not for you"}  # Ollama's shape off /v1: error alone


def test_an_answer_on_v1_has_openais_error_shape():
    head = Head("POST", "/v1/chat/completions?x=1", "1.1", ())
    response, body = answers.own_answer(Answer(400, "bad", reason="model"), head, keep=False)
    read, got = _on_the_wire(response, body, "POST")
    assert json.loads(got) == {"error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "model"}}
    assert _fields(read)["connection"] == ["close"]  # RFC 9112 9.6: a server that will close says so


def test_a_head_request_gets_the_length_a_get_would_and_no_body():
    head = Head("HEAD", "/api/tags", "1.1", ())
    response, body = answers.own_answer(Answer(401, "who are you", reason="unsigned"), head, keep=False)
    assert body == b""
    get_response, get_body = answers.own_answer(
        Answer(401, "who are you", reason="unsigned"), Head("GET", "/api/tags", "1.1", ()), False
    )
    assert _fields(response)["content-length"] == [str(len(get_body))] == _fields(get_response)["content-length"]


def test_a_204_has_no_content_fields_and_no_reason_class():
    response, body = answers.own_answer(Answer(204), Head("GET", "/", "1.1", ()), keep=True)
    fields = _fields(response)
    assert body == b"" and "content-length" not in fields and "content-type" not in fields  # RFC 9110 8.6
    assert "x-ollama-reason" not in fields


def test_an_unreadable_head_is_answered_in_ollamas_shape():
    response, body = answers.own_answer(Answer(400, "malformed request", reason="malformed"), None, keep=False)
    assert json.loads(body) == {"error": "malformed request"}
    assert _fields(response)["connection"] == ["close"]


def _upstream_head(*fields: tuple[str, str], status: int = 200, reason: bytes = b"OK") -> h11.Response:
    """An upstream's answer head as h11's client side hands it to the relay."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    lines = b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in fields)
    client.receive_data(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, lines))
    event = client.next_event()
    assert isinstance(event, h11.Response)
    return event


def test_a_relayed_head_drops_hop_by_hop_fields_and_keeps_its_length():
    event = _upstream_head(
        ("Content-Length", "5"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "hop"),
        ("Keep-Alive", "timeout=5"),
        ("Content-Type", "application/json"),
    )
    fields = _fields(answers.relayed_head(event, close=False))
    assert fields == {"content-type": ["application/json"], "content-length": ["5"]}  # RFC 9110 7.6.1


def test_a_relayed_chunked_head_is_not_given_a_length_and_a_closing_one_says_close():
    event = _upstream_head(("Transfer-Encoding", "chunked"), ("Content-Length", "5"))
    fields = _fields(answers.relayed_head(event, close=True))
    assert "content-length" not in fields and "transfer-encoding" not in fields  # h11 frames it anew
    assert fields["connection"] == ["close"]


def test_an_upstream_reason_phrase_is_cleaned_and_bounded():
    event = _upstream_head(("Content-Length", "0"), reason=b"Bad \x1b[31mthing " + b"x" * 400)
    reason = answers.relayed_head(event, close=False).reason
    assert b"\x1b" not in reason
    assert len(reason) == answers.REASON_PHRASE_LIMIT


def test_a_filtered_listing_gets_its_new_length_and_a_compressed_one_is_refused():
    forward = Forward("/api/tags", (), filter_answer=lambda status, body: body[:2], filter_limit=100)
    event = _upstream_head(("Content-Length", "10"), ("Content-Type", "application/json"))
    response, body = answers.filtered_answer(event, b"0123456789", forward, close=False)
    assert body == b"01" and _fields(response)["content-length"] == ["2"]
    compressed = _upstream_head(("Content-Length", "10"), ("Content-Encoding", "gzip"))
    with pytest.raises(ValueError, match="compressed"):
        answers.filtered_answer(compressed, b"0123456789", forward, close=False)
    identity = _upstream_head(("Content-Length", "10"), ("Content-Encoding", "identity"))
    assert answers.filtered_answer(identity, b"0123456789", forward, close=False)[1] == b"01"

"""serve/usage.py: token counts read passively from answers, with the shapes
Ollama and OpenAI document (copied from their docs, not produced by this code)."""

from __future__ import annotations

import json

import pytest

from credential_helper.serve import usage

# ollama/ollama docs/api.md (fb30760), "Generate a completion": the final streamed object.
GENERATE_FINAL = (
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"context":[1,2,3],'
    b'"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":26,"prompt_eval_duration":130079000,'
    b'"eval_count":259,"eval_duration":4232710000}'
)
GENERATE_PART = b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","response":"The","done":false}'
# docs/api/usage.mdx: a non-streaming /api/generate answer, as documented (pretty-printed).
USAGE_MDX = b"""{
  "model": "gemma4",
  "created_at": "2025-10-17T23:14:07.414671Z",
  "response": "Hello! How can I help you today?",
  "done": true,
  "done_reason": "stop",
  "total_duration": 174560334,
  "load_duration": 101397084,
  "prompt_eval_count": 11,
  "prompt_eval_duration": 13074791,
  "eval_count": 18,
  "eval_duration": 52479709
}"""
# docs/api.md "Generate Embeddings" (/api/embed): prompt tokens only.
EMBED = b"""{
  "model": "all-minilm",
  "embeddings": [[0.010071029, -0.0017594862, 0.05007221, 0.04692972, 0.054916814]],
  "total_duration": 14143917,
  "load_duration": 1019500,
  "prompt_eval_count": 8
}"""
# OpenAI API reference, chat completion object (usage), and a stream with
# stream_options.include_usage: the last chunk before [DONE] has empty choices and usage.
OPENAI_JSON = (
    b'{"id":"chatcmpl-123","object":"chat.completion","created":1677652288,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}'
)
OPENAI_SSE = (
    b'data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini",'
    b'"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}\n\n'
    b"data: [DONE]\n\n"
)
# OpenAI Responses API: the response.completed event nests usage under response.
RESPONSES_SSE = (
    b"event: response.completed\n"
    b'data: {"type":"response.completed","response":{"id":"resp_1","status":"completed",'
    b'"usage":{"input_tokens":36,"output_tokens":87,"total_tokens":123}}}\n\n'
)


def scan(body: bytes, size: int = 7) -> tuple[int, int, str] | None:
    scanner = usage.Scanner()
    for start in range(0, len(body), size):  # in pieces, as an answer streams past
        scanner.feed(body[start : start + size])
    return scanner.result()


@pytest.mark.parametrize(
    "body, expected",
    [
        (GENERATE_PART + b"\n" + GENERATE_PART + b"\n" + GENERATE_FINAL + b"\n", (26, 259, "llama3.2")),
        (USAGE_MDX, (11, 18, "gemma4")),
        (EMBED, (8, 0, "all-minilm")),
        (OPENAI_JSON, (9, 12, "gpt-4o-mini")),
        (OPENAI_SSE, (9, 12, "gpt-4o-mini")),
        (RESPONSES_SSE, (36, 87, "")),
        (GENERATE_PART + b"\n", None),
        (b'{"models":[]}', None),
    ],
)
def test_counts_from_documented_shapes(body, expected):
    assert scan(body) == expected


def test_a_final_object_larger_than_the_tail_still_gives_its_counts():
    big = {"model": "all-minilm", "embeddings": [[0.5] * 30000], "prompt_eval_count": 8}
    body = json.dumps(big).encode()
    assert len(body) > usage.TAIL
    assert scan(body, 65536) == (8, 0, "")


def test_model_text_that_spells_a_count_is_not_taken_for_one():
    body = json.dumps({"model": "m", "response": '{"prompt_eval_count": 999999, "eval_count": 5}', "done": False}).encode()
    huge = body + b"\n" + b"x" * (usage.TAIL + 10)  # the object does not parse whole: the pattern path
    assert scan(huge, 4096) is None


def test_the_tail_stays_bounded():
    scanner = usage.Scanner()
    for _ in range(1000):
        scanner.feed(b"y" * 4096)
    assert len(scanner._tail) <= 2 * usage.TAIL


def test_only_json_ndjson_and_event_streams_are_read():
    assert usage.wanted("application/x-ndjson") and usage.wanted("application/json; charset=utf-8")
    assert usage.wanted("text/event-stream") and not usage.wanted("text/plain") and not usage.wanted(None)

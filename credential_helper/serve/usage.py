"""Token counts from an answer's body, read passively as it streams past. Pure.

Where Ollama puts them:
- ``/api/generate``, ``/api/chat``, ``/api/embed``...: the final object, a single
  JSON body or the last line of an NDJSON stream (``done: true``), carries
  ``prompt_eval_count`` and ``eval_count`` (docs/api.md, docs/api/usage.mdx);
- ``/v1/*`` (openai/openai.go ``Usage``): ``usage: {prompt_tokens, completion_tokens}``
  in a JSON body, or in the last ``data:`` line of a Server-Sent Events stream
  before ``data: [DONE]`` (sent when the client asks ``stream_options.include_usage``);
  ``/v1/responses`` and ``/v1/messages`` say ``input_tokens``/``output_tokens``
  (the Responses API's ``response.completed`` nests it under ``response``).

Only the last TAIL bytes are kept, so the cost is a bounded copy per chunk and
one parse at the end; a body whose final object does not fit in the tail (a large
embedding) falls back to reading the two top-level counts by pattern.
"""

from __future__ import annotations

import json
import re
from typing import Any

TAIL = 64 * 1024
# Inside a JSON string (model text) the name's quotes are escaped, \"eval_count\": never a match.
_COUNT = re.compile(rb'"(prompt_eval_count|eval_count)"\s*:\s*(\d{1,15})')
TYPES = ("application/json", "application/x-ndjson", "text/event-stream")


def wanted(content_type: str | None) -> bool:
    """Whether an answer of this Content-Type can carry token counts."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() in TYPES


class Scanner:
    """Feed it the body's chunks; ``result()`` gives (prompt, completion, model) or
    None; ``model`` is the name the object with the counts gives ("" when none)."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._tail += chunk
        if len(self._tail) > 2 * TAIL:
            del self._tail[:-TAIL]

    def result(self) -> tuple[int, int, str] | None:
        tail = bytes(self._tail[-TAIL:])
        whole = tail.strip()
        if whole.startswith(b"{") and whole.endswith(b"}"):  # a single JSON body, pretty-printed or not
            try:
                found = counts(json.loads(whole))
            except (ValueError, RecursionError):
                found = None
            if found is not None:
                return found
        for line in reversed(tail.splitlines()):
            line = line.strip()
            if line.startswith(b"data:"):
                line = line[5:].strip()
            if not line.startswith(b"{"):
                continue
            try:
                found = counts(json.loads(line))
            except (ValueError, RecursionError):
                continue
            if found is not None:
                return found
        return _by_pattern(tail)


def counts(value: Any) -> tuple[int, int, str] | None:  # decoded JSON
    """(prompt, completion, model) from one decoded object, or None when it has none."""
    if not isinstance(value, dict):
        return None
    if "prompt_eval_count" in value or "eval_count" in value:
        return _number(value.get("prompt_eval_count")), _number(value.get("eval_count")), _name(value)
    usage = value.get("usage")
    if not isinstance(usage, dict) and isinstance(value.get("response"), dict):
        value = value["response"]  # Responses API: response.completed
        usage = value.get("usage")
    if isinstance(usage, dict):
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            return _number(usage.get("prompt_tokens")), _number(usage.get("completion_tokens")), _name(value)
        if "input_tokens" in usage or "output_tokens" in usage:
            return _number(usage.get("input_tokens")), _number(usage.get("output_tokens")), _name(value)
    return None


def _name(value: dict) -> str:
    model = value.get("model")
    return model[:200] if isinstance(model, str) else ""


def _number(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**15 else 0


def _by_pattern(tail: bytes) -> tuple[int, int, str] | None:
    """The counts of a single JSON body too large for the tail (a large embedding)."""
    found = {name: int(number) for name, number in _COUNT.findall(tail)}
    if not found:
        return None
    return found.get(b"prompt_eval_count", 0), found.get(b"eval_count", 0), ""

"""What the stand-in says: its models and its model's reply, in Ollama's and OpenAI's shapes.

Data and pure functions of a request's fields, with no sockets and no state, so
that ``standin_http.py`` only routes and frames. Tests import ``REPLY_WORDS`` and
``MODELS`` (also through ``standin``) to know what a stand-in upstream answers.
"""

from __future__ import annotations

import json

MODELS = [
    {"name": "gpt-oss:120b-cloud", "model": "gpt-oss:120b-cloud", "size": 384, "digest": "0" * 64},
    {"name": "qwen3-coder:480b-cloud", "model": "qwen3-coder:480b-cloud", "size": 384, "digest": "1" * 64},
]
# What the stand-in's model "says", one chunk per word when streaming.
REPLY_WORDS = ["Hello", " from", " the", " stand-in."]
_CHAT_CREATED = "2026-11-29T00:00:00Z"


def words(stream_chunks: int) -> list[str]:
    """The reply cut into ``stream_chunks`` pieces: the words, then more if longer."""
    extra = max(stream_chunks - len(REPLY_WORDS), 0)
    return REPLY_WORDS + [" more"] * extra


def running_models() -> dict:
    """``GET /api/ps``."""
    return {"models": [dict(model, expires_at="2026-12-01T00:00:00Z", size_vram=0) for model in MODELS]}


def openai_models() -> dict:
    """``GET /v1/models``, in openai.ListMiddleware's shape."""
    return {
        "object": "list",
        "data": [{"id": model["name"], "object": "model", "created": 1764374400, "owned_by": "library"} for model in MODELS],
    }


def show() -> dict:
    """``POST /api/show``, whatever the model."""
    return {
        "modelfile": "FROM stand-in",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {"family": "stand-in", "format": "gguf"},
        "model_info": {"general.architecture": "stand-in"},
        "capabilities": ["completion"],
    }


def chat_stream(model: str, pieces: list[str]) -> list[str]:
    """``POST /api/chat`` streamed: one NDJSON line per piece, then the final one."""
    lines = [
        json.dumps(
            {"model": model, "created_at": _CHAT_CREATED, "message": {"role": "assistant", "content": word}, "done": False}
        )
        + "\n"
        for word in pieces
    ]
    lines.append(
        json.dumps(
            {
                "model": model,
                "created_at": _CHAT_CREATED,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
            }
        )
        + "\n"
    )
    return lines


def chat(model: str) -> dict:
    """``POST /api/chat`` with ``"stream": false``."""
    return {
        "model": model,
        "created_at": _CHAT_CREATED,
        "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
        "done": True,
        "done_reason": "stop",
    }


def _openai_base(model: str) -> dict:
    return {"id": "chatcmpl-standin", "created": 1764374400, "model": model}


def openai_chat_stream(model: str, pieces: list[str]) -> list[str]:
    """``POST /v1/chat/completions`` streamed: server-sent events, one per piece, then the end."""
    base = _openai_base(model)
    events = [
        "data: "
        + json.dumps(
            {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}],
            }
        )
        + "\n\n"
        for word in pieces
    ]
    events.append(
        "data: "
        + json.dumps({**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + "\n\n"
    )
    events.append("data: [DONE]\n\n")
    return events


def openai_chat(model: str) -> dict:
    """``POST /v1/chat/completions`` without streaming."""
    return {
        **_openai_base(model),
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_WORDS)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
    }


def web_search(query: object) -> dict:
    """``POST /api/web_search``: one result that echoes the query."""
    return {"results": [{"title": "Stand-in", "url": "https://example.com/", "content": query}]}


def web_fetch(url: object) -> dict:
    """``POST /api/web_fetch``: a page whose content is the URL asked for."""
    return {"title": "Stand-in", "content": url, "links": []}

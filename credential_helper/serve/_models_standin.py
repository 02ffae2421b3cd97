"""Stand-in for the models branch's serve/models.py until it lands (deleted at merge)."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Named:
    names: tuple[str, ...]


@dataclass(frozen=True)
class Unreadable:
    message: str


@dataclass(frozen=True)
class Unknown:
    message: str = "the gate does not know which model this endpoint names"


def models_named(method, path, query, content_type, body):
    if (method, path) in (("GET", "/api/tags"), ("HEAD", "/api/tags"), ("GET", "/api/ps"), ("GET", "/v1/models"), ("HEAD", "/")):
        return Named(())
    if (method, path) in (("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/v1/chat/completions"), ("POST", "/api/show")):
        try:
            value = json.loads(body)
        except ValueError:
            return Unreadable("the body is not JSON")
        model = value.get("model") if isinstance(value, dict) else None
        if not isinstance(model, str):
            return Unreadable("no model")
        name = model.strip().lower()
        return Named((name if ":" in name else name + ":latest",))
    return Unknown()


def filter_listing(path, body, allowed):
    data = json.loads(body)
    key = "data" if path == "/v1/models" else "models"
    field = "id" if path == "/v1/models" else "name"
    data[key] = [entry for entry in data.get(key) or [] if allowed(entry.get(field, ""))]
    return json.dumps(data).encode()

"""An HTTP answer as the helper reads it, whichever library fetched it.

The urllib3 transport fills it for the CLI; the HTTP-library adapters fill it
from httpx or requests responses, so that one function reads every token
response under the same rules.
"""

from dataclasses import dataclass, field

from .errors import NetworkError


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    #: What we sent that must never be echoed to stderr (the Authorization value).
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def json_object(self, where: str) -> dict:
        """The body as a JSON object, or NetworkError (a malformed response)."""
        import json

        try:
            body = json.loads(self.body)
        except (ValueError, RecursionError):
            raise NetworkError(f"{where} answered {self.status} but the body is not JSON") from None
        if not isinstance(body, dict):
            raise NetworkError(f"{where} answered {self.status} but the JSON is not an object")
        return body

"""The stand-in's HTTP side: one request handler for ollama.com's API and its registry.

It routes and frames (``http.server``, chunked streams, the ``/token`` exchange,
the registry's challenge) and checks every signature through the server state
it is given (``standin.StandIn``: linked keys, the clock, nonces, counters);
what the model says comes from ``standin_replies.py``. Apart from ``standin.py``
so that the state a test sets and reads stays readable on its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import sys
import time
from collections.abc import Iterable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qs, urlsplit

from . import standin_replies as replies

if TYPE_CHECKING:
    from .standin import StandIn

# Independently derived: base64 of the hex SHA-256 of an empty body.
_EMPTY_DIGEST = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()


class QuietServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 overflows when a test opens dozens of
    # connections at once on a loaded machine: the kernel drops the handshakes
    # and the clients wait through retransmissions (seen as read timeouts).
    request_queue_size = 128

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        # A client that hangs up mid-stream is a case the tests make on purpose.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """Subclassed once per server with ``state`` set (``StandIn.start``)."""

    state: StandIn
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # stream chunks leave at once

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        self.state.log.append(format % args)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(self.state.now(), usegmt=True)

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _unauthorized(self, reason: str, headers: dict[str, str] | None = None) -> None:
        self._send(401, {"error": reason}, headers)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok:
            self.state.hosts_seen.append(self.headers.get("Host", ""))
        return ok

    def do_GET(self) -> None:
        target = urlsplit(self.path)
        if target.path == "/token":
            return self._token()
        if target.path.startswith("/v2/"):
            return self._registry(target.path)
        self._api("GET", target)

    def do_POST(self) -> None:
        self._api("POST", urlsplit(self.path))

    def _body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.read(2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _api(self, method: str, target: SplitResult) -> None:
        """Scheme 2 on every /api/ and /v1/ request: METHOD,<raw request target>."""
        body = self._body() if method == "POST" else b""
        if not target.path.startswith(("/api/", "/v1/")):
            return self._send(404, {"error": "not found"})
        self.state.request_headers.append(list(self.headers.items()))
        query = parse_qs(target.query, keep_blank_values=True)
        account: dict[str, str] | None
        if not self.state.verify_signatures:
            account = {"name": "local", "email": "", "plan": "local"}
            self.state.unverified_requests.append((method, self.path))
        else:
            account = self.state.verify(self.headers.get("Authorization"), f"{method},{self.path}")
            if account is None or not self.state.fresh_ts(query):
                self.state.refused_requests.append((method, self.path))
                return self._unauthorized("unauthorized" if account is None else "missing or stale ts")
            self.state.signed_requests.append((method, self.path))
        if (method, target.path) == ("POST", "/api/upload"):  # any bytes: echo their size and digest
            return self._send(200, {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            return self._send(400, {"error": "the body is not JSON"})
        route = (method, target.path)
        if route == ("GET", "/api/tags"):
            return self._send(200, {"models": replies.MODELS})
        if route == ("GET", "/api/ps"):
            return self._send(200, replies.running_models())
        if route == ("GET", "/v1/models"):
            return self._send(200, replies.openai_models())
        if route == ("POST", "/api/me"):
            return self._send(200, dict(account))
        if route == ("POST", "/api/show"):
            return self._send(200, replies.show())
        if route == ("POST", "/api/chat"):
            return self._chat(request)
        if route == ("POST", "/v1/chat/completions"):
            return self._openai_chat(request)
        if route == ("POST", "/api/web_search"):
            return self._send(200, replies.web_search(request.get("query", "")))
        if route == ("GET", "/api/redirect"):
            return self._send(302, {}, {"Location": "https://elsewhere.example/landing"})
        if route == ("GET", "/api/gzip"):
            import gzip

            data = gzip.compress(json.dumps({"compressed": True}).encode(), mtime=0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if route == ("POST", "/api/web_fetch"):
            return self._send(200, replies.web_fetch(request.get("url", "")))
        if method == "POST" and target.path.startswith("/api/"):
            return self._send(200, {"ok": True, "path": target.path, "account": account["name"]})
        self._send(404, {"error": "not found"})

    def _stream(self, content_type: str, chunks: Iterable[str]) -> None:
        """Chunked transfer encoding, one chunk per piece, each flushed at once."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in chunks:
                data = piece.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if self.state.chunk_delay:
                    time.sleep(self.state.chunk_delay)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            with self.state._lock:
                self.state.aborted_streams += 1
            raise

    def _chat(self, request: dict) -> None:
        model = request.get("model", "")
        if request.get("stream", True):
            return self._stream("application/x-ndjson", replies.chat_stream(model, replies.words(self.state.stream_chunks)))
        self._send(200, replies.chat(model))

    def _openai_chat(self, request: dict) -> None:
        model = request.get("model", "")
        if request.get("stream"):
            return self._stream("text/event-stream", replies.openai_chat_stream(model, replies.words(self.state.stream_chunks)))
        self._send(200, replies.openai_chat(model))

    def _token(self) -> None:
        state = self.state
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        host = self.headers.get("Host", "")
        scheme = "https" if state.tls_context else "http"
        signed = f"GET,{scheme}://{host}{self.path},{_EMPTY_DIGEST}"
        account = state.verify(self.headers.get("Authorization"), signed)
        if account is None:
            return self._unauthorized("invalid signature or unknown key")
        if not state.fresh_ts(query):
            return self._unauthorized("request timestamp is too old or too new")
        nonces = query.get("nonce", [])
        with state._lock:
            if len(nonces) != 1 or not nonces[0] or nonces[0] in state.seen_nonces:
                return self._unauthorized("missing or replayed nonce")
            state.seen_nonces.add(nonces[0])
            state.exchanges += 1
        if state.exchange_delay:
            time.sleep(state.exchange_delay)
        token = secrets.token_urlsafe(24)
        scopes = [s for s in query.get("scope", []) if s]
        state.tokens[token] = {"account": account["name"], "scopes": scopes}
        body: dict = {"token": token}
        if state.expires_in is not None:
            body["expires_in"] = state.expires_in
        self._send(200, body)

    def _registry(self, path: str) -> None:
        # /v2/<name>/manifests/<reference>
        parts = path[len("/v2/") :].rsplit("/manifests/", 1)
        if len(parts) != 2:
            return self._send(404, {"error": "not found"})
        scope = f"repository:{parts[0]}:pull"
        authorization = self.headers.get("Authorization", "")
        grant = self.state.tokens.get(authorization[7:]) if authorization.startswith("Bearer ") else None
        if grant is None or scope not in grant["scopes"]:
            # The realm names this server as the client addressed it (its Host).
            scheme = "https" if self.state.tls_context else "http"
            realm = f"{scheme}://{self.headers.get('Host') or self.state.host}/token"
            challenge = f'Bearer realm="{realm}",service="{self.state.service}",scope="{scope}"'
            return self._unauthorized("authentication required", {"WWW-Authenticate": challenge})
        if self.state.redirect_authenticated:
            return self._send(302, {}, {"Location": self.state.redirect_authenticated})
        self._send(200, {"schemaVersion": 2, "name": parts[0], "tag": parts[1], "layers": []})

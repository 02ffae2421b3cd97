"""A loopback stand-in for ollama.com and its registry, for demos and tests.

It checks signatures the way a server must: from the bytes on the wire (the raw
request target and the Host header), with ``cryptography``'s Ed25519 verifier,
and shares no code with the helper's signing side. It knows a set of linked
keys, rejects unknown keys, stale ``ts`` and replayed nonces, and counts token
exchanges so tests can prove single flight.

Run it alone with ``python -m credential_helper.standin --authorize KEY.pub``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import ssl
import struct
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Iterable
from urllib.parse import SplitResult, parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# Independently derived: base64 of the hex SHA-256 of an empty body.
_EMPTY_DIGEST = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
MODELS = [
    {"name": "gpt-oss:120b-cloud", "model": "gpt-oss:120b-cloud", "size": 384, "digest": "0" * 64},
    {"name": "qwen3-coder:480b-cloud", "model": "qwen3-coder:480b-cloud", "size": 384, "digest": "1" * 64},
]
# What the stand-in's model "says", one chunk per word when streaming.
REPLY_WORDS = ["Hello", " from", " the", " stand-in."]


def public_key_from_blob(blob_b64: str) -> Ed25519PublicKey:
    """Parse the SSH wire format: string "ssh-ed25519", string 32-byte key."""
    blob = base64.b64decode(blob_b64, validate=True)
    (n,) = struct.unpack(">I", blob[:4])
    kind = blob[4 : 4 + n]
    (m,) = struct.unpack(">I", blob[4 + n : 8 + n])
    raw = blob[8 + n : 8 + n + m]
    if kind != b"ssh-ed25519" or len(raw) != 32 or 8 + n + m != len(blob):
        raise ValueError("not an ssh-ed25519 public key blob")
    return Ed25519PublicKey.from_public_bytes(raw)


class StandIn:
    """The server state; ``start()`` serves on 127.0.0.1 on a free port."""

    def __init__(
        self,
        *,
        max_skew: float = 60.0,
        clock_offset: float = 0.0,
        expires_in: int | None = 300,
        exchange_delay: float = 0.0,
        chunk_delay: float = 0.0,
        service: str = "ollama.com",
        tls_context: ssl.SSLContext | None = None,
        port: int = 0,
        verify_signatures: bool = True,
    ) -> None:
        self.accounts: dict[str, dict] = {}
        self.max_skew = max_skew
        self.clock_offset = clock_offset  # the server's clock runs this far ahead
        self.expires_in = expires_in
        self.exchange_delay = exchange_delay
        self.chunk_delay = chunk_delay  # pause between streamed chunks
        # Every scheme-2 request the stand-in verified: (method, raw request target).
        self.signed_requests: list[tuple[str, str]] = []
        # Every request it refused for a missing or bad signature: (method, target).
        self.refused_requests: list[tuple[str, str]] = []
        # The headers of every /api/ or /v1/ request, as received.
        self.request_headers: list[list[tuple[str, str]]] = []
        # Streams whose client hung up before the end.
        self.aborted_streams = 0
        # False: stand in for a local `ollama serve`, which checks no signature (a
        # front server has verified it); each such request is recorded here instead.
        self.verify_signatures = verify_signatures
        self.unverified_requests: list[tuple[str, str]] = []
        # Chunks a stream sends (the stand-in's reply, then more words if longer).
        self.stream_chunks = len(REPLY_WORDS)
        self.service = service
        self.tls_context = tls_context  # an ssl.SSLContext makes it serve https
        self.port = port
        # When set, an authenticated registry request is answered with a redirect here.
        self.redirect_authenticated: str | None = None
        # Every request's Host header, in order (tests check it is sent as written).
        self.hosts_seen: list[str] = []
        self.tokens: dict[str, dict] = {}
        self.seen_nonces: set[str] = set()
        self.exchanges = 0
        self.log: list[str] = []
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- accounts --------------------------------------------------------------
    def authorize(self, public_line: str, name: str = "jdoe", email: str = "jdoe@example.com", plan: str = "free") -> None:
        """Link a public key (``ssh-ed25519 AAAA... [comment]``) to an account."""
        blob = public_line.split()[1]
        public_key_from_blob(blob)
        self.accounts[blob] = {"name": name, "email": email, "plan": plan}

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> StandIn:
        handler = type("Handler", (_Handler,), {"state": self})
        self.server = _QuietServer(("127.0.0.1", self.port), handler)
        if self.tls_context is not None:
            self.server.socket = self.tls_context.wrap_socket(self.server.socket, server_side=True)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://{self.host}"

    def now(self) -> float:
        return time.time() + self.clock_offset

    # -- verification ------------------------------------------------------------
    def verify(self, authorization: str | None, signed: str) -> dict | None:
        """The account whose key signed ``signed``, or None."""
        if not authorization:
            return None
        value = authorization[7:] if authorization.startswith("Bearer ") else authorization
        blob, sep, signature = value.partition(":")
        account = self.accounts.get(blob)
        if not sep or account is None:
            return None
        try:
            public_key_from_blob(blob).verify(base64.b64decode(signature, validate=True), signed.encode())
        except (InvalidSignature, ValueError):
            return None
        return account

    def fresh_ts(self, query: dict[str, list[str]]) -> bool:
        values = query.get("ts", [])
        if len(values) != 1 or not values[0].isdigit():
            return False
        return abs(int(values[0]) - self.now()) <= self.max_skew


class _QuietServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 overflows when a test opens dozens of
    # connections at once on a loaded machine: the kernel drops the handshakes
    # and the clients wait through retransmissions (seen as read timeouts).
    request_queue_size = 128

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        # A client that hangs up mid-stream is a case the tests make on purpose.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
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
            return self._send(200, {"models": MODELS})
        if route == ("GET", "/api/ps"):
            return self._send(200, {"models": [dict(model, expires_at="2026-12-01T00:00:00Z", size_vram=0) for model in MODELS]})
        if route == ("GET", "/v1/models"):  # openai.ListMiddleware's shape
            return self._send(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": model["name"], "object": "model", "created": 1764374400, "owned_by": "library"} for model in MODELS
                    ],
                },
            )
        if route == ("POST", "/api/me"):
            return self._send(200, dict(account))
        if route == ("POST", "/api/show"):
            return self._send(
                200,
                {
                    "modelfile": "FROM stand-in",
                    "parameters": "",
                    "template": "{{ .Prompt }}",
                    "details": {"family": "stand-in", "format": "gguf"},
                    "model_info": {"general.architecture": "stand-in"},
                    "capabilities": ["completion"],
                },
            )
        if route == ("POST", "/api/chat"):
            return self._chat(request)
        if route == ("POST", "/v1/chat/completions"):
            return self._openai_chat(request)
        if route == ("POST", "/api/web_search"):
            return self._send(
                200, {"results": [{"title": "Stand-in", "url": "https://example.com/", "content": request.get("query", "")}]}
            )
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
            return self._send(200, {"title": "Stand-in", "content": request.get("url", ""), "links": []})
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
        created = "2026-11-29T00:00:00Z"
        if request.get("stream", True):
            pieces = [
                json.dumps(
                    {"model": model, "created_at": created, "message": {"role": "assistant", "content": word}, "done": False}
                )
                + "\n"
                for word in self._words()
            ]
            pieces.append(
                json.dumps(
                    {
                        "model": model,
                        "created_at": created,
                        "message": {"role": "assistant", "content": ""},
                        "done": True,
                        "done_reason": "stop",
                    }
                )
                + "\n"
            )
            return self._stream("application/x-ndjson", pieces)
        self._send(
            200,
            {
                "model": model,
                "created_at": created,
                "message": {"role": "assistant", "content": "".join(REPLY_WORDS)},
                "done": True,
                "done_reason": "stop",
            },
        )

    def _words(self) -> list[str]:
        extra = max(self.state.stream_chunks - len(REPLY_WORDS), 0)
        return REPLY_WORDS + [" more"] * extra

    def _openai_chat(self, request: dict) -> None:
        model = request.get("model", "")
        base = {"id": "chatcmpl-standin", "created": 1764374400, "model": model}
        if request.get("stream"):
            pieces = [
                "data: "
                + json.dumps(
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}],
                    }
                )
                + "\n\n"
                for word in self._words()
            ]
            pieces.append(
                "data: "
                + json.dumps(
                    {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                )
                + "\n\n"
            )
            pieces.append("data: [DONE]\n\n")
            return self._stream("text/event-stream", pieces)
        self._send(
            200,
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(REPLY_WORDS)}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
            },
        )

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authorize", action="append", default=[], metavar="KEY.pub", help="link this public key")
    args = parser.parse_args(argv)
    state = StandIn()
    for path in args.authorize:
        with open(path) as handle:
            state.authorize(handle.read())
    state.start()
    print(f"stand-in listening on {state.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        state.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A loopback stand-in for ollama.com and its registry, for demos and tests.

It checks signatures the way a server must: from the bytes on the wire (the raw
request target and the Host header), with ``cryptography``'s Ed25519 verifier,
and shares no code with the helper's signing side. It knows a set of linked
keys, rejects unknown keys, stale ``ts`` and replayed nonces, and counts token
exchanges so tests can prove single flight.

This module holds the server's state (what a test sets up and reads back), the
verification of a signature, and starting and stopping it; the HTTP handler is
``standin_http.py`` and what the model answers is ``standin_replies.py``.

Run it alone with ``python -m credential_helper.standin --authorize KEY.pub``.
"""

from __future__ import annotations

import base64
import ssl
import struct
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import system
from .standin_http import Handler, QuietServer
from .standin_replies import MODELS, REPLY_WORDS

__all__ = ["MODELS", "REPLY_WORDS", "StandIn", "main", "public_key_from_blob"]


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
        self.server: QuietServer | None = None
        self._thread: threading.Thread | None = None

    # -- accounts --------------------------------------------------------------
    def authorize(self, public_line: str, name: str = "jdoe", email: str = "jdoe@example.com", plan: str = "free") -> None:
        """Link a public key (``ssh-ed25519 AAAA... [comment]``) to an account."""
        blob = public_line.split()[1]
        public_key_from_blob(blob)
        self.accounts[blob] = {"name": name, "email": email, "plan": plan}

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> StandIn:
        handler = type("Handler", (Handler,), {"state": self})
        self.server = QuietServer(("127.0.0.1", self.port), handler)
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


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authorize", action="append", default=[], metavar="KEY.pub", help="link this public key")
    args = parser.parse_args(argv)
    state = StandIn()
    for path in args.authorize:
        try:  # read as the package reads every file it did not write (no FIFO, bounded)
            data, _ = system.read_file(path, 64 * 1024)
        except OSError as exc:
            parser.error(f"--authorize {path}: {exc}")
        state.authorize(data.decode("utf-8", "replace"))
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

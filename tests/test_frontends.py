"""Issue 15: real nginx and Caddy, configured with the README's blocks, in front of
the installed ``gate --auth-only`` and a stand-in local Ollama.

Signatures are made by this project's signer (proven against golden vectors in
test_vectors.py); the verifying is done by the gate; what the caller sees and what
reaches Ollama is read from the wire on both sides. Fingerprints are computed by
ssh-keygen, not by this project.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from credential_helper.client import sign_request
from credential_helper.identity import load_identity
from credential_helper.standin import REPLY_WORDS
from conftest import assert_ollama_error_shape
from faults import CertificateAuthority
from frontends import SERVER_NAME, Caddy, Gate, IngressNginx, Nginx, RawUpstream, Relay, free_port

FRONTS = {"nginx": Nginx, "caddy": Caddy}
# What a stand-in "model" streams here: 12 words 60 ms apart, about 0.7 s in all.
STREAM_CHUNKS = 12
CHUNK_DELAY = 0.06
# How long a refused request is given to (wrongly) arrive upstream before we look.
SETTLE = 0.3


def fingerprint(public_file) -> str:
    """``SHA256:...`` as ssh-keygen computes it."""
    return subprocess.run(["ssh-keygen", "-lf", str(public_file)], capture_output=True, text=True, check=True).stdout.split()[1]


class Chain:
    """client -> front server (TLS) -> gate --auth-only ; front server -> stand-in Ollama."""

    def __init__(self, front, gate: Gate, relay: Relay, ollama, keys) -> None:
        self.front, self.gate, self.relay, self.ollama, self.keys = front, gate, relay, ollama, keys

    def signed(self, method: str, path: str, key: str = "ed25519-a", ts: int | None = None) -> tuple[str, str]:
        """(request target with ts, Authorization) signed by golden key ``key``."""
        done = sign_request(method, self.front.base + path, identity=str(self.keys / key), ts=ts)
        parts = urlsplit(done.url)
        return f"{parts.path}?{parts.query}", done.authorization

    def upstream_headers(self, index: int = -1) -> dict[str, list[str]]:
        headers: dict[str, list[str]] = {}
        for name, value in self.ollama.request_headers[index]:
            headers.setdefault(name.lower(), []).append(value)
        return headers

    def assert_nothing_reached_ollama(self) -> None:
        time.sleep(SETTLE)
        assert self.ollama.hosts_seen == [] and self.ollama.request_headers == [] and self.ollama.unverified_requests == [], (
            f"{self.front.name} forwarded a refused request: {self.ollama.unverified_requests or self.ollama.hosts_seen}"
        )

    def gate_direct(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict]:
        """What the gate itself answers for this request (nginx's header family)."""
        status, answer_headers, body = self.gate.ask({**headers, "X-Original-Method": method, "X-Original-URI": target})
        assert body, f"the gate's {status} has no body"
        parsed = json.loads(body)
        message = parsed["error"]["message"] if isinstance(parsed["error"], dict) else parsed["error"]  # OpenAI's shape on /v1/
        assert answer_headers.get("x-ollama-error") == message, "X-Ollama-Error must repeat the body's message (nginx reads it)"
        return status, parsed


@pytest.fixture
def authorized_keys(tmp_path, keys):
    """alice (ed25519-a) may call anything; bob (ed25519-b) only /api/tags."""
    path = tmp_path / "authorized_keys"
    a = (keys / "ed25519-a.pub").read_text().split()
    b = (keys / "ed25519-b.pub").read_text().split()
    path.write_text(f"# test users\n{a[0]} {a[1]} alice *\n{b[0]} {b[1]} bob /api/tags\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def local_ollama(streaming_standin):
    """The streaming stand-in as a local `ollama serve`: it checks no signature."""
    streaming_standin.verify_signatures = False
    streaming_standin.stream_chunks = STREAM_CHUNKS
    streaming_standin.chunk_delay = CHUNK_DELAY
    return streaming_standin


@pytest.fixture(params=sorted(FRONTS))
def chain(request, tmp_path, env, keys, authorized_keys, local_ollama):
    gate = Gate(authorized_keys, env)
    relay = Relay(gate.port)
    front = None
    try:
        ca = CertificateAuthority(tmp_path)
        front = FRONTS[request.param](tmp_path / request.param, ca, local_ollama.server.server_address[1], relay.port)
        yield Chain(front, gate, relay, local_ollama, keys)
    finally:
        if front is not None:
            front.stop()
        relay.stop()
        log = gate.stop()
        # The gate's log names requests, never their credentials or ts values (an unknown
        # key's public key appears only in the line the operator may add).
        for line in log:
            assert "ts=" not in line and "AAAAC3NzaC1lZDI1NTE5" not in line.split("(to admit it add: ")[0], line


# --- admitted ----------------------------------------------------------------------------------


def test_a_listed_key_streams_chat_incrementally_and_only_the_gate_names_the_user(chain, keys):
    target, authorization = chain.signed("POST", "/api/chat")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, lines = chain.front.stream(
        "POST",
        target,
        {
            "Authorization": authorization,
            "Content-Type": "application/json",
            # A client claiming an identity of its own: the upstream must see the gate's.
            "X-Ollama-User": "root",
            "X-Ollama-Key": "SHA256:forged",
        },
        body,
    )
    assert status == 200, lines
    words = [json.loads(line)["message"]["content"] for _, line in lines]
    assert words[: len(REPLY_WORDS)] == REPLY_WORDS and len(words) == STREAM_CHUNKS + 1 and json.loads(lines[-1][1])["done"]
    # Incremental: the first line arrived well before the stream ended, and no
    # line waited for the next one (a buffering front server delivers them together).
    first, last = lines[0][0], lines[-1][0]
    assert last - first >= 0.5 * CHUNK_DELAY * STREAM_CHUNKS, [round(t, 3) for t, _ in lines]
    gaps = [later - earlier for (earlier, _), (later, _) in zip(lines, lines[1:])]
    assert sum(gap >= CHUNK_DELAY / 3 for gap in gaps) >= STREAM_CHUNKS // 2, [round(g, 3) for g in gaps]

    assert chain.ollama.unverified_requests == [("POST", target)], "the upstream routes the target the gate verified"
    seen = chain.upstream_headers()
    assert seen["x-ollama-user"] == ["alice"]
    assert seen["x-ollama-key"] == [fingerprint(keys / "ed25519-a.pub")]
    assert "authorization" not in seen, "the signature must not reach Ollama"
    signature = authorization.split(":", 1)[1]
    assert not any(signature in value for values in seen.values() for value in values)
    # An Ollama on loopback answers 403 to a non-local Host (server/routes.go, allowedHostsMiddleware).
    assert seen["host"] == [f"localhost:{chain.ollama.server.server_address[1]}"]


def test_a_grant_for_one_endpoint_admits_that_endpoint(chain):
    target, authorization = chain.signed("GET", "/api/tags", key="ed25519-b")
    status, _, body = chain.front.request("GET", target, {"Authorization": authorization})
    assert status == 200 and len(json.loads(body)["models"]) == 2
    assert chain.ollama.unverified_requests == [("GET", target)]
    assert chain.upstream_headers()["x-ollama-user"] == ["bob"]


# --- refused, with the gate's reason, and nothing forwarded -------------------------------------


def _unknown_key(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    private = tmp_path / "stranger"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public = tmp_path / "stranger.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def _tampered(authorization: str) -> str:
    blob, signature = authorization.split(":", 1)
    raw = bytearray(base64.b64decode(signature))
    raw[10] ^= 0x01
    return f"{blob}:{base64.b64encode(bytes(raw)).decode()}"


REFUSALS = {
    # name: (expected status, how to build (method, target, headers))
    "unsigned": (401, lambda c, tmp: ("POST", "/api/chat", {})),
    "stale-ts": (401, lambda c, tmp: ("POST", *_sig(c.signed("POST", "/api/chat", ts=int(time.time()) - 3600)))),
    "future-ts": (401, lambda c, tmp: ("POST", *_sig(c.signed("POST", "/api/chat", ts=int(time.time()) + 3600)))),
    "tampered-signature": (401, lambda c, tmp: ("POST", *_tamper(c.signed("POST", "/api/chat")))),
    "unknown-key": (401, lambda c, tmp: ("POST", *_sig(c.signed("POST", "/api/chat", key=str(_unknown_key(tmp)[0]))))),
    "ungranted-endpoint": (403, lambda c, tmp: ("POST", *_sig(c.signed("POST", "/api/chat", key="ed25519-b")))),
}


def _sig(signed):
    target, authorization = signed
    return target, {"Authorization": authorization}


def _tamper(signed):
    target, authorization = signed
    return target, {"Authorization": _tampered(authorization)}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_request_shows_the_gates_reason_and_never_reaches_ollama(chain, tmp_path, case):
    expected, build = REFUSALS[case]
    method, target, headers = build(chain, tmp_path)
    status, answer_headers, body = chain.front.request(
        method, target, {**headers, "Content-Type": "application/json"}, b'{"model": "m"}'
    )
    assert status == expected, (status, body)
    assert answer_headers.get("content-type", "").startswith("application/json"), answer_headers
    shown = json.loads(body)
    assert_ollama_error_shape(status, shown)
    # Exactly what the gate says when asked itself, carried through the front server.
    assert chain.gate_direct(method, target, headers) == (expected, shown)
    if case == "unknown-key":
        assert fingerprint(tmp_path / "stranger.pub") in shown["error"], "the message names the unknown key's fingerprint"
    for value in headers.values():
        assert value.split(":")[-1] not in body.decode(), "a signature never appears in an answer"
    chain.assert_nothing_reached_ollama()


@pytest.mark.parametrize("case", ["unsigned", "unknown-key", "ungranted-endpoint"])
def test_a_refusal_on_v1_takes_openais_shape_through_the_front(chain, tmp_path, case):
    """openai-python shows only "Error code: 403" unless the body is OpenAI's error object
    (openai/openai.go NewError); nginx rebuilds the body, Caddy passes the gate's on."""
    expected, build = {**REFUSALS, "unsigned": (401, lambda c, tmp: ("POST", "/v1/chat/completions", {}))}[case]
    method, target, headers = build(chain, tmp_path)
    if case != "unsigned":
        key = str(_unknown_key(tmp_path)[0]) if case == "unknown-key" else "ed25519-b"
        target, authorization = chain.signed("POST", "/v1/chat/completions", key=key)
        headers = {"Authorization": authorization}
    status, _, body = chain.front.request(method, target, {**headers, "Content-Type": "application/json"}, b'{"model": "m"}')
    shown = json.loads(body)
    assert status == expected and set(shown) == {"error"} and shown["error"]["type"] == "api_error", (status, body)
    direct_status, direct = chain.gate_direct(method, target, headers)
    assert (direct_status, direct["error"]["message"]) == (status, shown["error"]["message"])
    # openai-python's e.code: the gate's reason class, which nginx rebuilds from X-Ollama-Reason.
    expected_code = {"unsigned": "unsigned", "unknown-key": "unknown-key", "ungranted-endpoint": "not-granted"}[case]
    assert shown["error"]["code"] == direct["error"]["code"] == expected_code, (shown, direct)
    chain.assert_nothing_reached_ollama()


@pytest.mark.parametrize("family", ["nginx-names", "caddy-names", "ingress-names", "both"])
def test_client_sent_target_headers_cannot_claim_a_granted_path(chain, family):
    """bob holds a valid signature for GET /api/tags and asks for POST /api/chat while
    claiming, in the headers the front server uses for the gate, to ask for /api/tags."""
    granted, authorization = chain.signed("GET", "/api/tags", key="ed25519-b")
    _, chat_ts_query = granted.split("?", 1)
    claim = {}
    if family in ("nginx-names", "both"):
        claim.update({"X-Original-Method": "GET", "X-Original-URI": granted})
    if family in ("caddy-names", "both"):
        claim.update({"X-Forwarded-Method": "GET", "X-Forwarded-Uri": granted})
    if family in ("ingress-names", "both"):
        claim.update({"X-Original-Method": "GET", "X-Original-URL": f"https://{SERVER_NAME}{granted}"})
    status, _, body = chain.front.request(
        "POST", f"/api/chat?{chat_ts_query}", {"Authorization": authorization, **claim}, b'{"model": "m"}'
    )
    assert status in (400, 401, 403), (status, body)
    assert_ollama_error_shape(status, json.loads(body))
    chain.assert_nothing_reached_ollama()
    # On the wire to the gate: only the front server's own family, naming the real request
    # (so the refusal does not rest on the gate noticing two families that disagree).
    own, other = (("x-original-method", "x-original-uri"), ("x-forwarded-method", "x-forwarded-uri"))[
        :: 1 if chain.front.name == "nginx" else -1
    ]
    spoofed = [head for head in chain.relay.heads() if head.get("authorization") == [authorization]]
    assert len(spoofed) == 1, chain.relay.heads()
    assert spoofed[0].get(own[0]) == ["POST"] and spoofed[0].get(own[1]) == [f"/api/chat?{chat_ts_query}"], spoofed[0]
    assert other[0] not in spoofed[0] and other[1] not in spoofed[0] and "x-original-url" not in spoofed[0], spoofed[0]
    # The same signature is good for what it signs: the refusal above was the target's.
    assert chain.front.request("GET", granted, {"Authorization": authorization})[0] == 200
    assert chain.ollama.unverified_requests == [("GET", granted)]


@pytest.mark.parametrize("path", ["/api//chat", "/api/./chat", "/api/%63hat", "/api/chat%2F", '/api/chat"x'])
def test_a_non_canonical_target_is_refused_with_the_gates_400(chain, keys, path):
    """Signed as sent, by a key allowed everything: only the target's form can refuse it."""
    target = f"{path}?ts={int(time.time())}"
    headers = {"Authorization": load_identity(str(keys / "ed25519-a")).sign(f"POST,{target}")}
    status, _, body = chain.front.request("POST", target, headers, b"{}")
    shown = json.loads(body)  # valid JSON even when the gate's message quotes the target
    assert status == 400, (status, body)
    assert_ollama_error_shape(status, shown)
    # Caddy reports a raw '"' percent-encoded in X-Forwarded-Uri: the gate refuses that
    # spelling for its own reason, so only the status is the same there.
    assert chain.gate_direct("POST", target, headers)[0] == 400
    chain.assert_nothing_reached_ollama()


def test_with_the_gate_down_nothing_is_forwarded(chain):
    target, authorization = chain.signed("POST", "/api/chat")
    chain.gate.stop()
    status, _, body = chain.front.request("POST", target, {"Authorization": authorization}, b'{"model": "m"}')
    assert status in (500, 502, 503), (status, body)
    chain.assert_nothing_reached_ollama()


# --- ingress-nginx's directives in real nginx (issue 19 item 1) --------------------------------

# The annotations the README gives: the gate's two names, and Authorization, which the
# gate never sends, so ingress-nginx sets it empty and nginx drops it before Ollama.
INGRESS_RESPONSE_HEADERS = ["X-Ollama-User", "X-Ollama-Key", "Authorization"]


@pytest.fixture(params=[None, "GET"], ids=["default", "auth-method-GET"])
def ingress(request, tmp_path, env, keys, authorized_keys, local_ollama):
    gate = Gate(authorized_keys, env)
    relay = Relay(gate.port)
    front = None
    try:
        front = IngressNginx(
            tmp_path / "ingress",
            CertificateAuthority(tmp_path),
            local_ollama.server.server_address[1],
            relay.port,
            INGRESS_RESPONSE_HEADERS,
            auth_method=request.param,
        )
        yield Chain(front, gate, relay, local_ollama, keys)
    finally:
        if front is not None:
            front.stop()
        relay.stop()
        gate.stop()


def test_ingress_nginx_a_client_sent_x_original_uri_cannot_claim_a_granted_path(ingress):
    """bob (granted /api/tags) signs GET /api/tags and asks for GET /api/ps, adding the
    X-Original-URI that ingress-nginx does not set by default (it sends X-Original-URL)."""
    granted, authorization = ingress.signed("GET", "/api/tags", key="ed25519-b")
    ps = "/api/ps?" + granted.split("?", 1)[1]
    status, _, body = ingress.front.request("GET", ps, {"Authorization": authorization, "X-Original-URI": granted})
    assert status in (400, 401, 403, 500), (status, body)
    ingress.assert_nothing_reached_ollama()
    # What the gate was asked, on the wire: ingress-nginx's own URL and method for /api/ps.
    asked = [head for head in ingress.relay.heads() if head.get("authorization") == [authorization]]
    assert len(asked) == 1 and asked[0]["x-original-url"] == [f"https://{ingress.front.base.split('://')[1]}{ps}"], asked
    assert asked[0]["x-original-method"] == ["GET"] and asked[0]["x-sent-from"] == ["nginx-ingress-controller"]
    # The same client-sent header with an honest request: admitted, as bob, without the signature.
    status, _, body = ingress.front.request("GET", granted, {"Authorization": authorization, "X-Original-URI": granted})
    assert status == 200 and json.loads(body)["models"], (status, body)
    seen = ingress.upstream_headers()
    assert seen["x-ollama-user"] == ["bob"] and "authorization" not in seen, seen


def test_ingress_nginx_refuses_and_admits_as_the_gate_decides(ingress, tmp_path):
    target, authorization = ingress.signed("POST", "/api/chat", key="ed25519-b")
    status, _, _ = ingress.front.request(
        "POST", target, {"Authorization": authorization, "X-Ollama-User": "root"}, b'{"model": "m"}'
    )
    assert status == 403
    ingress.assert_nothing_reached_ollama()
    target, authorization = ingress.signed("POST", "/api/chat")
    status, lines = ingress.front.stream(
        "POST", target, {"Authorization": authorization, **FORGED}, b'{"model": "m", "messages": []}'
    )
    assert status == 200 and json.loads(lines[-1][1])["done"]
    seen = ingress.upstream_headers()
    assert seen["x-ollama-user"] == ["alice"] and seen["x-ollama-key"] == [fingerprint(ingress.keys / "ed25519-a.pub")]
    assert "authorization" not in seen
    # names with "_" are dropped (ingress-nginx's enable-underscores-in-headers is false by default)
    assert len(_identity_fields(ingress.ollama.request_headers[-1])) == 2, ingress.ollama.request_headers[-1]


# --- what reaches Ollama at all (issue 19 item 6) ----------------------------------------------

# Every spelling of the gate's names a client can send: nginx drops names with "_";
# Caddy passes them, and Go rewrites their case (X-Ollama_user, X_ollama-User, ...).
FORGED = {
    "x-OLLAMA-user": "root",
    "X-Ollama_User": "root",
    "X_Ollama-User": "root",
    "x_ollama_user": "root",
    "X-OLLAMA-KEY": "SHA256:forged",
    "X-Ollama_Key": "SHA256:forged",
    "X_OLLAMA-key": "SHA256:forged",
    "X_Ollama_Key": "SHA256:forged",
}


def _identity_fields(headers) -> list[tuple[str, str]]:
    """Every field a server reading '_' as '-' (and any case) would take for the gate's names."""
    return [(name, value) for name, value in headers if name.lower().replace("_", "-") in ("x-ollama-user", "x-ollama-key")]


def test_no_client_spelling_of_the_identity_headers_reaches_ollama(chain, keys):
    target, authorization = chain.signed("POST", "/api/chat")
    status, _ = chain.front.stream("POST", target, {"Authorization": authorization, **FORGED}, b'{"model": "m", "messages": []}')
    assert status == 200
    fields = _identity_fields(chain.ollama.request_headers[-1])
    assert sorted((name.lower(), value) for name, value in fields) == [
        ("x-ollama-key", fingerprint(keys / "ed25519-a.pub")),
        ("x-ollama-user", "alice"),
    ], fields


@pytest.fixture(params=sorted(FRONTS))
def bare(request, tmp_path, env, keys, authorized_keys):
    """A front server before the gate and a raw recorder standing in for Ollama."""
    gate = Gate(authorized_keys, env)
    upstream = RawUpstream()
    front = None
    try:
        front = FRONTS[request.param](tmp_path / request.param, CertificateAuthority(tmp_path), upstream.port, gate.port)
        yield front, upstream, gate
    finally:
        if front is not None:
            front.stop()
        upstream.stop()
        gate.stop()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_unsigned_health_check_carries_no_body_and_no_forged_header_to_ollama(bare, framing):
    front, upstream, _ = bare
    secret = b'{"model": "m", "prompt": "carried by an unsigned HEAD"}'
    if framing == "chunked":
        body, extra = iter([secret]), {"Transfer-Encoding": "chunked"}
    else:
        body, extra = secret, {}
    connection = front.connection()
    try:
        connection.request(
            "HEAD",
            "/",
            body=body,
            headers={**FORGED, **extra, "Content-Type": "application/json"},
            encode_chunked=framing == "chunked",
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
    finally:
        connection.close()
    time.sleep(SETTLE + upstream.linger)
    heads = upstream.heads()
    assert len(heads) == 1, upstream.everything()
    line, fields = heads[0]
    assert line.split()[1] == "/", line
    # nothing after the one head: no body, no chunk
    assert upstream.everything().count(b"\r\n\r\n") == 1 and upstream.everything().endswith(b"\r\n\r\n"), upstream.everything()
    names = {name.lower() for name, _ in fields}
    assert not names & {"content-length", "transfer-encoding"}, fields
    assert _identity_fields(fields) in ([], [("X-Ollama-User", "-")]), fields
    assert not any("{" in value for _, value in fields), f"a placeholder reached Ollama: {fields}"


def test_a_signed_heartbeat_and_a_signed_request_carry_no_placeholder(bare, keys):
    front, upstream, _ = bare
    for method, path in (("HEAD", "/"), ("GET", "/api/tags")):
        done = sign_request(method, front.base + path, identity=str(keys / "ed25519-a"))
        target = urlsplit(done.url)
        status, _, _ = front.request(method, f"{target.path}?{target.query}", {"Authorization": done.authorization, **FORGED})
        assert status == 200
    time.sleep(SETTLE + upstream.linger)
    heads = upstream.heads()
    assert [line.split()[1].split("?")[0] for line, _ in heads] == ["/", "/api/tags"], heads
    for _, fields in heads:
        assert not any("{" in value for _, value in fields), f"a placeholder reached Ollama: {fields}"
        assert "authorization" not in {name.lower() for name, _ in fields}
    assert sorted((name.lower(), value) for name, value in _identity_fields(heads[1][1])) == [
        ("x-ollama-key", fingerprint(keys / "ed25519-a.pub")),
        ("x-ollama-user", "alice"),
    ]


# --- when the gate or Ollama does not answer (issue 19 item 10) --------------------------------


def _down_answers(front, signed) -> dict[str, tuple[int, dict]]:
    answers = {}
    for path in ("/api/tags", "/v1/models"):
        target, authorization = signed("GET", path)
        status, headers, body = front.request("GET", target, {"Authorization": authorization})
        assert headers.get("content-type", "").startswith("application/json"), (path, status, headers, body)
        answers[path] = (status, json.loads(body))
    return answers


def _assert_names(answers: dict[str, tuple[int, dict]], cause: str) -> None:
    # Ollama's own shape on /api/ (api/client.go reads "error"; "status" would print it twice),
    # OpenAI's on /v1/ (openai/openai.go NewError: message, type, param, code).
    status, shown = answers["/api/tags"]
    assert status == 502 and set(shown) == {"error"} and cause in shown["error"], answers
    status, shown = answers["/v1/models"]
    assert status == 502 and set(shown) == {"error"} and cause in shown["error"]["message"], answers
    assert shown["error"]["type"] == "api_error" and shown["error"]["param"] is None and shown["error"]["code"] is None


def test_with_the_gate_down_the_answer_names_the_gate_in_each_clients_shape(chain):
    chain.gate.stop()
    _assert_names(_down_answers(chain.front, chain.signed), "authentication gate did not answer")
    chain.assert_nothing_reached_ollama()


@pytest.mark.parametrize("front_name", sorted(FRONTS))
def test_with_ollama_down_the_answer_names_ollama_in_each_clients_shape(tmp_path, env, keys, authorized_keys, front_name):
    gate = Gate(authorized_keys, env)
    front = None
    try:
        dead = free_port()  # nothing listens there
        front = FRONTS[front_name](tmp_path / front_name, CertificateAuthority(tmp_path), dead, gate.port)
        chain = Chain(front, gate, None, None, keys)
        _assert_names(_down_answers(front, chain.signed), "Ollama server behind this front server did not answer")
    finally:
        if front is not None:
            front.stop()
        gate.stop()


@pytest.fixture
def pinned_dns(monkeypatch):
    """SERVER_NAME resolves to 127.0.0.1 in this process (the clients below look it up)."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == SERVER_NAME else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize("front_name", sorted(FRONTS))
def test_the_clients_show_which_hop_is_down(tmp_path, env, keys, authorized_keys, pinned_dns, front_name):
    """ollama-python and openai-python, signing with OllamaAuth, through a front whose
    Ollama is down, then whose gate is down: each exception names the hop."""
    import ssl

    import httpx
    import ollama
    import openai

    from credential_helper.integrations.httpx import OllamaAuth

    gate = Gate(authorized_keys, env)
    front = None
    try:
        front = FRONTS[front_name](tmp_path / front_name, CertificateAuthority(tmp_path), free_port(), gate.port)
        trust = ssl.create_default_context(cafile=str(front.ca_file))

        def shown() -> tuple[str, str]:
            auth = OllamaAuth(api_base=front.base, identity=keys / "ed25519-a")
            with pytest.raises(ollama.ResponseError) as ollama_error:
                ollama.Client(host=front.base, auth=auth, verify=trust, timeout=30).list()
            with httpx.Client(auth=auth, verify=trust, timeout=30) as http, pytest.raises(openai.APIStatusError) as openai_error:
                openai.OpenAI(base_url=f"{front.base}/v1", api_key="unused", http_client=http, max_retries=0).models.list()
            assert ollama_error.value.status_code == 502 and openai_error.value.status_code == 502
            return str(ollama_error.value), str(openai_error.value)

        for text in shown():
            assert "Ollama server behind this front server did not answer" in text, text
        gate.stop()
        for text in shown():
            assert "authentication gate did not answer" in text, text
    finally:
        if front is not None:
            front.stop()
        gate.stop()


# --- from= behind a front: the address is the one the front saw, never the client's claim ---------


@pytest.fixture(params=sorted(FRONTS))
def fronted_from(request, tmp_path, env, keys, local_ollama):
    """alice may call from 127.0.0.1 (the only client address here), bob only from 10.9.9.9;
    the gate trusts the front's X-Forwarded-For (--trusted-front 127.0.0.1/32)."""
    path = tmp_path / "authorized_keys"
    a = (keys / "ed25519-a.pub").read_text().split()
    b = (keys / "ed25519-b.pub").read_text().split()
    path.write_text(f'from="127.0.0.1" {a[0]} {a[1]} alice *\nfrom="10.9.9.9" {b[0]} {b[1]} bob *\n')
    path.chmod(0o600)
    gate = Gate(path, env, "--trusted-front", "127.0.0.1/32")
    relay = Relay(gate.port)
    front = None
    try:
        front = FRONTS[request.param](
            tmp_path / request.param, CertificateAuthority(tmp_path), local_ollama.server.server_address[1], relay.port
        )
        yield Chain(front, gate, relay, local_ollama, keys)
    finally:
        if front is not None:
            front.stop()
        relay.stop()
        gate.stop()


@pytest.mark.parametrize("claim", ["10.9.9.9", "127.0.0.1, 10.9.9.9"])
def test_a_client_sent_x_forwarded_for_cannot_choose_the_from_address(fronted_from, claim):
    """nginx's auth_request copies the client's headers into the auth request: the block
    must set X-Forwarded-For itself, or bob names 10.9.9.9 and is let in."""
    target, authorization = fronted_from.signed("GET", "/api/tags", key="ed25519-b")
    status, _, body = fronted_from.front.request("GET", target, {"Authorization": authorization, "X-Forwarded-For": claim})
    assert status == 403 and json.loads(body)["error"], (status, body)
    fronted_from.assert_nothing_reached_ollama()
    for sent in fronted_from.relay.heads():
        assert sent.get("x-forwarded-for") == ["127.0.0.1"], sent


def test_an_honest_client_at_an_allowed_address_passes_and_ollama_sees_the_front_s_address(fronted_from):
    target, authorization = fronted_from.signed("GET", "/api/tags")
    status, _, body = fronted_from.front.request("GET", target, {"Authorization": authorization, "X-Forwarded-For": "10.9.9.9"})
    assert status == 200 and len(json.loads(body)["models"]) == 2, (status, body)
    # Ollama's gin takes ClientIP() from X-Forwarded-For: the client's claim must not reach it either.
    assert fronted_from.upstream_headers().get("x-forwarded-for") == ["127.0.0.1"], fronted_from.upstream_headers()

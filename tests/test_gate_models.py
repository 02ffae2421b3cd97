"""Issue 22: models=, from=, max-concurrent and expiry-time through a running gate.

The official ``ollama`` and ``openai`` clients make allowed and denied calls through the
gate to a stand-in Ollama; a hostile member's matrix (every endpoint that names a model
x every way of naming one, chunked and compressed bodies, /v1 paths) is refused, and a
recording upstream proves nothing reached it."""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time

import pytest
from conftest import GOLDEN, helper_executable
import serving
from faults import KeepAliveServer
from serving import InProcess

from credential_helper.identity import load_identity
from credential_helper.serve import gate
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.standin import REPLY_WORDS, StandIn

pytestmark = pytest.mark.process  # loopback servers and the installed executable

ALLOWED = "qwen3-coder:480b-cloud"  # the stand-in's models (credential_helper/standin_replies.py MODELS)
DENIED = "gpt-oss:120b-cloud"
RULE = 'models="qwen3-coder:*,small*"'


def key_line(name: str) -> str:
    return " ".join((GOLDEN / "keys" / f"{name}.pub").read_text().split()[:2])


def write_keys(tmp_path, text: str) -> str:
    path = tmp_path / "authorized_keys"
    path.write_text(text)
    os.chmod(path, 0o600)
    return str(path)


class Gate(InProcess):
    """The engine and GatePolicy in this process, toward ``upstream_host``."""

    def __init__(self, keys_path: str, upstream_host: str, **policy) -> None:
        self.log: list[str] = []
        self.policy = gate.GatePolicy(KeyFile(keys_path, self.log.append), 300, upstream_host, **policy)
        super().__init__(self.policy, upstream=upstream_host, timeout=30, log=self.log.append)


@pytest.fixture
def standin():
    ollama = StandIn(verify_signatures=False, chunk_delay=0.01)
    ollama.start()
    yield ollama
    ollama.stop()


@pytest.fixture
def bob_gate(tmp_path, standin):
    path = write_keys(tmp_path, f"{RULE} {key_line('ed25519-b')} bob *\n{key_line('ed25519-a')} alice *\n")
    running = Gate(path, standin.host)
    yield running
    running.close()


def ollama_client(gate_: Gate, keys, key: str = "ed25519-b"):
    import ollama

    from credential_helper.integrations.httpx import OllamaAuth

    return ollama.Client(host=gate_.base, auth=OllamaAuth(identity=keys / key, api_base=gate_.base), timeout=30)


def openai_client(gate_: Gate, keys, key: str = "ed25519-b"):
    import httpx2
    import openai

    from credential_helper.integrations.httpx2 import OllamaAuth

    return openai.OpenAI(
        base_url=f"{gate_.base}/v1",
        api_key="unused",
        max_retries=0,
        timeout=30,
        http_client=httpx2.Client(auth=OllamaAuth(identity=keys / key, api_base=gate_.base)),
    )


# --- the real clients ---------------------------------------------------------------------------


@pytest.mark.interop
def test_the_ollama_client_allowed_and_denied(bob_gate, standin, keys):
    import ollama

    client = ollama_client(bob_gate, keys)
    pieces = [
        part["message"]["content"]
        for part in client.chat(model=ALLOWED, messages=[{"role": "user", "content": "hi"}], stream=True)
    ]
    assert "".join(pieces) == "".join(REPLY_WORDS)
    assert [m.model for m in client.list().models] == [ALLOWED]
    assert [m.model for m in client.ps().models] == [ALLOWED]
    reached = len(standin.request_headers)
    for call in (
        lambda: client.chat(model=DENIED, messages=[{"role": "user", "content": "hi"}]),
        lambda: list(client.chat(model=DENIED, messages=[{"role": "user", "content": "hi"}], stream=True)),
        lambda: client.generate(model=DENIED, prompt="hi"),
        lambda: client.show(DENIED),
        lambda: client.embed(model=DENIED, input="hi"),
        lambda: client.pull(DENIED),
        lambda: client.copy(ALLOWED, DENIED),
        lambda: client.delete(DENIED),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 403 and "line 1" in str(refused.value), str(refused.value)
    assert len(standin.request_headers) == reached  # nothing of the denied calls reached Ollama
    # alice's line has no options: her list is Ollama's own.
    assert len(ollama_client(bob_gate, keys, "ed25519-a").list().models) == 2


@pytest.mark.interop
def test_the_ollama_client_shows_an_allowed_model_without_its_parent(tmp_path, keys):
    # An answer shaped as Ollama's GetModelInfo writes it for a model created FROM another.
    show = {
        "modelfile": f"# FROM {ALLOWED}\n\nFROM /root/.ollama/models/blobs/sha256-1\nSYSTEM hi\n",
        "details": {"parent_model": DENIED, "format": "gguf", "family": "qwen3", "parameter_size": "480B"},
        "model_info": {"general.architecture": "qwen3"},
        "capabilities": ["completion"],
    }
    body = json.dumps(show).encode()

    def respond(head, request_body, index):
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    path = write_keys(tmp_path, f"{RULE} {key_line('ed25519-b')} bob *\n")
    with KeepAliveServer(respond) as ollama_:
        gate_ = Gate(path, ollama_.host)
        try:
            shown = ollama_client(gate_, keys).show(ALLOWED)
        finally:
            gate_.close()
    assert shown.details is not None and shown.details.parent_model == "" and shown.details.family == "qwen3"
    assert shown.modelfile == show["modelfile"] and shown.capabilities == ["completion"]


@pytest.mark.interop
def test_the_openai_client_allowed_and_denied(bob_gate, standin, keys):
    import openai

    client = openai_client(bob_gate, keys)
    completion = client.chat.completions.create(model=ALLOWED, messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content == "".join(REPLY_WORDS)
    stream = client.chat.completions.create(model=ALLOWED, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert [c.choices[0].delta.content for c in stream if c.choices[0].delta.content] == REPLY_WORDS
    assert [model.id for model in client.models.list()] == [ALLOWED]
    reached = len(standin.request_headers)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=DENIED, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=DENIED, messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model=DENIED, input="hi")
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve(DENIED)
    assert len(standin.request_headers) == reached


# --- a hostile member's matrix ----------------------------------------------------------------

BIG = "big"  # denied; "small" is allowed by RULE


def _tricks(field: str) -> dict[str, bytes]:
    """Ways to name the denied model in ``field`` of a JSON body (Go's encoding/json rules)."""
    upper = field.upper()
    folded = field.replace("s", "\u017f").replace("k", "\u212a")  # Unicode folding: ſ is s, K (Kelvin) is k
    escaped = "".join(f"\\u{ord(ch):04x}" for ch in field)
    return {
        "plain": f'{{"{field}":"{BIG}"}}'.encode(),
        "case": f'{{"{field}":"BIG"}}'.encode(),
        "tag": f'{{"{field}":"big:latest"}}'.encode(),
        "host": f'{{"{field}":"registry.ollama.ai/library/big:latest"}}'.encode(),
        "namespace": f'{{"{field}":"library/big"}}'.encode(),
        "spaces-and-local": f'{{"{field}":"  big:local  "}}'.encode(),
        "digest": f'{{"{field}":"big@sha256:{"0" * 64}"}}'.encode(),
        "upper-key": f'{{"{field}":"small","{upper}":"{BIG}"}}'.encode(),
        "duplicate-last-wins": f'{{"{field}":"small","{field}":"{BIG}"}}'.encode(),
        "null-keeps-earlier": f'{{"{field}":"{BIG}","{upper}":null}}'.encode(),
        "escaped-key": f'{{"{field}":"small","{escaped}":"{BIG}"}}'.encode(),
        "folded-key": f'{{"{field}":"small","{folded}":"{BIG}"}}'.encode(),
        "second-object": f'{{"{field}":"{BIG}"}}{{"{field}":"small"}}'.encode(),
    }


# (method, path, field): every endpoint of server/routes.go that names a model, by the body field it reads.
ENDPOINTS = [
    ("POST", "/api/generate", "model"),
    ("POST", "/api/chat", "model"),
    ("POST", "/api/embed", "model"),
    ("POST", "/api/embeddings", "model"),
    ("POST", "/api/show", "model"),
    ("POST", "/api/show", "name"),
    ("POST", "/api/pull", "model"),
    ("POST", "/api/pull", "name"),
    ("POST", "/api/push", "model"),
    ("POST", "/api/create", "model"),
    ("POST", "/api/create", "from"),
    ("POST", "/api/copy", "source"),
    ("POST", "/api/copy", "destination"),
    ("DELETE", "/api/delete", "model"),
    ("DELETE", "/api/delete", "name"),
    ("POST", "/v1/chat/completions", "model"),
    ("POST", "/v1/completions", "model"),
    ("POST", "/v1/embeddings", "model"),
    ("POST", "/v1/responses", "model"),
    ("POST", "/v1/messages", "model"),
]


def _body(path: str, field: str, named: bytes) -> bytes:
    """The trick inside an otherwise valid request of that endpoint."""
    extra = {
        "/api/copy": {"source": "small", "destination": "small"},
        "/api/create": {"model": "small", "from": "small"},
        "/v1/messages": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    }.get(path, {})
    prefix = json.dumps(extra)[1:-1]
    if not prefix:
        return named
    return b"{" + prefix.encode() + b"," + named[1:]


MATRIX = [(method, path, field, trick) for method, path, field in ENDPOINTS for trick in _tricks(field)]


def sign(keys, method: str, path: str, key: str = "ed25519-b") -> tuple[str, str]:
    target = f"{path}{'&' if '?' in path else '?'}ts={int(time.time())}"
    return target, load_identity(str(keys / key)).sign(f"{method},{target}")


def send(port: int, method: str, target: str, authorization: str, body: bytes, extra: str = "", chunked: bool = False) -> bytes:
    if chunked:
        framed = (
            b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        )
        framing = "Transfer-Encoding: chunked\r\n"
    else:
        framed, framing = body, f"Content-Length: {len(body)}\r\n"
    data = (
        f"{method} {target} HTTP/1.1\r\nHost: box\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\n"
        f"{framing}{extra}Connection: close\r\n\r\n"
    ).encode() + framed
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError:
            pass
    return received


@pytest.fixture(scope="module")
def matrix_gate(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    path = write_keys(tmp, f"{RULE} {key_line('ed25519-b')} bob *\n")
    recorder = KeepAliveServer(lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").__enter__()
    running = Gate(path, recorder.host)
    yield running, recorder
    running.close()
    recorder.__exit__(None, None, None)


@pytest.fixture(scope="module")
def module_keys(tmp_path_factory):
    import shutil

    directory = tmp_path_factory.mktemp("keys")
    for name in ("ed25519-a", "ed25519-b"):
        shutil.copy(GOLDEN / "keys" / name, directory / name)
        os.chmod(directory / name, 0o600)
    return directory


@pytest.mark.parametrize("method, path, field, trick", MATRIX, ids=[f"{m} {p} {f} {t}" for m, p, f, t in MATRIX])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_every_way_to_name_a_denied_model_is_refused_and_nothing_reaches_ollama(
    matrix_gate, module_keys, method, path, field, trick, framing
):
    gate_, recorder = matrix_gate
    before = len(recorder.requests)
    body = _body(path, field, _tricks(field)[trick])
    target, authorization = sign(module_keys, method, path)
    reply = send(gate_.port, method, target, authorization, body, chunked=framing == "chunked")
    status = reply.split(b" ", 2)[1]
    assert status in (b"400", b"403"), (reply[:300], body)
    assert len(recorder.requests) == before


@pytest.mark.parametrize("method, path, field", ENDPOINTS, ids=[f"{m} {p} {f}" for m, p, f in ENDPOINTS])
def test_the_same_endpoints_naming_an_allowed_model_reach_ollama(matrix_gate, module_keys, method, path, field):
    """The control: the matrix is refused for its model, not because every request is."""
    gate_, recorder = matrix_gate
    before = len(recorder.requests)
    body = _body(path, field, f'{{"{field}":"small"}}'.encode())
    target, authorization = sign(module_keys, method, path)
    reply = send(gate_.port, method, target, authorization, body)
    assert reply.startswith(b"HTTP/1.1 200 "), (reply[:300], body)
    ((_, head, forwarded),) = recorder.requests[before:]
    assert forwarded == body and f"content-length: {len(body)}".encode() in head.lower()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "x-gzip", "identity, gzip"])
def test_a_compressed_body_is_refused_whatever_it_names(matrix_gate, module_keys, encoding):
    gate_, recorder = matrix_gate
    before = len(recorder.requests)
    target, authorization = sign(module_keys, "POST", "/api/chat")
    reply = send(
        gate_.port, "POST", target, authorization, gzip.compress(b'{"model":"small"}'), extra=f"Content-Encoding: {encoding}\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400 ") and len(recorder.requests) == before


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/v1/models/big"),
        ("GET", "/v1/models/library%2fbig"),
        ("DELETE", "/v1/models/big"),
        ("POST", "/api/unknown"),
        ("GET", "/api/chat"),
        ("POST", "/v1/audio/transcriptions?model=big"),
    ],
)
def test_paths_that_name_a_model_or_that_the_gate_does_not_know(matrix_gate, module_keys, method, path):
    gate_, recorder = matrix_gate
    before = len(recorder.requests)
    target, authorization = sign(module_keys, method, path)
    reply = send(gate_.port, method, target, authorization, b"")
    assert reply.split(b" ", 2)[1] in (b"400", b"403"), reply[:300]
    assert len(recorder.requests) == before


def test_a_model_in_the_query_of_a_json_endpoint_is_what_ollama_ignores(matrix_gate, module_keys):
    """/api/generate binds its body only (gin ShouldBindJSON): the gate reads the same, in both directions."""
    gate_, recorder = matrix_gate
    for query, body, status in (("model=big", b'{"model":"small"}', b"200"), ("model=small", b'{"model":"big"}', b"403")):
        before = len(recorder.requests)
        target, authorization = sign(module_keys, "POST", f"/api/generate?{query}")
        reply = send(gate_.port, "POST", target, authorization, body)
        assert reply.split(b" ", 2)[1] == status, reply[:300]
        assert len(recorder.requests) == before + (status == b"200")


def test_an_oversized_body_is_413_and_nothing_reaches_ollama(tmp_path, module_keys):
    path = write_keys(tmp_path, f"{RULE} {key_line('ed25519-b')} bob *\n")
    with KeepAliveServer(lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") as recorder:
        running = Gate(path, recorder.host, max_body=1000)
        try:
            target, authorization = sign(module_keys, "POST", "/api/chat")
            body = b'{"model":"small","prompt":"' + b"x" * 2000 + b'"}'
            for chunked in (False, True):
                reply = send(running.port, "POST", target, authorization, body, chunked=chunked)
                assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
            assert recorder.requests == []
        finally:
            running.close()


# --- max-concurrent, from=, expiry-time through a running gate -------------------------------------


def test_max_concurrent_refuses_the_next_request_with_429_until_one_ends(tmp_path, module_keys):
    release = threading.Event()

    def slow(head: bytes, body: bytes, index: int) -> bytes:
        release.wait(10)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    path = write_keys(tmp_path, f"max-concurrent=1 {key_line('ed25519-b')} bob *\n")
    with KeepAliveServer(slow) as upstream:
        running = Gate(path, upstream.host)
        try:
            results: list[bytes] = []
            target, authorization = sign(module_keys, "GET", "/api/tags")
            first = threading.Thread(target=lambda: results.append(send(running.port, "GET", target, authorization, b"")))
            first.start()
            deadline = time.monotonic() + 5
            while not upstream.requests and time.monotonic() < deadline:
                time.sleep(0.02)
            target, authorization = sign(module_keys, "GET", "/api/tags")
            second = send(running.port, "GET", target, authorization, b"")
            assert second.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: 1\r\n" in second and b"max-concurrent=1" in second
            release.set()
            first.join(10)
            assert results[0].startswith(b"HTTP/1.1 200 ")
            target, authorization = sign(module_keys, "GET", "/api/tags")
            assert send(running.port, "GET", target, authorization, b"").startswith(b"HTTP/1.1 200 ")
        finally:
            release.set()
            running.close()


@pytest.mark.parametrize(
    "rule, status",
    [
        ('from="127.0.0.0/8"', b"200"),
        ('from="10.0.0.0/8"', b"403"),
        ('from="!127.0.0.1,*"', b"403"),
        ('expiry-time="20200101"', b"403"),
        ('expiry-time="29991231235959Z"', b"200"),
    ],
)
def test_from_and_expiry_through_the_running_gate(tmp_path, module_keys, rule, status):
    path = write_keys(tmp_path, f"{rule} {key_line('ed25519-b')} bob *\n")
    with KeepAliveServer(lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}") as recorder:
        running = Gate(path, recorder.host)
        try:
            target, authorization = sign(module_keys, "GET", "/api/tags")
            reply = send(running.port, "GET", target, authorization, b"", extra="X-Forwarded-For: 10.1.2.3\r\n")
            assert reply.split(b" ", 2)[1] == status, reply[:300]
            assert len(recorder.requests) == (1 if status == b"200" else 0)
            if b"expiry" in rule.encode() and status == b"403":
                assert b"expired at 2020-01-01" in reply
        finally:
            running.close()


# --- --auth-only at start -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, args, code",
    [
        ('models="small"', [], 3),
        ("max-concurrent=2", [], 3),
        ('from="10.0.0.0/8"', [], 3),
        ('from="10.0.0.0/8"', ["--trusted-front", "127.0.0.1"], None),
        ('expiry-time="29991231"', [], None),
        ('from="10.0.0.0/8"', ["--trusted-front", "not-an-address"], 2),
    ],
)
def test_auth_only_refuses_to_start_with_lines_it_cannot_enforce(tmp_path, env, rule, args, code):
    path = write_keys(tmp_path, f"{rule} {key_line('ed25519-b')} bob *\n")
    arguments = ("gate", "--auth-only", "--authorized-keys", path, *args)
    if code is None:
        with serving.running(*arguments, env=env, expect="listening on ") as started:
            first = started.first_line
            assert first.startswith("listening on "), first
    else:
        with pytest.raises(serving.DidNotListen) as refused:
            serving.start(*arguments, env=env, expect="listening on ")
        lines = refused.value.lines  # all it printed: one line
        assert refused.value.returncode == code, lines
        assert len(lines) == 1 and (code == 2 or "line 1" in lines[0]), lines


@pytest.mark.parametrize(
    "rule, why, not_why",
    [
        ('models="small"', "carries no body", "answer end"),
        ("max-concurrent=2", "never sees an answer end", "carries no body"),
    ],
)
def test_auth_only_says_why_each_option_needs_reverse_proxy_mode_and_what_to_do(tmp_path, env, rule, why, not_why):
    import subprocess

    path = write_keys(tmp_path, f"{rule} {key_line('ed25519-b')} bob *\n")
    result = subprocess.run(
        [*helper_executable(), "gate", "--auth-only", "--listen", "127.0.0.1:0", "--authorized-keys", path],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3 and rule.split("=")[0] + "=" in result.stderr, result.stderr
    assert why in result.stderr and not_why not in result.stderr and "without --auth-only" in result.stderr, result.stderr


def _refusal(tmp_path, env, text: str) -> str:
    import subprocess

    path = write_keys(tmp_path, text)
    result = subprocess.run(
        [*helper_executable(), "gate", "--auth-only", "--listen", "127.0.0.1:0", "--authorized-keys", path],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3 and result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_auth_only_names_every_line_it_cannot_enforce_with_its_reason(tmp_path, env):
    # Break caught: only the first line was named, then "(and 2 more line(s))": a user fixed
    # line 1, restarted, and learned of line 3 only then.
    bob = key_line("ed25519-b")
    stderr = _refusal(
        tmp_path,
        env,
        f'models="small" {bob} bob *\n{bob} fine *\nmax-concurrent=2 {bob} carol *\n\nfrom="10.0.0.0/8" {bob} dave *\n',
    )
    assert "3 line(s) it cannot enforce" in stderr, stderr
    assert "line 1: models= cannot be enforced" in stderr and "carries no body" in stderr, stderr
    assert "line 3: max-concurrent= cannot be enforced" in stderr and "never sees an answer end" in stderr, stderr
    assert "line 5: from= needs --trusted-front" in stderr and "line 2" not in stderr and "more line" not in stderr, stderr


def test_auth_only_names_at_most_twenty_lines_then_how_many_more(tmp_path, env):
    bob = key_line("ed25519-b")
    stderr = _refusal(tmp_path, env, "".join(f'models="small" {bob} user{n} *\n' for n in range(1, 26)))
    named = [n for n in range(1, 26) if f"line {n}: " in stderr]
    assert named == list(range(1, 21)) and "25 line(s) it cannot enforce" in stderr, stderr
    assert stderr.rstrip().endswith("| and 5 more line(s)"), stderr


def _multipart(model: str, query_model: str | None = None) -> tuple[bytes, str]:
    boundary = "gateboundary7"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        f"RIFF....\r\n--{boundary}--\r\n"
    ).encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("model, status", [("big", b"403"), ("BIG:latest", b"403"), ("small", b"200")])
def test_an_audio_transcription_names_its_model_in_a_multipart_field(matrix_gate, module_keys, model, status):
    gate_, recorder = matrix_gate
    before = len(recorder.requests)
    body, content_type = _multipart(model)
    target, authorization = sign(module_keys, "POST", "/v1/audio/transcriptions")
    data = (
        f"POST {target} HTTP/1.1\r\nHost: box\r\nAuthorization: {authorization}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", gate_.port), timeout=10) as sock:
        sock.sendall(data)
        reply = sock.recv(65536)
    assert reply.split(b" ", 2)[1] == status, reply[:300]
    assert len(recorder.requests) == before + (1 if status == b"200" else 0)


def test_trusted_front_is_for_auth_only(tmp_path, env):
    import subprocess

    path = write_keys(tmp_path, f"{key_line('ed25519-b')} bob *\n")
    done = subprocess.run(
        [*helper_executable(), "gate", "--listen", "127.0.0.1:0", "--authorized-keys", path, "--trusted-front", "127.0.0.1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--auth-only" in done.stderr and done.stderr.count("\n") == 1


def test_a_line_auth_only_cannot_enforce_that_arrives_in_a_reload_grants_nothing_and_says_so(tmp_path, env, module_keys):
    path = write_keys(tmp_path, f"{key_line('ed25519-b')} bob *\n")
    with serving.running("gate", "--auth-only", "--authorized-keys", path, env=env) as started:
        port = started.port

        def ask() -> bytes:
            target, authorization = sign(module_keys, "POST", "/api/chat")
            data = (
                f"GET /_gate HTTP/1.1\r\nHost: gate\r\nAuthorization: {authorization}\r\nX-Original-Method: POST\r\n"
                f"X-Original-URI: {target}\r\nConnection: close\r\n\r\n"
            ).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(data)
                return sock.recv(65536)

        assert ask().startswith(b"HTTP/1.1 204 ")
        time.sleep(1.1)  # another second: the reload is seen by mtime as well as by size
        with open(path, "w") as handle:
            handle.write(f'models="small" {key_line("ed25519-b")} bob *\n')
        time.sleep(2.5)  # past the racy window of a fresh write
        assert ask().startswith(b"HTTP/1.1 403 ")
        log = started.stop()
    assert any("line 1: models= cannot be enforced with --auth-only" in line and "grants nothing" in line for line in log), log


# --- Ollama's own Go client (api/client.go do and stream) ---------------------------------------

HARNESS = os.environ.get("OLLAMA_CLIENT_HARNESS", "")


@pytest.mark.interop
@pytest.mark.skipif(
    not os.path.exists(HARNESS or "/nonexistent"),
    reason="set OLLAMA_CLIENT_HARNESS to a harness built by golden/ollama-client-harness/build.sh (needs Go and an Ollama checkout)",
)
@pytest.mark.parametrize(
    "call, method, path, model, allowed",
    [
        ("do", "POST", "/api/show", "small", True),
        ("do", "POST", "/api/show", "big", False),
        ("stream", "POST", "/api/chat", "small", True),
        ("stream", "POST", "/api/chat", "big", False),
        ("stream", "POST", "/api/pull", "registry.ollama.ai/library/BIG:latest", False),
        ("do", "DELETE", "/api/delete", "big", False),
    ],
)
def test_ollamas_own_go_client_allowed_and_denied(tmp_path, call, method, path, model, allowed):
    """What Ollama's CLI prints (api/client.go do/stream, types.go Error(), built from Ollama
    fb30760 by the harness) for a models= refusal: the rule, and nothing reached Ollama."""
    import subprocess

    keys_path = write_keys(tmp_path, f"{RULE} {key_line('ed25519-b')} bob *\n")
    with KeepAliveServer(
        lambda head, body, index: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ) as recorder:
        running = Gate(keys_path, recorder.host)
        try:
            env = {
                "PATH": os.environ["PATH"],
                "OLLAMA_HOST": running.base,
                "HOME": "/nonexistent",
                "OLLAMA_AUTH": "1",
                "HARNESS_KEY": str(GOLDEN / "keys" / "ed25519-b"),
            }
            done = subprocess.run(
                [HARNESS, call, method, path, json.dumps({"model": model})],
                env=env,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            )
            printed = json.loads(done.stdout)["printed"]
        finally:
            running.close()
    if allowed:
        assert printed == "" and len(recorder.requests) == 1
    else:
        assert recorder.requests == []
        assert "may not use the model" in printed and "line 1 allows models=" in printed, printed

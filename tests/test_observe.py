"""Issue 19 items 7 and 9, and Date: the operator's log names who and why (text and
``--log-format json``), never a signature, ``ts`` or query value; start-up
failures are one line with an exit code from the error tree; our own answers
carry ``Date`` (RFC 9110 6.6.1)."""

from __future__ import annotations

import email.utils
import json
import os
import socket
import subprocess
import time

import pytest
from conftest import GOLDEN, helper_executable

from credential_helper.errors import EXIT_NETWORK, EXIT_USAGE, InputError, ListenError
from credential_helper.identity import load_identity
from credential_helper.serve import gate, record, server
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.standin import StandIn
import serving
from serving import InProcess

pytestmark = pytest.mark.process  # every test here opens sockets or starts the executable

FINGERPRINT_A = "SHA256:gt1PrHph2b7/AcPLzcXtYtCpWnx8wNxrqQkE1Cxovow"  # ssh-keygen -l -f golden/keys/ed25519-a.pub
FINGERPRINT_B = "SHA256:tqUkysFYibEa6QQRyzLLqIHEiSmNVge3Hw5EyAMqe8M"
LINE_A = " ".join((GOLDEN / "keys" / "ed25519-a.pub").read_text().split()[:2])


class Gate(InProcess):
    """The engine and GatePolicy in this process; its records, written both ways."""

    def __init__(
        self, tmp_path, upstream_host: str, clock=time.time, options: str = "", endpoints: str = "/api/tags,/api/chat"
    ) -> None:
        path = tmp_path / "authorized_keys"
        line = " ".join((GOLDEN / "keys" / "ed25519-b.pub").read_text().split()[:2])
        path.write_text(f"{options} {line} bob {endpoints}\n".lstrip())
        os.chmod(path, 0o600)
        self.text: list[str] = []
        self.json: list[str] = []
        self.records: list[record.Record] = []
        observe = record.fan_out(record.Logger(self.text.append), record.Logger(self.json.append, "json"), self.records.append)
        self.policy = policy = gate.GatePolicy(KeyFile(str(path), lambda line: None), 300, upstream_host, clock=clock)
        super().__init__(policy, upstream=upstream_host, timeout=5, log=self.text.append, observe=observe, count_usage=True)

    def send(self, method: str, target: str, authorization: str | None = None, body: bytes = b"", fields: str = "") -> bytes:
        auth = f"Authorization: {authorization}\r\n{fields}" if authorization else fields
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(
                f"{method} {target} HTTP/1.1\r\nHost: box\r\n{auth}Content-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data


@pytest.fixture
def ollama():
    stand_in = StandIn(chunk_delay=0.0, verify_signatures=False)
    stand_in.start()
    yield stand_in
    stand_in.stop()


def signed(keys, name: str, method: str, path: str, ts: int | None = None, query: str = "") -> tuple[str, str]:
    target = f"{path}?{query}ts={int(time.time()) if ts is None else ts}"
    return target, load_identity(str(keys / name)).sign(f"{method},{target}")


def test_every_log_line_names_the_caller_and_the_refusals_reason_and_never_a_secret(tmp_path, keys, ollama):
    gate_ = Gate(tmp_path, ollama.host)
    secrets = []
    try:

        def send(name, method, path, ts=None, tamper=False, expect=None):
            target, authorization = signed(keys, name, method, path, ts, query="secret=hunter2&")
            if tamper:
                authorization = authorization[:-8] + ("A" if authorization[-8] != "A" else "B") + authorization[-7:]
            secrets.extend([authorization.split(":")[1], target.rsplit("ts=", 1)[1]])
            reply = gate_.send(method, target, authorization)
            assert reply.startswith(f"HTTP/1.1 {expect} ".encode()), reply
            replies.append(reply)

        replies: list[bytes] = [gate_.send("GET", "/api/tags?secret=hunter2")]  # unsigned
        send("ed25519-a", "GET", "/api/tags", expect=401)  # a valid signature by an unknown key
        send("ed25519-b", "GET", "/api/ps", expect=403)  # not granted
        send("ed25519-b", "GET", "/api/tags", ts=int(time.time()) - 900, expect=401)  # stale
        send("ed25519-b", "GET", "/api/tags", tamper=True, expect=401)  # bad signature
        send("ed25519-b", "POST", "/api/chat", expect=200)
        time.sleep(0.2)
    finally:
        gate_.close()
    text, shown = gate_.text, [json.loads(line) for line in gate_.json]
    assert [(entry["status"], entry["user"], entry["key"], entry["reason"]) for entry in shown] == [
        (401, None, None, "unsigned"),
        (401, None, FINGERPRINT_A, "unknown-key"),
        (403, "bob", FINGERPRINT_B, "not-granted"),
        (401, "bob", FINGERPRINT_B, "stale"),
        (401, None, None, "bad-signature"),
        (200, "bob", FINGERPRINT_B, None),
    ], shown
    assert text[0].startswith("GET /api/tags 401 ") and text[0].endswith(" refused unsigned")
    # The operator gets the unknown key's fingerprint and the line that would admit it.
    assert (
        text[1].startswith("GET /api/tags 401 ")
        and f" {FINGERPRINT_A} refused unknown-key (to admit it add: {LINE_A} <name> /api/tags)" in text[1]
    )
    assert (
        " bob refused not-granted" in text[2] and " bob refused stale" in text[3] and text[4].endswith(" refused bad-signature")
    )
    assert text[5].startswith("POST /api/chat 200 ") and text[5].endswith(" bob")
    # The client reads the same class in X-Ollama-Reason; Ollama's own answer (relayed) carries none.
    assert [reason_header(reply) for reply in replies] == [
        "unsigned",
        "unknown-key",
        "not-granted",
        "stale",
        "bad-signature",
        None,
    ]
    for entry in shown:
        assert {"time", "method", "path", "status", "bytes", "ms", "user", "key", "reason"} <= set(entry)
        assert entry["path"] in ("/api/tags", "/api/ps", "/api/chat") and entry["time"].endswith("Z")
    for line in text + gate_.json:
        assert "hunter2" not in line and "secret" not in line and "ts=" not in line and "?" not in line, line
        for value in secrets:
            assert value not in line, line


def reason_header(reply: bytes) -> str | None:
    """The X-Ollama-Reason of a raw answer (one at most), else None."""
    lines = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    found = [value.strip() for name, value in (line.split(":", 1) for line in lines) if name.lower() == "x-ollama-reason"]
    assert len(found) <= 1, reply
    return found[0] if found else None


def test_a_502_and_a_504_name_their_cause_in_the_log(tmp_path, keys):
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    gate_ = Gate(tmp_path, f"127.0.0.1:{closed}")
    try:
        target, authorization = signed(keys, "ed25519-b", "GET", "/api/tags")
        reply = gate_.send("GET", target, authorization)
        assert reply.startswith(b"HTTP/1.1 502 ") and reason_header(reply) == "upstream", reply
        time.sleep(0.1)
    finally:
        gate_.close()
    assert (
        gate_.text[0].startswith("GET /api/tags 502 ") and " bob failed upstream (cannot connect to 127.0.0.1:" in gate_.text[0]
    )
    assert "connection refused" in gate_.text[0]
    entry = json.loads(gate_.json[0])
    assert entry["reason"] == "upstream" and "connection refused" in entry["detail"]
    assert gate_.records[0].upstream_failure == "connect"


# docs/api.md "Generate a completion" (ollama/ollama fb30760): a streamed object, then the final one.
API_MD_STREAM = (
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","response":"The","done":false}\n'
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"context":[1,2,3],'
    b'"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":26,"prompt_eval_duration":130079000,'
    b'"eval_count":259,"eval_duration":4232710000}\n'
)


def test_the_json_line_carries_the_token_counts_of_ollamas_final_object(tmp_path, keys):
    from faults import KeepAliveServer

    def respond(head, body, index):
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in API_MD_STREAM.splitlines(keepends=True))
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )

    with KeepAliveServer(respond) as ollama_:
        gate_ = Gate(tmp_path, ollama_.host)
        try:
            target, authorization = signed(keys, "ed25519-b", "POST", "/api/chat")
            assert gate_.send("POST", target, authorization, b'{"model": "llama3.2"}').startswith(b"HTTP/1.1 200 ")
            time.sleep(0.1)
        finally:
            gate_.close()
    entry = json.loads(gate_.json[0])
    assert (entry["prompt_tokens"], entry["completion_tokens"], entry["model"], entry["user"]) == (26, 259, "llama3.2", "bob")


def _refusals_logged(tmp_path, keys, options: str, requests) -> list[tuple[bytes, dict, str]]:
    """(status, JSON line, text line) of each (method, path, query, body, fields) through a gate whose line has ``options``."""
    gate_ = Gate(tmp_path, "127.0.0.1:9", options=options, endpoints="*")  # nothing may reach an upstream
    replies = []
    try:
        for method, path, query, body, fields in requests:
            target, authorization = signed(keys, "ed25519-b", method, path, query=query)
            replies.append(gate_.send(method, target, authorization, body, fields).split(b" ", 2)[1])
        time.sleep(0.1)
    finally:
        gate_.close()
    assert len(gate_.json) == len(requests), gate_.json
    return [(status, json.loads(line), text) for status, line, text in zip(replies, gate_.json, gate_.text)]


def test_a_model_refusal_logs_the_model_it_refused(tmp_path, keys):
    # Break caught: the engine's refusal record without the answer's model (the JSON line said
    # "model": null, so a log shipper could not tell which model a key was denied).
    logged = _refusals_logged(
        tmp_path,
        keys,
        'models="small*"',
        [
            ("POST", "/api/chat", "", b'{"model": "Big:7b", "messages": []}', ""),
            ("POST", "/api/copy", "", b'{"source": "small", "destination": "big"}', ""),  # the denied one of two
            ("POST", "/v1/chat/completions", "", b'{"model": "big"}', ""),
        ],
    )
    assert [(status, entry["reason"], entry["model"]) for status, entry, _ in logged] == [
        (b"403", "model", "big:7b"),
        (b"403", "model", "big:latest"),
        (b"403", "model", "big:latest"),
    ]
    assert all(entry["user"] == "bob" and "ts=" not in json.dumps(entry) for _, entry, _ in logged)


def test_a_concurrency_refusal_after_the_model_was_read_logs_it(tmp_path, keys):
    gate_ = Gate(tmp_path, "127.0.0.1:9", options='models="small*",max-concurrent="1"', endpoints="*")
    try:
        held = gate_.policy.in_flight.take(FINGERPRINT_B, 1)  # a request of bob's still streaming
        target, authorization = signed(keys, "ed25519-b", "POST", "/api/chat")
        assert gate_.send("POST", target, authorization, b'{"model": "small"}').startswith(b"HTTP/1.1 429 ")
        assert held is not None
        held()
        time.sleep(0.1)
    finally:
        gate_.close()
    entry = json.loads(gate_.json[0])
    assert (entry["status"], entry["reason"], entry["model"]) == (429, "concurrency", "small:latest")


def test_a_model_read_from_the_query_is_never_logged(tmp_path, keys):
    # /v1/audio/transcriptions takes its model from the query too (net/http ParseMultipartForm): a query
    # value, which no log line holds (record.py).
    boundary = "b0undary"
    form = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n--{boundary}--\r\n'
    fields = f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
    [(status, entry, text)] = _refusals_logged(
        tmp_path, keys, 'models="small*"', [("POST", "/v1/audio/transcriptions", "model=bigsecret&", form.encode(), fields)]
    )
    assert (status, entry["reason"], entry["model"]) == (b"403", "model", None)
    assert "bigsecret" not in json.dumps(entry) and "bigsecret" not in text


def test_the_gates_and_the_proxys_own_answers_carry_date(tmp_path):
    gate_ = Gate(tmp_path, "127.0.0.1:9")
    try:
        reply = gate_.send("GET", "/api/tags")
    finally:
        gate_.close()
    head = dict(line.split(": ", 1) for line in reply.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:])
    sent = email.utils.parsedate_to_datetime(head["Date"])
    assert head["Date"].endswith(" GMT") and abs(sent.timestamp() - time.time()) < 5


# --- start-up failures -----------------------------------------------------------------------


def run_helper(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*helper_executable(), *args], check=False, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )


@pytest.mark.parametrize("command", ["gate", "proxy"])
def test_a_port_in_use_is_one_line_and_a_network_exit_code(command, tmp_path, keys):
    keys_path = tmp_path / "authorized_keys"
    keys_path.write_text("")
    os.chmod(keys_path, 0o600)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        extra = (
            ["--authorized-keys", str(keys_path)]
            if command == "gate"
            else ["--no-local-token", "--upstream", "http://127.0.0.1:9", "--identity", str(keys / "ed25519-a")]
        )
        result = run_helper(command, "--listen", f"127.0.0.1:{port}", *extra)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert result.returncode == EXIT_NETWORK == ListenError.exit_code, result
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}: the port is in use" in lines[0], result.stderr
    assert "internal error" not in result.stderr and "report it" not in result.stderr


def test_an_address_this_machine_lacks_and_a_host_that_does_not_resolve():
    with pytest.raises(ListenError, match="this machine has no such address"):
        server.listening_socket(("192.0.2.1", 0))  # TEST-NET-1 (RFC 5737): never local
    with pytest.raises(InputError, match="not an address or a host name"):
        server.listening_socket(("no-such-host.invalid", 0))
    assert InputError.exit_code == EXIT_USAGE


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind privileged ports")
def test_a_privileged_port_is_one_line():
    with pytest.raises(ListenError, match="permission denied"):
        server.listening_socket(("127.0.0.1", 1))


def test_the_gate_writes_json_lines_from_the_command_line(tmp_path, keys, ollama):
    keys_path = tmp_path / "authorized_keys"
    keys_path.write_text(" ".join((GOLDEN / "keys" / "ed25519-b.pub").read_text().split()[:2]) + " bob *\n")
    os.chmod(keys_path, 0o600)
    with serving.running(
        "gate",
        "--log-format",
        "json",
        "--upstream",
        ollama.base_url,
        "--authorized-keys",
        str(keys_path),
        expect="listening on http://127.0.0.1:",
    ) as started:
        assert json.loads(started.first_line)["message"].startswith("listening on http://127.0.0.1:")
        target, authorization = signed(keys, "ed25519-b", "GET", "/api/tags")
        with socket.create_connection(("127.0.0.1", started.port), timeout=10) as sock:
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: box\r\nAuthorization: {authorization}\r\nConnection: close\r\n\r\n".encode()
            )
            while sock.recv(65536):
                pass
        entry = json.loads(started.next_line())
        started.stop()
    assert (entry["method"], entry["path"], entry["status"], entry["user"], entry["key"], entry["reason"]) == (
        "GET",
        "/api/tags",
        200,
        "bob",
        FINGERPRINT_B,
        None,
    )
    assert entry["bytes"] > 0 and entry["ms"] >= 0


def test_the_proxy_writes_json_lines_too(keys, tmp_path):
    from faults import KeepAliveServer

    def respond(head, body, index):
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    with KeepAliveServer(respond) as upstream:
        with serving.running(
            "proxy",
            "--log-format",
            "json",
            "--no-local-token",
            "--upstream",
            f"http://{upstream.host}",
            "--identity",
            str(keys / "ed25519-b"),
            env=env,
            expect="listening on http://127.0.0.1:",
        ) as started:
            assert json.loads(started.first_line)["message"].startswith("listening on http://127.0.0.1:")
            port = started.port
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(
                    f"GET /api/tags?secret=hunter2 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
                )
                while sock.recv(65536):
                    pass
            lines = []
            while not any('"method"' in line for line in lines):
                lines.append(started.next_line())
            started.stop()
    shown = [json.loads(line) for line in lines]  # every line is one JSON object, warnings included
    entry = shown[-1]
    assert (entry["method"], entry["path"], entry["status"], entry["bytes"], entry["reason"]) == (
        "GET",
        "/api/tags",
        200,
        2,
        None,
    )
    assert "hunter2" not in "".join(lines)

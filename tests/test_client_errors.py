"""Issue 19 item 8: each client shows why the gate or the proxy refused, in its
own words, proven with the clients themselves:

- Ollama's own Go client (api/client.go ``do``/``stream``, api/types.go ``Error()``):
  what it printed against the gate is recorded in golden/ollama_client.json (see
  golden/ollama-client-harness/record.py; Go is not needed to run this test). The
  gate must still send those exact answers, and the printed text must say why,
  once;
- ollama-python (``ResponseError``) and openai-python (``APIStatusError``), run here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import time

import pytest
from conftest import GOLDEN
from serving import InProcess

from credential_helper.identity import load_identity

spec = importlib.util.spec_from_file_location("record_harness", GOLDEN / "ollama-client-harness" / "record.py")
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)

pytestmark = pytest.mark.process  # loopback gates; the Python clients' tests are interop

RECORDED = json.loads((GOLDEN / "ollama_client.json").read_text())
FINGERPRINT_A = "SHA256:gt1PrHph2b7/AcPLzcXtYtCpWnx8wNxrqQkE1Cxovow"  # ssh-keygen -l -f golden/keys/ed25519-a.pub


def exchange(port: int, method: str, target: str, authorization: str | None, body: str | None) -> str:
    payload = (body or "").encode()
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    if authorization is not None:
        head += f"Authorization: {authorization}\r\n"
    if body is not None:
        head += f"Content-Length: {len(payload)}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n" + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode("latin-1")


def varying(text: str) -> str:
    """What differs between runs: ports, and the stale cases' skew (1000 s give or take one)."""
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", re.sub(r"\b1\d{3} s behind", "N s behind", text))


@pytest.fixture
def keys_path(tmp_path):
    return harness.keys_file(tmp_path)


@pytest.mark.parametrize("name", sorted(RECORDED["cases"]))
def test_the_gate_still_sends_what_ollamas_go_client_was_recorded_printing_and_it_says_why(keys_path, keys, name):
    case = RECORDED["cases"][name]
    serving = harness.start_gate(keys_path, case["gate"], RECORDED["skew"])
    try:
        # As api/client.go builds it: the path, ?ts=now, signed over "METHOD,path?ts=now".
        target = f"{case['path']}?ts={int(time.time())}"
        authorization = load_identity(str(keys / case["key"])).sign(f"{case['method']},{target}") if case["key"] else None
        answer = exchange(serving.address[1], case["method"], target, authorization, case["body"])
    finally:
        serving.stop_accepting()
        serving.close()
    head, _, payload = answer.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == case["status_line"]
    names = sorted(line.split(":", 1)[0].lower() for line in lines[1:])
    assert [name for name in names if name != "connection"] == sorted(n for n in case["header_names"] if n != "connection")
    assert varying(payload) == varying(case["payload"])

    printed, status = case["printed"], int(case["status_line"].split()[1])
    message = json.loads(case["payload"])["error"]
    why = {
        "unsigned": "OLLAMA_AUTH=1",
        "unknown-key": FINGERPRINT_A,
        "not-granted": "is not granted",
        "stale": "sync",
        "upstream-down": "cannot connect",
    }[name.rsplit("-", 1)[0]]
    assert why in printed, printed
    # Never the message twice (api/types.go StatusError prints "status: error").
    assert printed.count(message) <= 1 and printed.count(why) == 1, printed
    if case["call"] == "stream" and status == 401:
        # api/client.go stream: an AuthorizationError holds only response.Status.
        assert printed == case["status_line"].split(" ", 1)[1]


def test_the_recorded_cases_came_from_ollamas_own_client():
    assert "api/client.go" in RECORDED["provenance"] and "fb30760" in RECORDED["provenance"]
    types = {case["error_type"] for case in RECORDED["cases"].values()}
    assert types == {"api.AuthorizationError", "api.StatusError"}


# --- the Python clients ---------------------------------------------------------------------


@pytest.fixture
def gate_port(keys_path):
    serving = harness.start_gate(keys_path, "normal")
    yield serving.address[1]
    serving.stop_accepting()
    serving.close()


@pytest.mark.interop
def test_ollama_python_shows_the_gates_reason(gate_port, keys):
    import ollama

    from credential_helper.integrations.httpx import OllamaAuth

    base = f"http://127.0.0.1:{gate_port}"
    with pytest.raises(ollama.ResponseError) as unsigned:
        ollama.Client(host=base, timeout=10).list()
    assert unsigned.value.status_code == 401 and "OLLAMA_AUTH=1" in str(unsigned.value)
    stranger = ollama.Client(host=base, auth=OllamaAuth(identity=keys / "ed25519-a", api_base=base), timeout=10)
    with pytest.raises(ollama.ResponseError) as unknown:
        stranger.list()
    assert FINGERPRINT_A in str(unknown.value) and "ssh-ed25519 AAAA" in str(unknown.value)
    bob = ollama.Client(host=base, auth=OllamaAuth(identity=keys / "ed25519-b", api_base=base), timeout=10)
    with pytest.raises(ollama.ResponseError) as denied:
        bob.ps()
    assert denied.value.status_code == 403 and "(bob) is not granted /api/ps" in str(denied.value)
    assert str(denied.value).count("is not granted") == 1


@pytest.mark.interop
def test_openai_python_shows_the_gates_reason_and_its_class(gate_port, keys):
    import httpx
    import openai

    from credential_helper.integrations.httpx import OllamaAuth

    base = f"http://127.0.0.1:{gate_port}"
    unsigned = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError) as refused:
        unsigned.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "OLLAMA_AUTH=1" in refused.value.message and refused.value.code == "unsigned" and refused.value.type == "api_error"
    bob = openai.OpenAI(
        base_url=f"{base}/v1",
        api_key="unused",
        max_retries=0,
        timeout=10,
        http_client=httpx.Client(auth=OllamaAuth(identity=keys / "ed25519-b", api_base=base)),
    )
    with pytest.raises(openai.PermissionDeniedError) as denied:
        bob.models.list()
    assert "(bob) is not granted /v1/models" in str(denied.value) and denied.value.code == "not-granted"


@pytest.mark.interop
def test_openai_python_shows_the_proxys_reason(tmp_path, monkeypatch):
    """The proxy's own answers on /v1 take the same shape (a wrong local token here)."""
    import openai

    from credential_helper.serve import sign
    from credential_helper.serve.messages import Answer

    class Refusing:
        def decide(self, head):
            return Answer(401, "missing or wrong local access token", reason="token")

    with InProcess(Refusing(), log=lambda line: None) as serving:
        client = openai.OpenAI(base_url=f"{serving.base}/v1", api_key="wrong", max_retries=0, timeout=10)
        with pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
        assert "local access token" in refused.value.message and refused.value.code == "token"
    assert sign.SigningPolicy  # the proxy's policy answers with messages.Answer, shaped the same way

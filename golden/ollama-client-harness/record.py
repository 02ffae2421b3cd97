"""Records what Ollama's own client prints for the gate's refusals: golden/ollama_client.json.

    golden/ollama-client-harness/build.sh /path/to/ollama.git /tmp/oh
    .venv/bin/python golden/ollama-client-harness/record.py /tmp/oh/harness

For each case a gate runs in this process (the project's engine and GatePolicy),
a relay between it and the harness keeps every byte the gate sent, and the
harness (Ollama's api/client.go ``do`` or ``stream``, unmodified) prints its
error's ``Error()``: what ``ollama`` shows the user. tests/test_ollama_client.py
replays each case against the gate and checks the answer is byte for byte the one
recorded (so the client would print the same), and that the printed text says why.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
GOLDEN = ROOT / "golden"

from credential_helper import protocol
from credential_helper.serve import gate, server
from credential_helper.serve.limits import Limits
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.serve.upstream import Upstream

SKEW = 1000  # the stale cases' gate clock runs this far ahead
# name: (key file or None for unsigned, call, method, path, body, gate: "normal" | "skewed" | "down")
CASES = {
    "unsigned-do": (None, "do", "GET", "/api/tags", None, "normal"),
    "unsigned-stream": (None, "stream", "POST", "/api/chat", '{"model":"m"}', "normal"),
    "unknown-key-do": ("ed25519-a", "do", "GET", "/api/tags", None, "normal"),
    "unknown-key-stream": ("ed25519-a", "stream", "POST", "/api/chat", '{"model":"m"}', "normal"),
    "not-granted-do": ("ed25519-b", "do", "GET", "/api/ps", None, "normal"),
    "not-granted-stream": ("ed25519-b", "stream", "POST", "/api/pull", '{"model":"m"}', "normal"),
    "stale-do": ("ed25519-b", "do", "GET", "/api/tags", None, "skewed"),
    "stale-stream": ("ed25519-b", "stream", "POST", "/api/chat", '{"model":"m"}', "skewed"),
    "upstream-down-do": ("ed25519-b", "do", "GET", "/api/tags", None, "down"),
    "upstream-down-stream": ("ed25519-b", "stream", "POST", "/api/chat", '{"model":"m"}', "down"),
}


def keys_file(directory: Path) -> str:
    line = " ".join((GOLDEN / "keys" / "ed25519-b.pub").read_text().split()[:2])
    path = directory / "authorized_keys"
    path.write_text(f"{line} bob /api/tags,/api/chat\n")
    os.chmod(path, 0o600)
    return str(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gate(keys_path: str, kind: str, skew: float = SKEW):
    upstream_host = f"127.0.0.1:{closed_port()}"  # every admitted request fails: 502 (never reached here otherwise)
    clock = (lambda: time.time() + skew) if kind == "skewed" else time.time
    upstream = Upstream(protocol.URL("http", upstream_host, "", ""), 5, environ={})
    policy = gate.GatePolicy(KeyFile(keys_path, lambda line: None), 300, upstream_host, clock=clock)
    serving = server.Server(("127.0.0.1", 0), policy, upstream=upstream, log=lambda line: None, limits=Limits(upstream=5))
    threading.Thread(target=serving.serve_forever, daemon=True).start()
    return serving


class Relay:
    """One port in front of the gate that keeps what the gate sends back."""

    def __init__(self, port: int) -> None:
        self.port, self.sent = port, bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.sent), daemon=True).start()

    @staticmethod
    def _pump(source, sink, keep) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def run_case(harness: str, keys_path: str, case) -> dict:
    key, call, method, path, body, kind = case
    serving = start_gate(keys_path, kind)
    relay = Relay(serving.address[1])
    env = {"PATH": os.environ["PATH"], "OLLAMA_HOST": f"http://127.0.0.1:{relay.address}", "HOME": "/nonexistent"}
    if key is not None:
        env.update(OLLAMA_AUTH="1", HARNESS_KEY=str(GOLDEN / "keys" / key))
    args = [harness, call, method, path] + ([body] if body else [])
    printed = json.loads(subprocess.run(args, env=env, capture_output=True, text=True, check=True, timeout=30).stdout)
    time.sleep(0.2)
    answer = bytes(relay.sent).decode("latin-1")
    head, _, payload = answer.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = [line.split(":", 1)[0].lower() for line in lines[1:]]
    serving.stop_accepting()
    serving.close()
    return {
        "key": key,
        "call": call,
        "method": method,
        "path": path,
        "body": body,
        "gate": kind,
        "status_line": lines[0],
        "header_names": headers,
        "payload": payload,
        "printed": printed["printed"],
        "error_type": printed["type"],
    }


def main() -> None:
    import tempfile

    harness = sys.argv[1]
    commit = (Path(harness).parent / "COMMIT").read_text().strip()
    with tempfile.TemporaryDirectory() as directory:
        keys_path = keys_file(Path(directory))
        cases = {name: run_case(harness, keys_path, case) for name, case in CASES.items()}
    out = {
        "provenance": f"Printed by Ollama's own api/client.go do/stream and api/types.go Error() (ollama/ollama "
        f"{commit}, copied verbatim by golden/ollama-client-harness/extract.go, built with "
        f"Go 1.19) against this project's gate, {time.strftime('%Y-%m-%d', time.gmtime())}; "
        f"stale cases: gate clock {SKEW} s ahead; keys: golden/keys.",
        "skew": SKEW,
        "cases": cases,
    }
    (GOLDEN / "ollama_client.json").write_text(json.dumps(out, indent=1) + "\n")
    for name, case in cases.items():
        print(f"{name}: {case['status_line']!r} -> {case['printed']!r}")


if __name__ == "__main__":
    main()

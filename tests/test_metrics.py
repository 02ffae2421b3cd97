"""Issue 22 item 3: ``gate --metrics-listen``: Prometheus' text format at /metrics
with fixed names, bounded labels (unknown keys in one bucket, endpoints from
Ollama's routes), token counts; scraped by Debian's real ``prometheus``."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
import urllib.request

import pytest
from conftest import GOLDEN
import serving
from test_observe import API_MD_STREAM, FINGERPRINT_A, signed

from credential_helper.errors import InputError, ListenError
from credential_helper.serve import commands, metrics, record


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus' text format (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(key) == value for key, value in labels.items()):
                return found.value
    return None


def test_records_become_the_named_metrics_with_bounded_labels():
    from prometheus_client import generate_latest

    seen = metrics.Metrics()
    base = {"time": 0.0, "method": "POST", "bytes": 10, "ms": 12.0}
    seen(
        record.Record(
            path="/api/chat",
            status=200,
            user="bob",
            key="SHA256:b",
            model="llama3.2",
            prompt_tokens=26,
            completion_tokens=259,
            **base,
        )
    )
    for number in range(50):  # fifty strangers, fifty made-up paths: one bucket, one "other"
        seen(record.Record(path=f"/x/{number}", status=401, key=f"SHA256:{number}", reason="unknown-key", **base))
    seen(record.Record(path="/api/tags", status=502, user="bob", reason="upstream", upstream_failure="connect", **base))
    seen(record.Record(path="/api/blobs/sha256:abc", status=403, user="bob", reason="not-granted", **base))
    seen(record.Record(path="/api/tags", status=401, reason="made-up", **base))
    seen.flight("bob", +1)
    text = generate_latest(seen.registry).decode()
    assert sample(text, "ollama_gate_requests_total", user="bob", endpoint="/api/chat", status="200") == 1
    assert sample(text, "ollama_gate_requests_total", user="-", endpoint="other", status="401") == 50
    assert sample(text, "ollama_gate_requests_total", user="bob", endpoint="/api/blobs/*", status="403") == 1
    assert sample(text, "ollama_gate_refusals_total", reason="unknown-key") == 50
    assert sample(text, "ollama_gate_refusals_total", reason="other") == 1
    assert sample(text, "ollama_gate_refusals_total", reason="upstream") == 1
    assert sample(text, "ollama_gate_upstream_failures_total", cause="connect") == 1
    assert sample(text, "ollama_gate_in_flight", user="bob") == 1
    assert sample(text, "ollama_gate_tokens_total", user="bob", model="llama3.2", kind="prompt") == 26
    assert sample(text, "ollama_gate_tokens_total", user="bob", model="llama3.2", kind="completion") == 259
    assert sample(text, "ollama_gate_request_duration_seconds_count") == 54
    assert sample(text, "ollama_gate_response_bytes_total", user="bob") == 30
    assert "SHA256:" not in text  # never a fingerprint as a label: no way to grow the label set
    users = {line.split('user="')[1].split('"')[0] for line in text.splitlines() if 'user="' in line}
    assert users == {"bob", "-"}


def test_model_labels_stop_growing_at_the_cap():
    seen = metrics.Metrics()
    for number in range(metrics.MAX_MODELS + 20):
        seen(
            record.Record(
                time=0,
                method="POST",
                path="/api/chat",
                status=200,
                bytes=1,
                ms=1,
                user="bob",
                model=f"m{number}",
                prompt_tokens=1,
                completion_tokens=1,
            )
        )
    labels = {
        labels["model"]
        for family in seen.registry.collect()
        if family.name == "ollama_gate_tokens"
        for _, labels, *_ in [(s.name, s.labels) for s in family.samples]
    }
    assert len(labels) == metrics.MAX_MODELS + 1 and "other" in labels


def test_metrics_listen_is_loopback_unless_public_is_said():
    with pytest.raises(InputError, match="--metrics-public"):
        commands.parse_listen("0.0.0.0:9464", 0, loopback_only=True, option="--metrics-listen", why="--metrics-public")


@pytest.mark.process
def test_a_metrics_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(ListenError, match="--metrics-listen: cannot listen on 127.0.0.1:.*in use"):
            metrics.Metrics().serve(("127.0.0.1", taken.getsockname()[1]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def metered_gate(tmp_path, keys):
    with running_metered_gate(tmp_path, keys) as ports:
        yield ports


@contextlib.contextmanager
def running_metered_gate(tmp_path, keys):
    """The installed gate with --metrics-listen, in front of an upstream that answers
    /api/chat with docs/api.md's stream; bob has made one chat and a stranger one call."""
    from faults import KeepAliveServer

    def respond(head, body, index):
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % len(API_MD_STREAM)
        ) + API_MD_STREAM

    path = tmp_path / "authorized_keys"
    path.write_text(" ".join((GOLDEN / "keys" / "ed25519-b.pub").read_text().split()[:2]) + " bob /api/chat\n")
    os.chmod(path, 0o600)
    metrics_port = free_port()
    with KeepAliveServer(respond) as upstream:
        with serving.running(
            "gate",
            "--upstream",
            f"http://{upstream.host}",
            "--authorized-keys",
            str(path),
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            expect="listening on http://127.0.0.1:",
        ) as started:
            port = started.port
            assert f"metrics at http://127.0.0.1:{metrics_port}/metrics" in started.next_line()
            for name, path_ in (("ed25519-b", "/api/chat"), ("ed25519-a", "/api/chat")):
                target, authorization = signed(keys, name, "POST", path_)
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(
                        f"POST {target} HTTP/1.1\r\nHost: box\r\nAuthorization: {authorization}\r\n"
                        f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode()
                    )
                    while sock.recv(65536):
                        pass
            yield port, metrics_port
            started.stop()


@pytest.mark.process
def test_the_gate_serves_its_metrics(metered_gate):
    _, metrics_port = metered_gate
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = answer.read().decode()
    assert sample(text, "ollama_gate_requests_total", user="bob", endpoint="/api/chat", status="200") == 1
    assert sample(text, "ollama_gate_requests_total", user="-", endpoint="/api/chat", status="401") == 1
    assert sample(text, "ollama_gate_refusals_total", reason="unknown-key") == 1
    assert sample(text, "ollama_gate_tokens_total", user="bob", model="llama3.2", kind="completion") == 259
    assert sample(text, "ollama_gate_in_flight", user="bob") == 0
    assert FINGERPRINT_A not in text

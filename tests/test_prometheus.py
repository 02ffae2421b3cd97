"""Issue 22's proof with real software: Debian's ``prometheus`` (started here on
loopback) scrapes ``gate --metrics-listen`` with the README's scrape configuration
and sees bob's token counts. .ci/run installs the package; without it the test skips."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from test_metrics import free_port, running_metered_gate


@pytest.fixture
def metered_gate(tmp_path, keys):
    with running_metered_gate(tmp_path, keys) as ports:
        yield ports


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's prometheus is not installed (.ci/run installs it)")
def test_debians_prometheus_scrapes_the_gate(metered_gate, tmp_path):
    _, metrics_port = metered_gate
    web = free_port()
    config = tmp_path / "prometheus.yml"
    # The README's scrape configuration, with this test's port and a short interval.
    config.write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ollama-gate\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        query = urllib.parse.quote('ollama_gate_tokens_total{user="bob",kind="prompt"}')
        deadline, found = time.monotonic() + 60, None
        while time.monotonic() < deadline and not found:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/query?query={query}", timeout=5) as answer:
                    found = json.load(answer)["data"]["result"]
            except OSError:
                continue
        assert found and found[0]["value"][1] == "26", found
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/targets", timeout=5) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        assert targets[0]["health"] == "up", targets
    finally:
        process.terminate()
        process.wait(timeout=20)

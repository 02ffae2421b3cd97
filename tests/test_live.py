"""Opt-in checks against the real ollama.com (OLLAMA_LIVE_TESTS=1).

They need network access and a key linked to an account (``ollama signin`` or
``ollama-credential-helper key --generate`` and the connect page). Everywhere
else they are skipped, visibly. With ``--record`` each test saves a transcript
under golden/live/ in which every token and signature is replaced by its length
and SHA-256, so it can be committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import GOLDEN, helper_executable

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.environ.get("OLLAMA_LIVE_TESTS") != "1", reason="live test: set OLLAMA_LIVE_TESTS=1 (needs network and a linked key)"
    ),
]

REGISTRY = "registry.ollama.ai"
PUBLIC_MODEL = os.environ.get("OLLAMA_LIVE_MODEL", "library/gemma3")


def redacted(secret: str) -> dict:
    return {"length": len(secret), "sha256": hashlib.sha256(secret.encode()).hexdigest()}


class Transcript:
    def __init__(self, request, name: str) -> None:
        self.enabled = request.config.getoption("--record")
        self.name = name
        self.steps: list[dict] = []

    def add(self, **step) -> None:
        self.steps.append(step)

    def save(self) -> None:
        if not self.enabled:
            return
        directory = GOLDEN / "live"
        directory.mkdir(exist_ok=True)
        record = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": self.steps}
        (directory / f"{self.name}.json").write_text(json.dumps(record, indent=2) + "\n")


def helper(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "OLLAMA_API_KEY"}  # prove the key, not an API key
    return subprocess.run([*helper_executable(), *args], input=stdin, capture_output=True, text=True, env=environment, timeout=60)


def test_live_whoami_names_the_linked_account(request):
    transcript = Transcript(request, "whoami")
    signed = helper("sign", "POST", "https://ollama.com/api/me")
    assert signed.returncode == 0, signed.stderr
    transcript.add(
        step="sign",
        url=json.loads(signed.stdout)["url"].split("?")[0],
        authorization=redacted(json.loads(signed.stdout)["authorization"]),
    )
    result = helper("whoami", "--json")
    assert result.returncode == 0, f"whoami failed (is the key linked?): {result.stderr}"
    account = json.loads(result.stdout)
    assert account["name"]
    transcript.add(step="whoami", status=0, fields=sorted(k for k, v in account.items() if v), name=redacted(account["name"]))
    transcript.save()


def test_live_registry_pull_with_a_bearer_token(request):
    transcript = Transcript(request, "registry-pull")
    url = f"https://{REGISTRY}/v2/{PUBLIC_MODEL}/manifests/latest"
    accept = "application/vnd.docker.distribution.manifest.v2+json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as response:
            pytest.skip(f"{REGISTRY} answered {response.status} without credentials: no challenge to answer")
    except urllib.error.HTTPError as err:
        assert err.code == 401, err
        challenge = err.headers["WWW-Authenticate"]
    transcript.add(step="anonymous GET", status=401, challenge=challenge)
    got = helper("get", "--no-cache", "--host", REGISTRY, stdin=challenge)
    assert got.returncode == 0, got.stderr
    token = json.loads(got.stdout)["token"]
    transcript.add(step="get", source=json.loads(got.stdout)["source"], token=redacted(token))
    request_with_token = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": accept})
    with urllib.request.urlopen(request_with_token, timeout=30) as response:
        manifest = json.loads(response.read())
        transcript.add(step="GET with Bearer", status=response.status, manifest_keys=sorted(manifest))
    assert "layers" in manifest
    transcript.save()

"""Issue 20: the installed CLI, proxy and gate with the package seeing Windows or macOS
(and, as the baseline, Linux as it is).

tests/platform_surface.py derives from typeshed what each system lacks and hides
it from the package (fcntl, os.O_NONBLOCK, os.getuid, select.poll, signal.SIGHUP...
on Windows; epoll and /proc on macOS). Each test starts the real executable in a
subprocess under that simulation: help, sign, whoami, get; the proxy started,
serving, stopped (Ctrl+C, and Ctrl+Break on Windows); the gate started, serving,
reloading its changed key file with no SIGHUP, stopped.

Break caught (issue 20's proof): class Posix back at module level with
``os.O_NONBLOCK`` in its body fails every win32 case at import
("module 'os' has no attribute 'O_NONBLOCK' (win32, simulated)").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import serving
from conftest import GOLDEN, helper_executable
from platform_surface import sitecustomize
from credential_helper.identity import load_identity
from credential_helper.standin import StandIn

# linux: no simulation, the same steps on the system they really run on (the smoke
# run .ci/matrix makes on every Python).
PLATFORMS = ["linux", "win32", "darwin"]
LISTENING = "listening on http://127.0.0.1:"
pytestmark = pytest.mark.process  # every case starts the installed executable


@pytest.fixture(params=PLATFORMS)
def simulated(request, env, tmp_path):
    environment = dict(env, XDG_CONFIG_HOME=str(tmp_path / "config"))
    if request.param == "linux":
        return request.param, environment
    directory = tmp_path / f"simulation-{request.param}"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(sitecustomize(request.param))
    environment["PYTHONPATH"] = str(directory)
    if request.param == "win32":
        environment.update(LOCALAPPDATA=str(tmp_path / "AppData" / "Local"), APPDATA=str(tmp_path / "AppData" / "Roaming"))
    return request.param, environment


def helper(args: list[str], environment: dict, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*helper_executable(), *args], input=stdin, env=environment, capture_output=True, text=True, timeout=60)


def stop(running: serving.Running, sig: int) -> str:
    log = "\n".join(running.stop(sig))
    assert running.returncode == 0 and "Traceback" not in log and log.rstrip().endswith("stopped"), log
    return log


def test_the_simulation_hides_what_typeshed_says_is_missing(simulated):
    platform, environment = simulated
    probe = (
        "import json, os, credential_helper.system as s\n"
        "names = ['O_NONBLOCK', 'getuid', 'fchmod', 'O_NOFOLLOW', 'O_DIRECT', 'pipe2']\n"
        "try:\n    s.os.listdir('/proc')\n    proc = True\nexcept FileNotFoundError:\n    proc = False\n"
        "print(json.dumps([s.current.name, [n for n in names if hasattr(s.os, n)], s.selector_class().__name__,"
        " s.selector_capacity(), proc, hasattr(os, 'O_NONBLOCK')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True).stdout
    # The last field: the rest of the process keeps Linux's os.
    if platform == "win32":  # os.fchmod came to Windows in Python 3.13 (typeshed says so too)
        windows_has = ["fchmod"] if sys.version_info >= (3, 13) else []
        # One select() watches every connection there: FD_SETSIZE (512) bounds it.
        assert json.loads(out) == ["windows", windows_has, "SelectSelector", 512, True, True]
    elif platform == "linux":
        assert json.loads(out) == [
            "posix",
            ["O_NONBLOCK", "getuid", "fchmod", "O_NOFOLLOW", "O_DIRECT", "pipe2"],
            "EpollSelector",
            None,
            True,
            True,
        ]
    else:  # macOS has the first four, not Linux's O_DIRECT or pipe2, nor /proc; kqueue is
        # not Linux's, so the simulation's DefaultSelector is poll (tests/platform_surface.py)
        assert json.loads(out) == ["posix", ["O_NONBLOCK", "getuid", "fchmod", "O_NOFOLLOW"], "PollSelector", None, False, True]


def test_cli_help_sign_whoami_get(simulated, standin):
    _, environment = simulated
    assert helper(["--help"], environment).returncode == 0
    signed = helper(["sign", "POST", "https://ollama.com/api/chat"], environment)
    assert signed.returncode == 0 and signed.stderr == "", signed
    assert json.loads(signed.stdout)["authorization"].startswith("AAAAC3NzaC1lZDI1NTE5")
    who = helper(["whoami"], dict(environment, OLLAMA_CLOUD_BASE_URL=standin.base_url))
    assert who.returncode == 0 and who.stdout.strip() == "jdoe <jdoe@example.com>, plan pro", who
    challenge = json.dumps({"realm": f"{standin.base_url}/token", "service": "ollama.com", "scope": "repository:library/x:pull"})
    first, second = helper(["get"], environment, challenge), helper(["get"], environment, challenge)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first
    assert json.loads(first.stdout)["token"] == json.loads(second.stdout)["token"] and standin.exchanges == 1


def stop_signals(platform: str) -> list[int]:
    # Windows: Ctrl+C (SIGINT) and Ctrl+Break (SIGBREAK, 21; SIGTERM is never delivered there).
    return [signal.SIGINT, 21] if platform == "win32" else [signal.SIGINT, signal.SIGTERM]


@pytest.mark.parametrize("which", [0, 1], ids=["ctrl-c", "other-stop-signal"])
def test_proxy_starts_serves_and_stops(simulated, standin, start_serving, which):
    platform, environment = simulated
    proxy = start_serving("proxy", "--upstream", standin.base_url, env=environment, expect=LISTENING)
    port = proxy.port
    try:
        printed = helper(["proxy", "--print-env"], environment).stdout
        token = dict(line[len("export ") :].split("=", 1) for line in printed.splitlines())["OPENAI_API_KEY"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/me", data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
    finally:
        if proxy.returncode is None:
            stop(proxy, stop_signals(platform)[which])
    assert len(standin.signed_requests) == 1


def test_gate_serves_reloads_its_changed_key_file_and_stops(simulated, tmp_path, keys, start_serving):
    platform, environment = simulated
    lines = [
        " ".join((GOLDEN / "keys" / f"ed25519-{k}.pub").read_text().split()[:2] + [name, "*"]) + "\n"
        for k, name in (("a", "alice"), ("b", "bob"))
    ]
    path = tmp_path / "authorized_keys"
    path.write_text(lines[0])
    os.chmod(path, 0o600)
    with StandIn(verify_signatures=False) as ollama:
        gate = start_serving(
            "gate", "--upstream", ollama.base_url, "--authorized-keys", str(path), env=environment, expect=LISTENING
        )
        port = gate.port
        try:

            def ask(name: str) -> int:
                target = f"/api/tags?ts={int(time.time())}"
                authorization = load_identity(str(keys / f"ed25519-{name}")).sign(f"GET,{target}")
                request = urllib.request.Request(f"http://127.0.0.1:{port}{target}", headers={"Authorization": authorization})
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        return response.status
                except urllib.error.HTTPError as error:
                    return error.code

            assert (ask("a"), ask("b")) == (200, 401)
            path.write_text(lines[0] + lines[1])  # no SIGHUP on Windows: the change itself reloads
            # A file changed a moment ago is read once it has settled (keyfile.RACY_NS).
            deadline = time.monotonic() + 10
            while ask("b") != 200:
                assert time.monotonic() < deadline, "the changed key file was never reloaded"
                time.sleep(0.2)
        finally:
            log = stop(gate, stop_signals(platform)[0]) if gate.returncode is None else "\n".join(gate.stop())
    assert any(line.startswith("reloaded ") for line in log.splitlines()), log

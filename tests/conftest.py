"""Shared fixtures: golden assets, private copies of the test keys, a loopback
stand-in server, and a runner for the *installed* executable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from credential_helper.standin import StandIn

import serving
from serving import helper_executable  # also imported from here by many test files

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
KEY_NAMES = [
    "ed25519-a",
    "ed25519-b",
    "ed25519-a.pkcs8.pem",
    "ed25519-encrypted",
    "rsa-2048",
    "ecdsa-p256",
    "garbage",
    "truncated",
]


def asset(name: str) -> Path:
    """A file under golden/ (copied from the independent reference vectors)."""
    return GOLDEN / name


def load_vectors(name: str) -> list[dict]:
    return json.loads(asset(name).read_text())


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """The golden keys copied into a private directory with mode 0600 (git keeps 0644)."""
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    for name in os.listdir(GOLDEN / "keys"):
        shutil.copy(GOLDEN / "keys" / name, directory / name)
        os.chmod(directory / name, 0o600)
    return directory


@pytest.fixture
def home(tmp_path: Path, keys: Path) -> Path:
    """A $HOME whose ~/.ollama/id_ed25519 is golden key ed25519-a."""
    directory = tmp_path / "home"
    (directory / ".ollama").mkdir(parents=True)
    shutil.copy(keys / "ed25519-a", directory / ".ollama" / "id_ed25519")
    os.chmod(directory / ".ollama" / "id_ed25519", 0o600)
    return directory


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """An environment with that $HOME, a private cache, and no API key."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OLLAMA_API_KEY", "OLLAMA_CLOUD_BASE_URL", "XDG_CACHE_HOME")
    }
    environment["HOME"] = str(home)
    environment["XDG_CACHE_HOME"] = str(home / ".cache")
    return environment


@pytest.fixture
def public_line(keys: Path):
    def read(name: str = "ed25519-a") -> str:
        return (keys / f"{name}.pub").read_text().strip()

    return read


@pytest.fixture
def standin(public_line):
    """The loopback stand-in with ed25519-a linked to account 'jdoe'."""
    server = StandIn()
    server.authorize(public_line("ed25519-a"), name="jdoe", email="jdoe@example.com", plan="pro")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def streaming_standin(public_line):
    """A stand-in whose streamed replies pause 10 ms between chunks, as a model's do."""
    server = StandIn(chunk_delay=0.01)
    server.authorize(public_line("ed25519-a"), name="jdoe")
    server.start()
    yield server
    server.stop()


class Result:
    def __init__(self, completed: subprocess.CompletedProcess) -> None:
        self.code = completed.returncode
        self.out = completed.stdout
        self.err = completed.stderr

    def json(self) -> dict:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def run(env):
    """Run the installed executable with stdin; return code, stdout, stderr."""

    def runner(args: list[str], stdin: str | bytes = "", *, environment: dict | None = None, timeout: float = 60) -> Result:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        completed = subprocess.run(
            [*helper_executable(), *args],
            input=data,
            capture_output=True,
            env=environment if environment is not None else env,
            timeout=timeout,
        )
        completed.stdout = completed.stdout.decode("utf-8", "replace")
        completed.stderr = completed.stderr.decode("utf-8", "replace")
        return Result(completed)

    return runner


def assert_one_line_error(result: Result, code: int) -> None:
    """The failure contract: exit code, empty stdout, one prefixed stderr line."""
    assert result.code == code, result
    assert result.out == "", result
    lines = result.err.splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith("ollama-credential-helper: "), result
    assert "Traceback" not in result.err


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--record",
        action="store_true",
        default=False,
        help="live tests: save redacted transcripts under golden/live/",
    )


# --- tiers (issue 21): unit (socket-free), process, interop ----------------------------------
#
#   pytest -m unit       no socket, no subprocess: the pure rules; runs in seconds
#   pytest -m process    the installed executable and loopback servers
#   pytest -m interop    real third-party software: nginx, Caddy, Prometheus, the
#                        pinned clients, recipes (skips what is not installed)
#
# A test is `interop` when its file is listed below or it says so, `process` when
# it says so or uses a fixture that starts a server or a process, and `unit`
# otherwise. A unit test that opens a socket or starts a process fails (the guard
# below), so the unit tier cannot quietly start needing the network.

INTEROP_FILES = {
    "test_frontends.py",
    "test_recipes.py",
    "test_integrations.py",
    "test_live.py",
    "test_prometheus.py",
    "test_models_go.py",
    "test_go_client.py",
}
PROCESS_FIXTURES = {
    "run",
    "standin",
    "streaming_standin",
    "upstream",
    "start_serving",
    "start_proxy",
    "start_gate",
    "proxy_env",
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.get_closest_marker("interop") or item.path.name in INTEROP_FILES:
            item.add_marker(pytest.mark.interop)
        elif item.get_closest_marker("process") or PROCESS_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.process)
        else:
            item.add_marker(pytest.mark.unit)


class NotAUnitTest(Exception):
    pass


@pytest.fixture(autouse=True)
def _unit_tier_guard(request, monkeypatch):
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    import socket
    import subprocess

    def refuse(*args, **kwargs):
        raise NotAUnitTest(
            f"{request.node.nodeid} opens a socket or starts a process: mark it "
            "@pytest.mark.process (or interop), or keep it socket-free"
        )

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "socketpair", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    yield


# --- a hung test fails, visibly -------------------------------------------------------------
#
# A hang must never run silently into CI's time limit. After TEST_TIME_LIMIT
# seconds a test (setup, call and teardown together) is interrupted with every
# thread's stack in its failure report. If even that cannot interrupt it (a
# wait that ignores signals, a thread that never gives up the GIL), HARD_GRACE
# seconds later faulthandler -- a C thread that needs no GIL -- writes every
# thread's stack to the real standard output and ends the run with status 1.

TEST_TIME_LIMIT = 120.0  # the slowest test takes about 10 s here
HARD_GRACE = 30.0
# A run that is slow everywhere stops (and fails) after this long, so that its
# summary is printed well inside CI's 90 minutes.
RUN_BUDGET = 60 * 60.0
_RUN_STARTED = time.monotonic()


class TestTimedOut(Exception):
    pass


def _all_stacks() -> str:
    import threading
    import traceback

    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f"--- thread {names.get(ident, ident)} ---\n" + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


def pytest_configure(config) -> None:
    # Output capture is suspended while plugins configure: fd 1 is the real stdout here.
    config._watchdog_fd = os.dup(1)


def _arm_last_resort(config, seconds: float) -> None:
    import faulthandler

    # The stacks it writes include the test's own frame, which names the test.
    faulthandler.dump_traceback_later(seconds, exit=True, file=config._watchdog_fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import faulthandler
    import signal
    import threading

    def on_alarm(signum, frame) -> None:
        raise TestTimedOut(f"{item.nodeid} ran past {TEST_TIME_LIMIT:g}s; every thread's stack:\n{_all_stacks()}")

    # Sent to the main thread itself: a process-wide timer signal may land on any
    # of the tests' server threads and leave the main thread blocked in a syscall.
    main = threading.get_ident()
    soft = threading.Timer(TEST_TIME_LIMIT, signal.pthread_kill, (main, signal.SIGALRM))
    soft.daemon = True
    previous = signal.signal(signal.SIGALRM, on_alarm)
    soft.start()
    _arm_last_resort(item.config, TEST_TIME_LIMIT + HARD_GRACE)
    try:
        yield
    finally:
        soft.cancel()
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()
    if time.monotonic() - _RUN_STARTED > RUN_BUDGET:
        item.session.shouldfail = f"the run took more than {RUN_BUDGET / 60:g} minutes; stopped so its summary is printed"


def pytest_unconfigure(config) -> None:
    # Python joins non-daemon and executor threads at exit with no time limit;
    # one stuck thread would hang the finished run until CI's limit.
    _arm_last_resort(config, HARD_GRACE)


# --- the proxy and the gate, as subprocesses of the installed executable -----------------


@pytest.fixture
def upstream(streaming_standin):
    return streaming_standin


@pytest.fixture
def proxy_env(env, tmp_path):
    return dict(env, XDG_CONFIG_HOME=str(tmp_path / "config"))


@pytest.fixture
def start_serving():
    """``serving.start`` whose processes are killed at the end of the test if still running."""
    started: list[serving.Running] = []

    def start(*args: str, **options) -> serving.Running:
        running = serving.start(*args, **options)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


@pytest.fixture
def start_proxy(start_serving, proxy_env):
    """The installed proxy on 127.0.0.1:0 with ``args``; ``token``: its local token, read
    with ``proxy --print-env`` (the way a user reads it)."""

    def start(*args: str, environment: dict | None = None, token: bool = True) -> serving.Running:
        environment = environment or proxy_env
        running = start_serving("proxy", *args, env=environment, expect="listening on http://127.0.0.1:")
        if token:
            printed = subprocess.run(
                [*helper_executable(), "proxy", "--print-env"], env=environment, capture_output=True, text=True, check=True
            ).stdout
            running.token = dict(line[len("export ") :].split("=", 1) for line in printed.splitlines())["OPENAI_API_KEY"]
        return running

    return start


@pytest.fixture
def start_gate(start_serving, env):
    """The installed gate on 127.0.0.1:0 with ``args``."""

    def start(*args: str) -> serving.Running:
        return start_serving("gate", *args, env=env)

    return start


def assert_ollama_error_shape(status: int, body: dict) -> None:
    """What Ollama's Go client prints without doubling (api/client.go checkError, api/types.go):
    a 401 becomes AuthorizationError, which prints only `status`; any other code StatusError,
    which prints `status: error`, so there `error` alone."""
    assert body["error"].strip()
    if status == 401:
        assert set(body) == {"error", "status"} and body["status"] == body["error"], body
    else:
        assert set(body) == {"error"}, body

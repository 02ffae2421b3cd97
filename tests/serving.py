"""The one way tests start the ``proxy`` or the ``gate`` and read what it printed.

``start("gate", "--authorized-keys", path, env=env)`` runs the *installed* executable
with ``--listen 127.0.0.1:0``, reads stderr up to the listening line (``--log-format
json`` too) within a deadline, and returns a :class:`Running`: the URL and port it
printed, every line it printed so far, the process, and ``stop()``. A process that
does not start is killed and the failure quotes all it printed. ``running(...)`` is
the same as a context manager; ``conftest.py``'s ``start_serving``, ``start_proxy``
and ``start_gate`` fixtures kill whatever a test left running.

``InProcess(policy, ...)`` is the engine (``serve/server.Server``) in a thread of the
test's own process, on port 0, for the tests that set its policy or clock themselves.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

STARTUP_DEADLINE = 30.0  # it prints the line in well under a second; room for a loaded machine
READ_DEADLINE = 20.0


def helper_executable() -> list[str]:
    """The console script installed beside this interpreter (never a source checkout)."""
    script = Path(sys.executable).with_name("ollama-credential-helper")
    found = str(script) if script.exists() else shutil.which("ollama-credential-helper")
    assert found, "ollama-credential-helper is not installed in this environment"
    return [found]


def message(line: str) -> str:
    """A printed line's text: with ``--log-format json`` each line is an object whose ``message`` it is."""
    if line.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(line).get("message", line))
    return line


class DidNotListen(AssertionError):
    """The process ended, or the deadline passed, before it printed its listening line."""

    def __init__(self, what: str, lines: list[str], returncode: int | None) -> None:
        self.lines, self.returncode = lines, returncode
        super().__init__(f"{what}; exit code {returncode}; it printed:\n" + "\n".join(lines))


class Running:
    """A started proxy or gate. ``lines`` grows as it prints (stderr, without newlines);
    ``log`` is what it printed after the listening line; ``out`` its stdout."""

    def __init__(self, process: subprocess.Popen, expect: str, deadline: float) -> None:
        self.process = process
        self.lines: list[str] = []
        self.out: list[str] = []
        self.token: str | None = None  # the proxy's local token, when a fixture read it
        self._changed = threading.Condition()
        self._ended = False
        self._readers = [
            threading.Thread(target=self._read, args=(process.stderr, self.lines, True), daemon=True),
            threading.Thread(target=self._read, args=(process.stdout, self.out, False), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            self.first_line = self._first(expect, deadline)
        except DidNotListen:
            self.close()
            raise
        self._cursor = 1  # next_line and wait_for read on from here
        self.base = message(self.first_line).split()[2]
        self.port = int(self.base.rsplit(":", 1)[1].rstrip("/"))
        self.host = self.base.split("://", 1)[1].rstrip("/")  # the Host a client sends

    def _read(self, stream, into: list[str], notify: bool) -> None:
        if stream is None:
            return
        for line in stream:
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()
        if notify:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def _first(self, expect: str, deadline: float) -> str:
        """The first line, which must be the listening line (and start with ``expect``)."""
        with self._changed:
            self._changed.wait_for(lambda: self.lines or self._ended, timeout=deadline)
        if not self.lines:
            why = "before it exited" if self._ended else f"within {deadline:g}s"
            raise DidNotListen(f"printed nothing {why}", [], self.process.wait(5) if self._ended else None)
        first = self.lines[0]
        if not message(first).startswith(expect):
            ended = self._wait_ended(5)  # the rest of what it says, and its exit code
            raise DidNotListen(f"its first line is not {expect!r}...", list(self.lines), self.process.wait(5) if ended else None)
        return first

    def _wait_ended(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._ended, timeout=timeout)

    @property
    def log(self) -> list[str]:
        """What it printed after the listening line."""
        return self.lines[1:]

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def next_line(self, timeout: float = READ_DEADLINE) -> str:
        """The next line it prints (after those already read here)."""
        return self.wait_for(lambda line: True, timeout)

    def wait_for(self, wanted: str | Callable[[str], bool], timeout: float = READ_DEADLINE) -> str:
        """The next line that contains ``wanted`` (or satisfies it); the lines passed over are
        read. Fails, quoting what it printed, if the process ends or ``timeout`` passes first."""
        test = wanted if callable(wanted) else (lambda line: wanted in line)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                while self._cursor < len(self.lines):
                    line = self.lines[self._cursor]
                    self._cursor += 1
                    if test(line):
                        return line
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    why = "it exited" if self._ended else f"{timeout:g}s passed"
                    raise AssertionError(f"waiting for {wanted!r}, {why}; it printed:\n" + "\n".join(self.lines))
                self._changed.wait(left)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> list[str]:
        """Send ``sig`` (if it still runs) and wait for it to exit; past ``timeout`` it is
        killed and that fails. Returns ``log``; ``returncode`` says how it ended."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"still running {timeout:g}s after signal {sig}; killed. It printed:\n" + "\n".join(self.lines))
        self._drain()
        return self.log

    def close(self) -> None:
        """Kill it if it still runs (a test's leftovers: nothing is asserted on them)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._drain()

    def _drain(self) -> None:
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def threads(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            return int(next(line for line in handle if line.startswith("Threads:")).split()[1])


def start(
    *args: str,
    env: dict[str, str] | None = None,
    listen: str | None = "127.0.0.1:0",
    expect: str = "listening on http",
    executable: Sequence[str] | None = None,
    deadline: float = STARTUP_DEADLINE,
) -> Running:
    """Start ``ollama-credential-helper *args --listen LISTEN`` (``args[0]`` is ``proxy`` or
    ``gate``; ``listen=None`` leaves ``--listen`` out). ``env`` None inherits this process's;
    ``executable`` replaces the installed script (a wrapper that runs it, say)."""
    command = [*(executable or helper_executable()), *args, *(("--listen", listen) if listen is not None else ())]
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    try:
        return Running(process, expect, deadline)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        raise


@contextlib.contextmanager
def running(*args: str, **options) -> Iterator[Running]:
    """``start`` as a context manager: what still runs at the end is killed."""
    started = start(*args, **options)
    try:
        yield started
    finally:
        started.close()


# --- the engine in this process ------------------------------------------------------------


class InProcess:
    """``serve/server.Server`` on 127.0.0.1:0 in a thread of this process. ``upstream`` is an
    Upstream, or ``host:port`` for one over plain HTTP; ``timeout`` is its timeout and, without
    ``limits``, ``Limits(upstream=timeout)``; ``log`` defaults to collecting the server's lines
    in ``self.log``; ``options`` go to Server as they are."""

    def __init__(self, policy, *, upstream=None, timeout: float | None = None, limits=None, log=None, **options) -> None:
        from credential_helper import protocol
        from credential_helper.serve import server
        from credential_helper.serve.limits import Limits
        from credential_helper.serve.upstream import Upstream

        if limits is None:
            limits = Limits() if timeout is None else Limits(upstream=timeout)
        if isinstance(upstream, str):
            upstream = Upstream(protocol.URL("http", upstream, "", ""), timeout or limits.upstream, environ={})
        if log is None:
            self.log: list[str] = []
            log = self.log.append
        self.server = server.Server(("127.0.0.1", 0), policy, upstream=upstream, log=log, limits=limits, **options)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.server.address[1]
        self.base = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.stop_accepting()
        self.server.close()
        self.thread.join(2)  # close() ends the loop and waits for it

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- talking to a running proxy ------------------------------------------------------------


def request(proxy: Running, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    headers = dict(headers or {})
    if proxy.token and "Authorization" not in headers and "x-api-key" not in headers:
        headers["Authorization"] = f"Bearer {proxy.token}"
    req = urllib.request.Request(proxy.base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def exchange(port: int, data: bytes, timeout: float = 5, *, reset_ends: bool = True) -> bytes:
    """Send ``data`` on a new loopback connection and read until the server closes it
    (or ``timeout`` passes between reads): everything the server answered. A reset
    ends the read like a close unless ``reset_ends`` is False (then it raises)."""
    ends: tuple[type[BaseException], ...] = (TimeoutError, ConnectionResetError) if reset_ends else (TimeoutError,)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ends:
            pass
    return received


def raw_exchange(proxy: Running, data: bytes, timeout: float = 10) -> bytes:
    return exchange(proxy.port, data, timeout, reset_ends=False)

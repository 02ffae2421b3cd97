"""Running the installed ``proxy`` and ``gate`` as subprocesses, and talking to them."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.error
import urllib.request


class RunningProxy:
    def __init__(self, process: subprocess.Popen, first_line: str, token: str | None) -> None:
        self.process = process
        self.first_line = first_line
        self.base = first_line.split()[2]
        self.port = int(self.base.rsplit(":", 1)[1])
        self.host = f"127.0.0.1:{self.port}"  # the Host a client of the proxy sends
        self.token = token
        self.log: list[str] = []

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.log += self.process.stderr.read().splitlines()
        return code

    def threads(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as handle:
            return int(next(line for line in handle if line.startswith("Threads:")).split()[1])


def request(proxy: RunningProxy, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    headers = dict(headers or {})
    if proxy.token and "Authorization" not in headers and "x-api-key" not in headers:
        headers["Authorization"] = f"Bearer {proxy.token}"
    req = urllib.request.Request(proxy.base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def raw_exchange(proxy: RunningProxy, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)

"""The signing proxy against a direct client, side by side in one run.

    python benchmarks/proxy_bench.py

The upstream is the loopback stand-in (it verifies every signature). "Direct"
is a client that signs each request itself in-process (as a provider using the
Python API would) and talks to the stand-in over a kept-alive connection;
"proxy" is the same request sent through ``ollama-credential-helper proxy``
(the installed executable) over a kept-alive connection. Direct and proxy
requests alternate, so a noisy machine slows both alike.

Prints: added latency (median, p99), time to first chunk of a stream whose
upstream sends a chunk every 50 ms, throughput of small signed requests with
keep-alive, and 64 concurrent streams (intact?) with the proxy's peak RSS.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from credential_helper.client import sign_request
from credential_helper.identity import load_identity
from credential_helper.standin import REPLY_WORDS, StandIn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


class Proxy:
    def __init__(self, upstream: str, env: dict) -> None:
        exe = os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")
        self.process = subprocess.Popen([exe, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream, "--max-concurrency", "256"],
                                        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        first = self.process.stderr.readline()
        self.port = int(first.split()[2].rsplit(":", 1)[1])
        printed = subprocess.run([exe, "proxy", "--print-env"], env=env, capture_output=True, text=True, check=True).stdout
        self.token = dict(line[7:].split("=", 1) for line in printed.splitlines())["OPENAI_API_KEY"]
        # Drain the per-request log so the pipe never fills.
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


def timed_get(conn: http.client.HTTPConnection, target: str, headers: dict) -> float:
    started = time.perf_counter()
    conn.request("GET", target, headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
    return time.perf_counter() - started


def latency(server: StandIn, proxy: Proxy, identity, rounds: int = 400) -> tuple[list[float], list[float]]:
    direct_conn = http.client.HTTPConnection("127.0.0.1", server.server.server_address[1])
    proxy_conn = http.client.HTTPConnection("127.0.0.1", proxy.port)
    direct, proxied = [], []
    for i in range(rounds + 20):
        signed_started = time.perf_counter()
        signed = sign_request("GET", f"{server.base_url}/api/tags", identity=identity)
        target = signed.url.split(server.host, 1)[1]
        sign_time = time.perf_counter() - signed_started
        d = timed_get(direct_conn, target, {"Authorization": signed.authorization}) + sign_time
        p = timed_get(proxy_conn, "/api/tags", {"Authorization": f"Bearer {proxy.token}"})
        if i >= 20:  # warm-up
            direct.append(d)
            proxied.append(p)
    return direct, proxied


def first_chunk(port: int, target: str, headers: dict) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"model": "m", "stream": True})
    started = time.perf_counter()
    conn.request("POST", target, body=body, headers={**headers, "Content-Type": "application/json"})
    response = conn.getresponse()
    first = response.read1(65536)
    elapsed = time.perf_counter() - started
    assert b"Hello" in first, first
    response.read()
    conn.close()
    return elapsed


def time_to_first_chunk(server: StandIn, proxy: Proxy, identity, rounds: int = 30) -> tuple[list[float], list[float]]:
    direct, proxied = [], []
    for _ in range(rounds):
        signed = sign_request("POST", f"{server.base_url}/api/chat", identity=identity)
        direct.append(first_chunk(server.server.server_address[1], signed.url.split(server.host, 1)[1], {"Authorization": signed.authorization}))
        proxied.append(first_chunk(proxy.port, "/api/chat", {"Authorization": f"Bearer {proxy.token}"}))
    return direct, proxied


def throughput(port: int, make_headers, seconds: float = 3.0, clients: int = 4) -> float:
    count = 0
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker() -> None:
        nonlocal count
        conn = http.client.HTTPConnection("127.0.0.1", port)
        done = 0
        while time.perf_counter() < stop:
            target, headers = make_headers()
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            done += 1
        with lock:
            count += done

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - started)


def concurrent_streams(proxy: Proxy, streams: int = 64) -> tuple[int, float]:
    expected = "".join(REPLY_WORDS) + " more" * (20 - len(REPLY_WORDS))
    intact = 0
    lock = threading.Lock()

    def one() -> None:
        nonlocal intact
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        conn.request("POST", "/api/chat", body=json.dumps({"stream": True}), headers={"Authorization": f"Bearer {proxy.token}"})
        response = conn.getresponse()
        text = "".join(json.loads(line)["message"]["content"] for line in response.read().splitlines() if line)
        with lock:
            intact += text == expected

    started = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return intact, time.perf_counter() - started


def main() -> int:
    work = tempfile.mkdtemp(prefix="och-proxy-bench-")
    try:
        home = os.path.join(work, "home")
        os.makedirs(os.path.join(home, ".ollama"))
        key = os.path.join(home, ".ollama", "id_ed25519")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_API_KEY", "HTTPS_PROXY", "HTTP_PROXY")}
        env.update(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"), XDG_CONFIG_HOME=os.path.join(home, ".config"))
        identity = load_identity(key)
        public = open(os.path.join(ROOT, "golden", "keys", "ed25519-a.pub")).read()

        with StandIn(max_skew=3600) as server:
            server.authorize(public)
            server.log_message = lambda *args: None
            proxy = Proxy(server.base_url, env)
            try:
                direct, proxied = latency(server, proxy, identity)
                added = [p - d for p, d in zip(proxied, direct)]
                print("added latency, small signed GET /api/tags, kept-alive connections, 400 alternating pairs:")
                print(f"  direct  median {statistics.median(direct) * 1e3:.2f} ms  p99 {percentile(direct, 0.99) * 1e3:.2f} ms")
                print(f"  proxy   median {statistics.median(proxied) * 1e3:.2f} ms  p99 {percentile(proxied, 0.99) * 1e3:.2f} ms")
                print(f"  added   median {statistics.median(added) * 1e3:.2f} ms  p99 {percentile(added, 0.99) * 1e3:.2f} ms")

                port = server.server.server_address[1]

                def direct_headers():
                    signed = sign_request("GET", f"{server.base_url}/api/tags", identity=identity)
                    return signed.url.split(server.host, 1)[1], {"Authorization": signed.authorization}

                direct_rate = throughput(port, direct_headers)
                proxy_rate = throughput(proxy.port, lambda: ("/api/tags", {"Authorization": f"Bearer {proxy.token}"}))
                print("throughput, small signed requests, 4 kept-alive clients, 3 s each:")
                print(f"  direct {direct_rate:,.0f} req/s   proxy {proxy_rate:,.0f} req/s")
            finally:
                proxy.stop()

        with StandIn(chunk_delay=0.05, max_skew=3600) as server:
            server.authorize(public)
            server.stream_chunks = 20
            proxy = Proxy(server.base_url, env)
            try:
                direct, proxied = time_to_first_chunk(server, proxy, identity)
                print("time to first chunk, NDJSON stream, upstream chunk every 50 ms, 30 alternating pairs:")
                print(f"  direct median {statistics.median(direct) * 1e3:.2f} ms   proxy median {statistics.median(proxied) * 1e3:.2f} ms"
                      f"   difference {(statistics.median(proxied) - statistics.median(direct)) * 1e3:.2f} ms")
                intact, elapsed = concurrent_streams(proxy)
                print(f"64 concurrent streams of 20 chunks (1 s each): {intact}/64 intact in {elapsed:.2f} s; "
                      f"proxy peak RSS {proxy.peak_rss_mb():.1f} MB")
            finally:
                proxy.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

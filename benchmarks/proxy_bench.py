"""The signing proxy against a direct client, side by side in one run.

    python benchmarks/proxy_bench.py [--old TREE] [--no-streams]

``--old TREE`` also runs the proxy of another checkout (its
``credential_helper`` package put first on PYTHONPATH, on this interpreter), in
the same run, so "before" and "after" share the machine's noise; e.g. the last
commit before the h11 rebuild::

    git worktree add /tmp/oldproxy 850b853
    python benchmarks/proxy_bench.py --old /tmp/oldproxy

The upstream is the loopback stand-in (it verifies every signature). "Direct"
is a client that signs each request itself in-process (as a provider using the
Python API would) and talks to the stand-in over a kept-alive connection;
"proxy" is the same request sent through ``ollama-credential-helper proxy``
(the installed executable) over a kept-alive connection. Direct and proxy
requests alternate, so a noisy machine slows both alike.

Prints: added latency (median, p99), time to first chunk of a stream whose
upstream sends a chunk every 50 ms, throughput of small signed requests with
keep-alive (with the proxy's CPU time per request), and 64 concurrent streams
(intact?) with the proxy's peak RSS. Throughput rounds alternate too (direct,
then each proxy, three times); the median round is printed.
"""

from __future__ import annotations

import argparse
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
    """One proxy process; ``tree`` set: that checkout's package, run with ``python -m``."""

    def __init__(self, upstream: str, env: dict, tree: str | None = None, name: str = "proxy") -> None:
        self.name = name
        cwd = None
        if tree is None:
            command = [os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")]
        else:
            # "python -m" puts the working directory first on sys.path: run it in the tree.
            cwd = os.path.abspath(tree)
            command = [sys.executable, "-m", "credential_helper"]
            env = {**env, "PYTHONPATH": cwd}
        self.process = subprocess.Popen(
            [*command, "proxy", "--listen", "127.0.0.1:0", "--upstream", upstream, "--max-concurrency", "256"],
            env=env,
            cwd=cwd,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        first = self.process.stderr.readline()
        self.banner = first.strip()  # shows which version runs (the h11 one names its credential)
        self.port = int(first.split()[2].rsplit(":", 1)[1])
        printed = subprocess.run(
            [*command, "proxy", "--print-env"], env=env, cwd=cwd, capture_output=True, text=True, check=True
        ).stdout
        self.token = dict(line[7:].split("=", 1) for line in printed.splitlines() if "=" in line)["OPENAI_API_KEY"]
        # Drain the per-request log so the pipe never fills.
        threading.Thread(target=lambda: [None for _ in self.process.stderr], daemon=True).start()

    def peak_rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024

    def cpu_seconds(self) -> float:
        """User plus system time the proxy process used so far (proc(5): utime, stime)."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

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


def latency(server: StandIn, proxies: list[Proxy], identity, rounds: int = 400) -> tuple[list[float], list[list[float]]]:
    """Direct, then each proxy, per round: a noisy moment slows all of them alike."""
    direct_conn = http.client.HTTPConnection("127.0.0.1", server.server.server_address[1])
    proxy_conns = [http.client.HTTPConnection("127.0.0.1", proxy.port) for proxy in proxies]
    direct, proxied = [], [[] for _ in proxies]
    for i in range(rounds + 20):
        signed_started = time.perf_counter()
        signed = sign_request("GET", f"{server.base_url}/api/tags", identity=identity)
        target = signed.url.split(server.host, 1)[1]
        sign_time = time.perf_counter() - signed_started
        d = timed_get(direct_conn, target, {"Authorization": signed.authorization}) + sign_time
        p = [
            timed_get(conn, "/api/tags", {"Authorization": f"Bearer {proxy.token}"}) for conn, proxy in zip(proxy_conns, proxies)
        ]
        if i >= 20:  # warm-up
            direct.append(d)
            for values, value in zip(proxied, p):
                values.append(value)
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


def time_to_first_chunk(
    server: StandIn, proxies: list[Proxy], identity, rounds: int = 30
) -> tuple[list[float], list[list[float]]]:
    direct, proxied = [], [[] for _ in proxies]
    for _ in range(rounds):
        signed = sign_request("POST", f"{server.base_url}/api/chat", identity=identity)
        direct.append(
            first_chunk(
                server.server.server_address[1], signed.url.split(server.host, 1)[1], {"Authorization": signed.authorization}
            )
        )
        for values, proxy in zip(proxied, proxies):
            values.append(first_chunk(proxy.port, "/api/chat", {"Authorization": f"Bearer {proxy.token}"}))
    return direct, proxied


def throughput(port: int, make_headers, seconds: float = 2.0, clients: int = 4) -> float:
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


def make_home(work: str, name: str) -> tuple[str, dict]:
    """A home of its own per proxy (key, local token, cache): two versions never share a file."""
    home = os.path.join(work, name)
    os.makedirs(os.path.join(home, ".ollama"))
    key = os.path.join(home, ".ollama", "id_ed25519")
    shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
    os.chmod(key, 0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_API_KEY", "HTTPS_PROXY", "HTTP_PROXY", "PYTHONPATH")}
    env.update(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"), XDG_CONFIG_HOME=os.path.join(home, ".config"))
    return key, env


def start_proxies(upstream: str, work: str, old: str | None, tag: str) -> list[Proxy]:
    proxies = []
    if old is not None:
        proxies.append(Proxy(upstream, make_home(work, f"old-{tag}")[1], tree=old, name="old proxy"))
    proxies.append(Proxy(upstream, make_home(work, f"new-{tag}")[1], name="proxy" if old is None else "new proxy"))
    return proxies


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", metavar="TREE", help="also run the proxy of this checkout (before/after in one run)")
    parser.add_argument("--no-streams", action="store_true", help="skip the streaming measures (about a minute per proxy)")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="och-proxy-bench-")
    try:
        key, _ = make_home(work, "client")
        identity = load_identity(key)
        public = open(os.path.join(ROOT, "golden", "keys", "ed25519-a.pub")).read()

        with StandIn(max_skew=3600) as server:
            server.authorize(public)
            server.log_message = lambda *args: None
            proxies = start_proxies(server.base_url, work, args.old, "small")
            try:
                for proxy in proxies:
                    print(f"{proxy.name}: {proxy.banner}")
                direct, proxied = latency(server, proxies, identity)
                print("added latency, small signed GET /api/tags, kept-alive connections, 400 rounds (direct, then each proxy):")
                print(f"  {'direct':10} median {ms(statistics.median(direct))}  p99 {ms(percentile(direct, 0.99))}")
                for proxy, values in zip(proxies, proxied):
                    added = [p - d for p, d in zip(values, direct)]
                    print(
                        f"  {proxy.name:10} median {ms(statistics.median(values))}  p99 {ms(percentile(values, 0.99))}"
                        f"   added: median {ms(statistics.median(added))}  p99 {ms(percentile(added, 0.99))}"
                    )

                port = server.server.server_address[1]

                def direct_headers():
                    signed = sign_request("GET", f"{server.base_url}/api/tags", identity=identity)
                    return signed.url.split(server.host, 1)[1], {"Authorization": signed.authorization}

                rates: dict[str, list[float]] = {"direct": [], **{proxy.name: [] for proxy in proxies}}
                cpu: dict[str, list[float]] = {proxy.name: [] for proxy in proxies}
                for _ in range(3):  # alternate, so each gets the same share of the machine's noise
                    rates["direct"].append(throughput(port, direct_headers))
                    for proxy in proxies:
                        before, started = proxy.cpu_seconds(), time.perf_counter()
                        rate = throughput(
                            proxy.port, lambda proxy=proxy: ("/api/tags", {"Authorization": f"Bearer {proxy.token}"})
                        )
                        requests = rate * (time.perf_counter() - started)
                        rates[proxy.name].append(rate)
                        cpu[proxy.name].append((proxy.cpu_seconds() - before) / max(requests, 1))
                print("throughput, small signed requests, 4 kept-alive clients, 2 s each, 3 alternating rounds (median round):")
                print("  " + "   ".join(f"{name} {statistics.median(values):,.0f} req/s" for name, values in rates.items()))
                print(
                    "  proxy CPU per request: "
                    + "   ".join(f"{name} {statistics.median(values) * 1e6:.0f} us" for name, values in cpu.items())
                )
            finally:
                for proxy in proxies:
                    proxy.stop()

        if args.no_streams:
            return 0
        with StandIn(chunk_delay=0.05, max_skew=3600) as server:
            server.authorize(public)
            server.stream_chunks = 20
            proxies = start_proxies(server.base_url, work, args.old, "streams")
            try:
                direct, proxied = time_to_first_chunk(server, proxies, identity)
                print("time to first chunk, NDJSON stream, upstream chunk every 50 ms, 30 rounds:")
                print(
                    f"  direct median {ms(statistics.median(direct))}"
                    + "".join(
                        f"   {proxy.name} median {ms(statistics.median(values))} (+{ms(statistics.median(values) - statistics.median(direct))})"
                        for proxy, values in zip(proxies, proxied)
                    )
                )
                for proxy in proxies:
                    intact, elapsed = concurrent_streams(proxy)
                    print(
                        f"{proxy.name}: 64 concurrent streams of 20 chunks (1 s each): {intact}/64 intact in {elapsed:.2f} s; "
                        f"peak RSS {proxy.peak_rss_mb():.1f} MB"
                    )
            finally:
                for proxy in proxies:
                    proxy.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long ``/metrics`` takes while the gate is under load (issue 22: under 10 ms).

    python benchmarks/metrics_bench.py [--clients N] [--seconds S] [--scrapes K]

Runs gate_bench.py's minimal upstream and the installed ``gate --metrics-listen``
as separate processes; N kept-alive clients send signed GET /api/tags (and one in
ten unsigned, so refusals are counted too) for S seconds while this process fetches
/metrics K times, one after another. Prints the scrape times idle and under load
(median, p95, max), the load's rate, and the size of the exposition. Asserts nothing.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gate_bench

from credential_helper.identity import load_identity

_kept: dict = {}


def scrape(port: int) -> tuple[float, int]:
    """One scrape on a kept-alive connection, as Prometheus makes them."""
    import http.client

    started = time.perf_counter()
    connection = _kept.get(port) or _kept.setdefault(port, http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    connection.request("GET", "/metrics")
    size = len(connection.getresponse().read())
    return time.perf_counter() - started, size


def summary(values: list[float]) -> str:
    return (
        f"median {gate_bench.ms(statistics.median(values))}  p95 {gate_bench.ms(gate_bench.percentile(values, 0.95))}  "
        f"max {gate_bench.ms(max(values))}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="och-metrics-bench-")
    processes = []
    try:
        key = os.path.join(work, "id_ed25519")
        shutil.copy(os.path.join(gate_bench.ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        identity = load_identity(key)
        keys = os.path.join(work, "authorized_keys")
        with open(os.path.join(gate_bench.ROOT, "golden", "keys", "ed25519-a.pub")) as public:
            line = " ".join(public.read().split()[:2])
        with open(keys, "w") as handle:
            handle.write(f"{line} alice *\n")
        os.chmod(keys, 0o600)
        os.utime(keys, (time.time() - 60, time.time() - 60))
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_API_KEY", "HTTPS_PROXY", "HTTP_PROXY", "PYTHONPATH")}
        env.update(HOME=work, XDG_CACHE_HOME=os.path.join(work, ".cache"), XDG_CONFIG_HOME=os.path.join(work, ".config"))
        upstream = gate_bench.Process("upstream", [sys.executable, gate_bench.__file__, "--serve-minimal"], env, False)
        processes.append(upstream)
        with __import__("socket").socket() as probe:
            probe.bind(("127.0.0.1", 0))
            metrics_port = probe.getsockname()[1]
        exe = os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")
        gate = gate_bench.Process(
            "gate",
            [
                exe,
                "gate",
                "--upstream",
                f"http://127.0.0.1:{upstream.port}",
                "--listen",
                "127.0.0.1:0",
                "--authorized-keys",
                keys,
                "--max-concurrency",
                "256",
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
            ],
            env,
            True,
        )
        processes.append(gate)
        time.sleep(0.5)
        idle = [scrape(metrics_port)[0] for _ in range(args.scrapes)]

        pool = [gate_bench.signed_tags(identity, gate.port)[0] for _ in range(900)]
        pool += [f"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1:{gate.port}\r\n\r\n".encode()] * 100
        result = {}

        def load() -> None:
            result["answers"], result["bad"], result["elapsed"] = asyncio.run(
                gate_bench._load(gate.port, pool, args.clients, args.seconds)
            )

        loader = threading.Thread(target=load)
        loader.start()
        time.sleep(0.5)
        busy, size = [], 0
        while loader.is_alive() and len(busy) < args.scrapes:
            took, size = scrape(metrics_port)
            busy.append(took)
        loader.join()
        print(f"gate: {gate.banner}")
        print(f"/metrics idle, {len(idle)} scrapes:        {summary(idle)}")
        print(f"/metrics under load, {len(busy)} scrapes:  {summary(busy)}  ({size} bytes)")
        print(
            f"load: {args.clients} kept-alive clients, {result['answers'] / result['elapsed']:.0f} answers/s "
            f"({result['bad']} non-2xx: the unsigned tenth)"
        )
    finally:
        for process in processes:
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

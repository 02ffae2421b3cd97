"""Resident memory of the gate and the proxy under a sustained keep-alive soak (issue 21).

    python benchmarks/soak.py [--seconds 180] [--clients 200] [--only gate|proxy] [--chunks N] [--tree DIR]

Starts the minimal upstream of gate_bench.py, then ``gate --upstream`` and
``proxy`` in front of it (the installed executable), and loads each in turn with
``wrk`` (Debian's package: ``apt-get install wrk``): ``--clients`` kept-alive
connections for ``--seconds``, every request the same pre-signed ``GET
/api/tags`` (the gate runs with ``--max-skew`` above the soak's length so the one
signature stays valid; the proxy gets its local token). Samples the server's
VmRSS (proc(5)) every ``--every`` seconds and prints the series, the peak, and
the figure after the connections closed. ``--chunks N`` makes every answer a
chunked stream of N pieces (many reads per request, as a streamed chat);
``--tree DIR`` runs another checkout's servers, for a before/after. Asserts nothing.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gate_bench import ROOT, Process

from credential_helper.identity import load_identity


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(name: str, process: Process, url: str, headers: list[str], clients: int, seconds: int, every: float) -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install wrk")
    command = [wrk, "-t2", f"-c{clients}", f"-d{seconds}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    samples = [(0.0, rss_mb(process.process.pid))]
    started = time.monotonic()
    load = subprocess.Popen([*command, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while load.poll() is None:
        time.sleep(every)
        if load.poll() is None:
            samples.append((time.monotonic() - started, rss_mb(process.process.pid)))
    report = load.stdout.read()
    time.sleep(2)  # the connections have closed
    after = rss_mb(process.process.pid)
    requests = next((line.split()[0] for line in report.splitlines() if "requests in" in line), "?")
    rate = next((line.split()[1] for line in report.splitlines() if line.startswith("Requests/sec")), "?")
    non2xx = next((line.strip() for line in report.splitlines() if "Non-2xx" in line), "all 2xx")
    print(f"{name}: {requests} requests, {rate}/s, {non2xx}")
    print("  VmRSS MB over time: " + ", ".join(f"{t:.0f}s {mb:.1f}" for t, mb in samples))
    print(
        f"  start {samples[0][1]:.1f} MB, peak {max(mb for _, mb in samples):.1f} MB, "
        f"last under load {samples[-1][1]:.1f} MB, 2 s after the connections closed {after:.1f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--every", type=float, default=15.0, help="seconds between RSS samples (default 15)")
    parser.add_argument("--only", choices=("gate", "proxy"))
    parser.add_argument(
        "--chunks",
        type=int,
        default=0,
        help="the upstream streams each answer as N chunks (as a chat does); default: one small answer",
    )
    parser.add_argument("--gap", type=float, default=0.002, help="seconds between streamed chunks (default 0.002)")
    parser.add_argument("--tree", help="run the gate and proxy of this checkout (python -m, its package first on PYTHONPATH)")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="och-soak-")
    processes: list[Process] = []
    try:
        os.makedirs(os.path.join(work, ".ollama"), mode=0o700)
        key = os.path.join(work, ".ollama", "id_ed25519")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        identity = load_identity(key)
        keys = os.path.join(work, "authorized_keys")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a.pub"), keys)
        os.chmod(keys, 0o600)
        os.utime(keys, (time.time() - 60, time.time() - 60))  # out of the key file's racy window
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_API_KEY", "HTTPS_PROXY", "HTTP_PROXY", "PYTHONPATH")}
        env.update(HOME=work, XDG_CACHE_HOME=os.path.join(work, ".cache"), XDG_CONFIG_HOME=os.path.join(work, ".config"))
        bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gate_bench.py")
        upstream = Process(
            "upstream",
            [sys.executable, bench, "--serve-minimal", "--chunks", str(args.chunks), "--gap", str(args.gap)],
            env,
            False,
        )
        processes.append(upstream)
        exe = [os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")]
        if args.tree:
            exe = [sys.executable, "-m", "credential_helper"]
            env = {**env, "PYTHONPATH": os.path.abspath(args.tree)}
            os.chdir(args.tree)  # "python -m" puts the working directory first on sys.path
            print(f"tree: {os.path.abspath(args.tree)}")
        print(f"upstream: {f'{args.chunks} chunks {args.gap:g} s apart' if args.chunks else 'one small answer'} per request")
        common = ["--listen", "127.0.0.1:0", "--max-concurrency", "256"]
        if args.only in (None, "gate"):
            gate = Process(
                "gate",
                [
                    *exe,
                    "gate",
                    "--upstream",
                    f"http://127.0.0.1:{upstream.port}",
                    *common,
                    "--authorized-keys",
                    keys,
                    "--max-skew",
                    str(args.seconds + 120),
                ],
                env,
                True,
            )
            processes.append(gate)
            target = f"/api/tags?ts={int(time.time())}"
            soak(
                "gate",
                gate,
                f"http://127.0.0.1:{gate.port}{target}",
                [f"Authorization: {identity.sign(f'GET,{target}')}"],
                args.clients,
                args.seconds,
                args.every,
            )
        if args.only in (None, "proxy"):
            proxy = Process("proxy", [*exe, "proxy", "--upstream", f"http://127.0.0.1:{upstream.port}", *common], env, True)
            processes.append(proxy)
            printed = subprocess.run([*exe, "proxy", "--print-env"], env=env, capture_output=True, text=True, check=True).stdout
            token = dict(line[len("export ") :].split("=", 1) for line in printed.splitlines())["OPENAI_API_KEY"]
            soak(
                "proxy",
                proxy,
                f"http://127.0.0.1:{proxy.port}/api/tags",
                [f"Authorization: Bearer {token}"],
                args.clients,
                args.seconds,
                args.every,
            )
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up and signing benchmarks, reported as ratios to a bare interpreter.

    python benchmarks/bench.py [--runs 30]

Every subprocess timing is paired with a bare ``python -c pass`` run taken just
before it, and the median of the per-pair ratios is reported, so a noisy shared
machine shifts both sides of each pair alike. Uses the ``ollama-credential-helper``
installed beside this interpreter (install with ``pip install .``, not ``-e``:
an editable install adds its own import hook to every start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from credential_helper.identity import load_identity
from credential_helper.standin import StandIn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def helper() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")
    if not os.path.exists(script):
        sys.exit("install the package into this interpreter first: pip install .")
    return script


def timed(cmd: list[str], stdin: bytes, env: dict) -> float:
    started = time.perf_counter()
    completed = subprocess.run(cmd, input=stdin, capture_output=True, env=env)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"{cmd[1:]} failed: {completed.stderr.decode()}")
    return elapsed


def paired(cmd: list[str], stdin: bytes, env: dict, runs: int) -> tuple[float, float, float]:
    """(median ratio, median bare seconds, median command seconds)."""
    bare_cmd = [sys.executable, "-c", "pass"]
    ratios, bares, cmds = [], [], []
    for _ in range(runs):
        bare = timed(bare_cmd, b"", env)
        this = timed(cmd, stdin, env)
        ratios.append(this / bare)
        bares.append(bare)
        cmds.append(this)
    return statistics.median(ratios), statistics.median(bares), statistics.median(cmds)


def import_costs(cmd: list[str], stdin: bytes, env: dict) -> list[tuple[str, int]]:
    """Modules a cache hit imports beyond ``import re`` (which the wrapper needs anyway)."""

    def modules(run_cmd: list[str], data: bytes) -> dict[str, int]:
        completed = subprocess.run(run_cmd, input=data, capture_output=True, env=env)
        costs = {}
        for line in completed.stderr.decode().splitlines():
            if line.startswith("import time:") and "cumulative" not in line:
                self_us, _, name = line[len("import time:") :].split("|")
                costs[name.strip()] = int(self_us)
        return costs

    floor = modules([sys.executable, "-X", "importtime", "-c", "import re"], b"")
    hit = modules([sys.executable, "-X", "importtime", *cmd], stdin)
    return [(name, cost) for name, cost in hit.items() if name not in floor]


def signing_rate(seconds: float = 2.0) -> float:
    identity = load_identity(os.path.join(ROOT_KEYS, "ed25519-a"))
    data = "GET,https://ollama.com/token?nonce=abc&scope=repository%3Alibrary%2Fx%3Apull&service=ollama.com&ts=1,digest"
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(500):
            identity.sign(data)
        count += 500
    return count / (time.perf_counter() - started)


def adapter_costs(rounds: int = 7, count: int = 2000) -> list[tuple[str, float, float]]:
    """Added cost of each adapter per signed request, in-process, in microseconds.

    Each round times ``count`` requests built and signed, and ``count`` built
    only; the median over rounds of the difference is the adapter's cost. The
    request goes nowhere: this is the work between the client and the socket.
    """
    key = os.path.join(ROOT_KEYS, "ed25519-a")
    url = "https://ollama.com/api/chat?model=gpt-oss&stream=true"
    results = []
    for name in ("httpx", "httpx2", "requests"):
        try:
            library = __import__(name)
            adapter = __import__(f"credential_helper.integrations.{name}", fromlist=["OllamaAuth"])
        except ImportError:
            continue
        auth = adapter.OllamaAuth(identity=key, api_base="https://ollama.com", cache=False)
        if name == "requests":
            build = lambda library=library: library.Request("POST", url, data=b"{}").prepare()  # noqa: E731
            apply = auth
        else:
            build = lambda library=library: library.Request("POST", url, content=b"{}")  # noqa: E731

            def apply(request, auth=auth):
                return next(auth.sync_auth_flow(request))

        apply(build())  # first use loads the key
        costs, bases = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(count):
                build()
            base = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(count):
                apply(build())
            signed = time.perf_counter() - started
            costs.append((signed - base) / count * 1e6)
            bases.append(base / count * 1e6)
        results.append((name, statistics.median(costs), statistics.median(bases)))
    return results


ROOT_KEYS = ""


def main() -> int:
    global ROOT_KEYS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="och-bench-")
    try:
        ROOT_KEYS = os.path.join(work, "keys")
        shutil.copytree(os.path.join(ROOT, "golden", "keys"), ROOT_KEYS)
        for name in os.listdir(ROOT_KEYS):
            os.chmod(os.path.join(ROOT_KEYS, name), 0o600)
        home = os.path.join(work, "home")
        os.makedirs(os.path.join(home, ".ollama"))
        shutil.copy(os.path.join(ROOT_KEYS, "ed25519-a"), os.path.join(home, ".ollama", "id_ed25519"))
        env = {k: v for k, v in os.environ.items() if k != "OLLAMA_API_KEY"}
        env.update(HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"))
        exe = helper()

        with StandIn(expires_in=3600) as server:
            with open(os.path.join(ROOT_KEYS, "ed25519-a.pub")) as handle:
                server.authorize(handle.read())
            challenge = json.dumps(
                {"realm": f"{server.base_url}/token", "service": "ollama.com", "scope": "repository:library/x:pull"}
            ).encode()
            timed([exe, "get"], challenge, env)  # fill the cache
            rows = [
                ("get, cache hit", [exe, "get"], challenge),
                ("get, cache miss (loopback exchange)", [exe, "get", "--no-cache"], challenge),
                ("sign", [exe, "sign", "POST", "https://ollama.com/api/chat"], b""),
                ("--version (argparse path)", [exe, "--version"], b""),
            ]
            print(
                f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"
            )
            print(f"paired runs: {args.runs}; ratio = median over pairs of (command / bare 'python -c pass')\n")
            print(f"{'command':40} {'ratio':>7} {'command ms':>11} {'bare ms':>8}")
            for label, cmd, stdin in rows:
                ratio, bare, this = paired(cmd, stdin, env, args.runs)
                print(f"{label:40} {ratio:7.2f} {this * 1000:11.1f} {bare * 1000:8.1f}")
            floor_ratio, bare, this = paired([sys.executable, "-c", "import re, json"], b"", env, args.runs)
            label = "floor: python -c 'import re, json'"
            print(f"{label:40} {floor_ratio:7.2f} {this * 1000:11.1f} {bare * 1000:8.1f}")

            print("\nimports on the cache-hit path beyond 'import re' (self time, microseconds):")
            costs = import_costs([exe, "get"], challenge, env)
            for name, cost in sorted(costs, key=lambda item: -item[1]):
                print(f"  {cost:6d}  {name}")
            print(f"  {sum(c for _, c in costs):6d}  total")
            heavy = [n for n, _ in costs if n.split(".")[0] in ("cryptography", "urllib3", "argparse")]
            print(f"  cryptography/urllib3/argparse imported on a hit: {heavy or 'none'}")
        print(f"\nin-process signing: {signing_rate():,.0f} signatures/s (key loaded once)")
        print("\nadapter cost per signed request, in-process (median of 7 rounds of 2,000):")
        for name, cost, base in adapter_costs():
            print(
                f"  {name:9} {cost:7.1f} us added ({1e6 / cost:,.0f} signed requests/s); building the request alone {base:.1f} us"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

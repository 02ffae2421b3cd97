"""What a key's options cost the gate's policy, per request (issue 22, "Benchmarks").

    python benchmarks/options_bench.py [--rounds N] [--end-to-end]

In process, no sockets: GatePolicy.decide on a signed ``POST /api/chat`` head for a
key line without options, and the same request for a line with ``models=`` (decide,
then the NeedBody continuation with a typical chat body: the models check reading the
body as Ollama would). Both include the signature check; the difference is what the
models= check adds. The engine's own part for models= (reading the whole body before
forwarding instead of streaming it) is a copy of bytes already in memory.

With ``--end-to-end``: two installed gates (``ollama-credential-helper gate``), one whose
key line has no options and one with ``models=``, in front of gate_bench.py's minimal
upstream; a kept-alive client sends the same signed chat to each in turn (signing not
timed). That includes the engine's part: the whole body read before the decision and
sent on with a Content-Length.

Prints the median and 90th percentile of each, and the median difference.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from credential_helper.identity import load_identity
from credential_helper.serve import gate
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.serve.messages import Forward, Head, NeedBody

NOW = 1_800_000_000
CHAT = json.dumps(
    {
        "model": "qwen3:8b",
        "stream": True,
        "options": {"temperature": 0.2},
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise the plot of Hamlet in three sentences. " * 8},
        ],
    }
).encode()


def policy_for(directory: str, options: str) -> gate.GatePolicy:
    with open(os.path.join(ROOT, "golden", "keys", "ed25519-a.pub")) as handle:
        public = " ".join(handle.read().split()[:2])
    path = os.path.join(directory, f"keys-{len(options)}")
    with open(path, "w") as handle:
        handle.write(f"{options} {public} alice *\n".lstrip())
    os.chmod(path, 0o600)
    return gate.GatePolicy(KeyFile(path, print), 300, "127.0.0.1:11434", clock=lambda: NOW)


def measure(policy: gate.GatePolicy, head: Head, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        decision = policy.decide(head)
        if isinstance(decision, NeedBody):
            decision = decision.then(CHAT)
        times.append(time.perf_counter() - started)
        assert isinstance(decision, Forward), decision
    return times


def end_to_end(rounds: int) -> int:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from gate_bench import BlockingClient, Process

    directory = tempfile.mkdtemp()
    env = dict(os.environ)
    executable = os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")
    processes = []
    try:
        key = os.path.join(directory, "id")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        identity = load_identity(key)
        upstream = Process(
            "upstream", [sys.executable, os.path.join(ROOT, "benchmarks", "gate_bench.py"), "--serve-minimal"], env, False
        )
        processes.append(upstream)
        gates = {}
        for name, options in (("no options", ""), ("models=", 'models="qwen3:*,gemma3:4b,!qwen3:235b"')):
            path = policy_for(directory, options).keys.path
            gates[name] = Process(
                name,
                [
                    executable,
                    "gate",
                    "--listen",
                    "127.0.0.1:0",
                    "--upstream",
                    f"http://127.0.0.1:{upstream.port}",
                    "--authorized-keys",
                    path,
                ],
                env,
                True,
            )
            processes.append(gates[name])
        clients = {name: BlockingClient(process.port) for name, process in gates.items()}
        times: dict[str, list[float]] = {name: [] for name in gates}
        for i in range(rounds + 50):
            for name, client in clients.items():
                target = f"/api/chat?ts={int(time.time())}"
                request = (
                    f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {identity.sign(f'POST,{target}')}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(CHAT)}\r\n\r\n"
                ).encode() + CHAT
                elapsed, status = client.round_trip(request)
                assert status == 200, (name, status)
                if i >= 50:
                    times[name].append(elapsed)
    finally:
        for process in processes:
            process.stop()
        shutil.rmtree(directory)
    for name, values in times.items():
        ordered = sorted(values)
        print(
            f"{name:<12} POST /api/chat through the gate: median {statistics.median(values) * 1e3:.3f} ms   "
            f"p90 {ordered[int(len(ordered) * 0.9)] * 1e3:.3f} ms"
        )
    difference = statistics.median(times["models="]) - statistics.median(times["no options"])
    print(f"models= adds (median difference) {difference * 1e3:.3f} ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--end-to-end", action="store_true")
    args = parser.parse_args()
    if args.end_to_end:
        return end_to_end(args.rounds)
    directory = tempfile.mkdtemp()
    try:
        key = os.path.join(directory, "id")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        target = f"/api/chat?ts={NOW}"
        authorization = load_identity(key).sign(f"POST,{target}")
        head = Head(
            "POST",
            target,
            "1.1",
            (
                ("Host", "box"),
                ("Authorization", authorization),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(CHAT))),
            ),
            "10.0.0.5",
        )
        plain = policy_for(directory, "")
        restricted = policy_for(directory, 'models="qwen3:*,gemma3:4b,!qwen3:235b"')
        measure(plain, head, 200)  # warm up
        measure(restricted, head, 200)
        a, b = [], []
        for _ in range(3):  # alternate, so that a busy neighbour costs both alike
            a += measure(plain, head, args.rounds // 3)
            b += measure(restricted, head, args.rounds // 3)
    finally:
        shutil.rmtree(directory)

    def show(name: str, times: list[float]) -> None:
        ordered = sorted(times)
        print(
            f"{name:<34} median {statistics.median(times) * 1e6:7.1f} us   p90 {ordered[int(len(ordered) * 0.9)] * 1e6:7.1f} us"
        )

    show("no options (decide)", a)
    show("models= (decide + body check)", b)
    print(
        f"models= adds (median difference)  {(statistics.median(b) - statistics.median(a)) * 1e6:7.1f} us  "
        f"(chat body {len(CHAT)} bytes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

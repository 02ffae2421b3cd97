"""What a ``models=`` check costs: ``models_named`` plus the pattern test, per request (issue 22).

    python benchmarks/models_bench.py [--rounds N]

Times, in-process and single-threaded, ``models_named`` followed by ``denied`` (with a
two-pattern stand-in for the key file's matcher) on bodies as Ollama's clients send them:
a typical ``/api/chat`` (a short conversation), the same through ``/v1/chat/completions``
(two readings of the body: the cloud check's and the handler's), a ``/api/chat`` with a
64 KiB conversation, and a 1 MiB one (an image in base64). Prints the median and the 99th
percentile in milliseconds over ``--rounds`` calls each. The issue's bound: a chat well under
0.2 ms median. Asserts nothing.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import time

from credential_helper.serve.models import denied, models_named

PATTERNS = ("llama3*", "qwen2.5:*")


def allowed(subject: str) -> bool:
    return any(fnmatch.fnmatchcase(subject, p) for p in PATTERNS)


def chat(model: str, words: int) -> bytes:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Why is the sky blue? " + "lorem ipsum " * words},
        {"role": "assistant", "content": "Rayleigh scattering."},
        {"role": "user", "content": "And sunsets?"},
    ]
    return json.dumps({"model": model, "messages": messages, "stream": True, "options": {"temperature": 0.2}}).encode()


CASES = [
    ("POST /api/chat, typical (%d B)", "/api/chat", chat("llama3.1:8b", 40)),
    ("POST /v1/chat/completions, typical (%d B)", "/v1/chat/completions", chat("llama3.1:8b", 40)),
    ("POST /api/chat, 64 KiB (%d B)", "/api/chat", chat("llama3.1:8b", 5400)),
    ("POST /api/chat, 1 MiB (%d B)", "/api/chat", chat("llama3.1:8b", 87000)),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5000)
    args = parser.parse_args()
    for label, path, body in CASES:
        rounds = args.rounds if len(body) < 100_000 else max(50, args.rounds // 50)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            named = models_named("POST", path, "", "application/json", body)
            refused = denied(named, allowed)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
        assert refused is None, refused
        times.sort()
        p99 = times[int(len(times) * 0.99) - 1]
        print(
            f"{label % len(body):48} median {statistics.median(times) * 1e3:.4f} ms   p99 {p99 * 1e3:.4f} ms   ({rounds} calls)"
        )


if __name__ == "__main__":
    main()

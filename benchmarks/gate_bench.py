"""The gate against direct, side by side in one run (issue 15, "Performance").

    python benchmarks/gate_bench.py [--upstream minimal|standin] [--clients N] [--seconds S] [--old TREE] [--repeat R]

``--old TREE`` also runs the gate and auth-only of another checkout (``python -m``,
its package first on PYTHONPATH) beside these, round by round, and prints the
per-round ratios: a before/after in one run on a noisy machine. ``--rounds 0``
skips the latency part.

Three servers run as separate processes: a loopback upstream standing in for
``ollama serve``, ``ollama-credential-helper gate --upstream`` in front of it (the
installed executable) and ``ollama-credential-helper gate --auth-only``. The
upstream is, by default, a minimal keep-alive HTTP/1.1 server written here
(about 16 us of CPU per answer); ``--upstream standin`` uses the project's
stand-in with ``verify_signatures=False`` instead (``http.server``, about 140 us
per answer: it takes more of the core the gate shares with it, but, measured,
does not lower the gate's rate). Every request carries an Ollama scheme-2 signature made with
``credential_helper.identity.load_identity(...).sign`` over ``GET,/api/tags?ts=``;
the upstream ignores it, the gate verifies it.

Prints:
- latency of a small GET, one request at a time on a kept-alive connection,
  direct / through the gate / an nginx-style auth request to ``--auth-only``,
  in rounds of three (each request signed fresh; signing is not timed);
- throughput with N kept-alive clients (asyncio raw sockets, requests
  pre-signed with the current ts so the load generator stays cheap), direct /
  gate / auth-only, three alternating rounds (median round), with the gate
  process's CPU time per request.

Asserts nothing; a non-2xx answer is counted and printed.
"""

import argparse
import asyncio
import collections
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from credential_helper.identity import load_identity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = b'{"models":[{"name":"stand-in:latest","model":"stand-in:latest","size":1}]}\n'


# -- the minimal upstream (run in its own process: python gate_bench.py --serve-minimal) ----------


class _MinimalHTTP(asyncio.Protocol):
    """Answers every request head with one fixed 200, kept alive. Reads a
    Content-Length body and skips it; nothing else (no chunked requests).

    With ``CHUNKS`` set, each answer is instead a chunked stream of that many
    ndjson lines, ``GAP`` seconds apart (as ``ollama serve`` streams a chat), so
    whatever relays it reads each answer in many pieces."""

    ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
    STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    CHUNKS, GAP = 0, 0.002

    def connection_made(self, transport) -> None:
        self.transport, self.buffer, self.skip = transport, b"", 0
        self.pieces: collections.deque[bytes] = collections.deque()
        self.streaming = False
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _streamed(self) -> None:
        """Queue one chunked answer; pieces leave GAP apart, answers in order."""
        for i in range(self.CHUNKS):
            line = b'{"model":"stand-in","message":{"role":"assistant","content":"word %d "},"done":false}\n' % i
            self.pieces.append((self.STREAM_HEAD if i == 0 else b"") + b"%x\r\n%s\r\n" % (len(line), line))
        self.pieces[-1] += b"0\r\n\r\n"
        if not self.streaming:
            self._next_piece()

    def _next_piece(self) -> None:
        self.streaming = bool(self.pieces) and not self.transport.is_closing()
        if self.streaming:
            self.transport.write(self.pieces.popleft())
            asyncio.get_running_loop().call_later(self.GAP, self._next_piece)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buffer))
                self.buffer, self.skip = self.buffer[taken:], self.skip - taken
                if self.skip:
                    break
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4 :]
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                self.skip = int(head[at + 17 :].split(b"\r\n", 1)[0])
            if self.CHUNKS:
                self._streamed()
            else:
                out.append(self.ANSWER)
        if out:
            self.transport.write(b"".join(out))


def serve_minimal(chunks: int = 0, gap: float = 0.002) -> int:
    _MinimalHTTP.CHUNKS, _MinimalHTTP.GAP = chunks, gap

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_MinimalHTTP, "127.0.0.1", 0, backlog=512)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())
    return 0


STANDIN = """
import sys, time
from credential_helper.standin import StandIn
server = StandIn(verify_signatures=False).start()
server.log_message = lambda *args: None
print(server.server.server_address[1], flush=True)
while True:
    time.sleep(3600)
"""


# -- processes ------------------------------------------------------------------------------------


class Process:
    def __init__(self, name: str, command: list[str], env: dict, port_from_banner: bool, cwd: str | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stream = self.process.stderr if port_from_banner else self.process.stdout
        first = stream.readline()
        if not first:
            raise SystemExit(f"{name} did not start: {self.process.stderr.read()}")
        # gate: "listening on http://127.0.0.1:PORT (...)"; upstreams print the port alone.
        self.port = int(first.split()[2].rsplit(":", 1)[1]) if port_from_banner else int(first)
        self.banner = first.strip()
        for pipe in (self.process.stdout, self.process.stderr):  # drain the per-request log
            threading.Thread(target=lambda pipe=pipe: [None for _ in pipe], daemon=True).start()

    def cpu_seconds(self) -> float:
        """User plus system time of the process so far (proc(5): utime, stime)."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- requests -------------------------------------------------------------------------------------


def signed_tags(identity, port: int) -> tuple[bytes, bytes]:
    """(direct or gate request, nginx auth request) for GET /api/tags, signed now."""
    target = f"/api/tags?ts={int(time.time())}"
    authorization = identity.sign(f"GET,{target}")
    request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n\r\n"
    # What the README's nginx configuration sends to the gate (auth_request, proxy_set_header).
    auth = (
        f"GET /auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Original-Method: GET\r\nX-Original-URI: {target}\r\n"
        f"Authorization: {authorization}\r\n\r\n"
    )
    return request.encode(), auth.encode()


def parse_head(head: bytes) -> tuple[int, int]:
    """(status, body length) of an answer head (Content-Length framing only)."""
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    length = int(lower[at + 17 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
    return status, length


class BlockingClient:
    """One kept-alive connection, one request at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def round_trip(self, request: bytes) -> tuple[float, int]:
        started = time.perf_counter()
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, length = parse_head(head)
        while len(self.buffer) < length:
            self.buffer += self._recv()
        self.buffer = self.buffer[length:]
        return time.perf_counter() - started, status

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def latency(identity, upstream: int, gate: int, auth: int, rounds: int) -> dict[str, list[float]]:
    clients = {"direct": BlockingClient(upstream), "gate": BlockingClient(gate), "auth-only": BlockingClient(auth)}
    times: dict[str, list[float]] = {name: [] for name in clients}
    bad = 0
    for i in range(rounds + 50):
        for name, client in clients.items():
            request, auth_request = signed_tags(identity, gate if name == "gate" else upstream)  # fresh, not timed
            elapsed, status = client.round_trip(auth_request if name == "auth-only" else request)
            bad += not 200 <= status < 300
            if i >= 50:  # warm-up
                times[name].append(elapsed)
    if bad:
        print(f"  WARNING: {bad} answers were not 2xx")
    return times


# -- throughput -----------------------------------------------------------------------------------


async def _load(port: int, pool: list[bytes], clients: int, seconds: float) -> tuple[int, int, float]:
    """(answers, non-2xx answers, elapsed) from ``clients`` kept-alive connections."""
    stop_at = time.perf_counter() + seconds
    totals = [0, 0]

    async def one(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = bad = 0
        i = offset
        while time.perf_counter() < stop_at:
            writer.write(pool[i % len(pool)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status, length = parse_head(head)
            if length:
                await reader.readexactly(length)
            done += 1
            bad += not 200 <= status < 300
        writer.close()
        totals[0] += done
        totals[1] += bad

    started = time.perf_counter()
    await asyncio.gather(*(one(n * 97) for n in range(clients)))
    return totals[0], totals[1], time.perf_counter() - started


def throughput(port: int, pool: list[bytes], clients: int, seconds: float) -> tuple[float, int, int]:
    answers, bad, elapsed = asyncio.run(_load(port, pool, clients, seconds))
    return answers / elapsed, answers, bad


# -- main -----------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--upstream", choices=("minimal", "standin"), default="minimal", help="what stands in for ollama serve (default: minimal)"
    )
    parser.add_argument("--clients", type=int, default=8, help="kept-alive connections for throughput (default: 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput measure (default: 3)")
    parser.add_argument("--rounds", type=int, default=400, help="latency rounds (default: 400)")
    parser.add_argument(
        "--old",
        metavar="TREE",
        help="also run the gate and auth-only of another checkout (its package first "
        "on PYTHONPATH, this interpreter), alternating with this one: a before/after in one run",
    )
    parser.add_argument("--repeat", type=int, default=3, help="alternating throughput rounds (default: 3)")
    parser.add_argument("--serve-minimal", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=0, help=argparse.SUPPRESS)  # --serve-minimal: stream N chunks
    parser.add_argument("--gap", type=float, default=0.002, help=argparse.SUPPRESS)  # --serve-minimal: seconds between chunks
    args = parser.parse_args(argv)
    if args.serve_minimal:
        return serve_minimal(args.chunks, args.gap)

    work = tempfile.mkdtemp(prefix="och-gate-bench-")
    processes: list[Process] = []
    try:
        key = os.path.join(work, "id_ed25519")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        identity = load_identity(key)
        keys = os.path.join(work, "authorized_keys")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a.pub"), keys)  # full access, comment as name
        os.chmod(keys, 0o600)
        # A file changed in the last 2 s is reread on every request (authorized_keys.RACY_NS):
        # measure the steady state, a file last edited a minute ago.
        os.utime(keys, (time.time() - 60, time.time() - 60))
        env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_API_KEY", "HTTPS_PROXY", "HTTP_PROXY", "PYTHONPATH")}
        env.update(HOME=work, XDG_CACHE_HOME=os.path.join(work, ".cache"), XDG_CONFIG_HOME=os.path.join(work, ".config"))

        if args.upstream == "minimal":
            upstream = Process("upstream", [sys.executable, os.path.abspath(__file__), "--serve-minimal"], env, False)
        else:
            upstream = Process("upstream", [sys.executable, "-c", STANDIN], env, False)
        processes.append(upstream)
        exe = os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")
        common = ["--listen", "127.0.0.1:0", "--authorized-keys", keys, "--max-concurrency", "256"]
        gate = Process("gate", [exe, "gate", "--upstream", f"http://127.0.0.1:{upstream.port}", *common], env, True)
        processes.append(gate)
        auth = Process("auth-only", [exe, "gate", "--auth-only", *common], env, True)
        processes.append(auth)
        old = {}
        if args.old:
            tree = os.path.abspath(args.old)
            # "python -m" puts the working directory first on sys.path: run it in the tree.
            old_env, old_exe = {**env, "PYTHONPATH": tree}, [sys.executable, "-m", "credential_helper"]
            old["gate-old"] = Process(
                "gate-old",
                [*old_exe, "gate", "--upstream", f"http://127.0.0.1:{upstream.port}", *common],
                old_env,
                True,
                cwd=tree,
            )
            old["auth-old"] = Process("auth-old", [*old_exe, "gate", "--auth-only", *common], old_env, True, cwd=tree)
            processes.extend(old.values())
            print(f"old: {tree} (gate-old, auth-old)")
        print(f"upstream: {args.upstream} on port {upstream.port}")
        print(f"gate: {gate.banner}")
        print(f"auth-only: {auth.banner}")

        times = latency(identity, upstream.port, gate.port, auth.port, args.rounds) if args.rounds else {}
        if times:
            print(
                f"latency, small signed GET /api/tags, one at a time, kept-alive, {args.rounds} rounds (direct, gate, auth-only):"
            )
        for name, values in times.items():
            line = f"  {name:10} median {ms(statistics.median(values))}  p99 {ms(percentile(values, 0.99))}"
            if name != "direct":
                added = [v - d for v, d in zip(values, times["direct"])]
                line += f"   added: median {ms(statistics.median(added))}  p99 {ms(percentile(added, 0.99))}"
            print(line)

        # Pre-signed now; valid for the gate's 300 s skew window, far longer than the run.
        pools = [signed_tags(identity, gate.port) for _ in range(1000)]
        plain = [request for request, _ in pools]
        nginx = [auth_request for _, auth_request in pools]
        targets = {"direct": (upstream, plain), "gate": (gate, plain), "auth-only": (auth, nginx)}
        if old:  # each beside its counterpart
            targets = {
                "direct": (upstream, plain),
                "gate": (gate, plain),
                "gate-old": (old["gate-old"], plain),
                "auth-only": (auth, nginx),
                "auth-old": (old["auth-old"], nginx),
            }
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {"upstream (direct)": [], **{name: [] for name in targets if name != "direct"}}
        bad_total = 0
        for _ in range(args.repeat):  # alternate, so each gets the same share of the machine's noise
            for name, (process, pool) in targets.items():
                before = process.cpu_seconds()
                rate, answers, bad = throughput(process.port, pool, args.clients, args.seconds)
                bad_total += bad
                rates[name].append(rate)
                cpu["upstream (direct)" if name == "direct" else name].append((process.cpu_seconds() - before) / max(answers, 1))
        print(
            f"throughput, {args.clients} kept-alive clients, {args.seconds:g} s each, {args.repeat} alternating rounds (median round):"
        )
        print(
            "  "
            + "   ".join(f"{name} {statistics.median(values):,.0f}/s" for name, values in rates.items())
            + "   (rounds: "
            + "; ".join(f"{name} " + ", ".join(f"{v:,.0f}" for v in values) for name, values in rates.items())
            + ")"
        )
        print(
            "  server CPU per answer: "
            + "   ".join(f"{name} {statistics.median(values) * 1e6:.0f} us" for name, values in cpu.items())
        )
        if old:  # per round, each beside its counterpart, so the machine's noise mostly cancels
            for new_name, old_name in (("gate", "gate-old"), ("auth-only", "auth-old")):
                ratios = [n / o for n, o in zip(rates[new_name], rates[old_name])]
                print(
                    f"  {new_name} / {old_name}: median x{statistics.median(ratios):.2f} (rounds: "
                    + ", ".join(f"x{r:.2f}" for r in ratios)
                    + ")"
                )
        if bad_total:
            print(f"  WARNING: {bad_total} answers were not 2xx")
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

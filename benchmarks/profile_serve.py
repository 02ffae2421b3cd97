"""Where a served request's time goes: cProfile over an in-process server.Server.

    python benchmarks/profile_serve.py proxy|gate|auth-only [--seconds S] [--clients N] [--top K]

The engine runs in this process with the policy the command would build (the
proxy's SigningPolicy with the golden key, or the gate's GatePolicy /
AuthOnlyPolicy over an authorized_keys file), the loop's
thread (which serves every connection) profiled; gate_bench's minimal upstream and its asyncio load generator run in
child processes, so neither is in the profile. Prints requests/s and the
functions with the most cumulative and own time per request.
"""

import argparse
import cProfile
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

LOAD = """
import sys, time
sys.path.insert(0, {here!r})
import gate_bench
from credential_helper.identity import load_identity
mode, port, clients, seconds, key, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
if mode == "proxy":
    pool = [f"GET /api/tags HTTP/1.1\\r\\nHost: 127.0.0.1:{{port}}\\r\\nAuthorization: Bearer {{token}}\\r\\n\\r\\n".encode()]
else:
    identity = load_identity(key)
    pairs = [gate_bench.signed_tags(identity, port) for _ in range(500)]
    pool = [auth if mode == "auth-only" else plain for plain, auth in pairs]
rate, answers, bad = gate_bench.throughput(port, pool, clients, seconds)
print(answers, bad, rate)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("proxy", "gate", "auth-only"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    from credential_helper import protocol
    from credential_helper.serve import gate, server, sign
    from credential_helper.serve.authorized_keys import KeyFile
    from credential_helper.serve.limits import Limits
    from credential_helper.serve.upstream import Upstream

    work = tempfile.mkdtemp(prefix="och-profile-")
    upstream_process = None
    try:
        key = os.path.join(work, "id_ed25519")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a"), key)
        os.chmod(key, 0o600)
        keys = os.path.join(work, "authorized_keys")
        shutil.copy(os.path.join(ROOT, "golden", "keys", "ed25519-a.pub"), keys)
        os.chmod(keys, 0o600)
        os.utime(keys, (time.time() - 60, time.time() - 60))  # past authorized_keys.RACY_NS: no reread per request
        upstream_process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "gate_bench.py"), "--serve-minimal"], stdout=subprocess.PIPE, text=True
        )
        upstream_url = protocol.URL("http", f"127.0.0.1:{int(upstream_process.stdout.readline())}", "", "")

        lines: list[str] = []
        upstream = None if args.mode == "auth-only" else Upstream(upstream_url, 30, environ={})
        server = server.Server(("127.0.0.1", 0), None, upstream=upstream, log=lines.append, limits=Limits(in_flight=256))
        token = "t" * 43
        if args.mode == "proxy":
            server.policy = sign.SigningPolicy(sign.Signer(upstream_url, key, token), token, server.address)
        elif args.mode == "gate":
            server.policy = gate.GatePolicy(KeyFile(keys, lines.append), 300, upstream_url.host)
        else:
            server.policy = gate.AuthOnlyPolicy(KeyFile(keys, lines.append), 300)

        # One thread serves every connection (serve/loop.py): profile it whole.
        profile = cProfile.Profile()
        loop_thread = threading.Thread(target=profile.runcall, args=(server.serve_forever,), daemon=True)
        loop_thread.start()
        load = subprocess.run(
            [
                sys.executable,
                "-c",
                LOAD.format(here=HERE),
                args.mode,
                str(server.address[1]),
                str(args.clients),
                str(args.seconds),
                key,
                token,
            ],
            capture_output=True,
            text=True,
            timeout=args.seconds + 60,
        )
        if load.returncode != 0:
            print(load.stderr)
            return 1
        answers, bad, rate = load.stdout.split()
        server.stop_accepting()
        server.close()  # ends the loop, and its profile with it
        loop_thread.join(5)
        print(
            f"{args.mode}: {int(answers):,} answers ({bad} not 2xx), {float(rate):,.0f}/s with {args.clients} clients, "
            f"{len(lines):,} log lines; cProfile slows everything down, compare shares, not absolute times"
        )
        stats = pstats.Stats(profile)
        stats.sort_stats("cumulative").print_stats(args.top)
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        if upstream_process is not None:
            upstream_process.terminate()
            upstream_process.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

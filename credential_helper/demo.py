"""The whole flow on loopback, printing each step: ``python -m credential_helper.demo``.

A throwaway key in a temporary $HOME, the stand-in server on 127.0.0.1, then:
a registry request answered 401 with a Bearer challenge, ``get`` turning the
challenge into a token, the retry with that token, and a ``sign``-ed API call.
Needs no network, no Ollama and no API key; touches nothing outside a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from .standin import StandIn


def helper_command() -> list[str]:
    """The installed console script beside this interpreter, else ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "ollama-credential-helper")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-m", "credential_helper"]


def _show(step: str, text: str = "") -> None:
    print(f"\n== {step}")
    if text:
        print(text.rstrip())


def _hidden(secret: str) -> str:
    return f"{secret[:6]}... ({len(secret)} chars)"


def run() -> int:
    home = tempfile.mkdtemp(prefix="och-demo-")
    env = dict(os.environ, HOME=home, XDG_CACHE_HOME=os.path.join(home, ".cache"))
    env.pop("OLLAMA_API_KEY", None)
    helper = helper_command()

    def call(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
        shown = " ".join(["ollama-credential-helper", *args])
        print(f"$ {shown}" + (f"  <<< {stdin.strip()[:100]}" if stdin else ""))
        result = subprocess.run([*helper, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)
        if result.returncode != 0:
            raise SystemExit(f"demo failed: exit {result.returncode}: {result.stderr.strip()}")
        return result

    try:
        _show("1. create a throwaway identity (as 'ollama serve' would)")
        generated = call(["key", "--generate"])
        print(generated.stdout.rstrip())
        public_line = generated.stdout.splitlines()[0]

        with StandIn() as server:
            server.authorize(public_line, name="demo-user", email="demo@example.com", plan="free")
            _show("2. stand-in for ollama.com on loopback", f"{server.base_url} (this key is linked to 'demo-user')")

            manifest_url = f"{server.base_url}/v2/library/gpt-oss/manifests/latest"
            _show("3. registry request without credentials", f"GET {manifest_url}")
            try:
                urllib.request.urlopen(manifest_url, timeout=10)
                raise SystemExit("demo failed: expected 401")
            except urllib.error.HTTPError as exc:
                challenge = exc.headers["WWW-Authenticate"]
                print(f"-> {exc.code}, WWW-Authenticate: {challenge}")

            _show("4. challenge -> signed token request -> token")
            got = json.loads(call(["get", "--host", server.host], stdin=challenge).stdout)
            print(f"-> token {_hidden(got['token'])}, expires_at {got['expires_at']}, source {got['source']}")
            print(f"   (the stand-in verified the signature from the wire; exchanges so far: {server.exchanges})")

            _show("5. retry with the Bearer token")
            request = urllib.request.Request(manifest_url, headers={"Authorization": f"Bearer {got['token']}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                print(f"-> {response.status}: {response.read().decode()}")

            _show("6. the same challenge again: served from the token cache")
            again = json.loads(call(["get", "--host", server.host], stdin=challenge).stdout)
            print(f"-> same token: {again['token'] == got['token']}; exchanges so far: {server.exchanges}")

            _show("7. a directly signed API call (scheme 2): POST /api/me")
            signed = json.loads(call(["sign", "POST", f"{server.base_url}/api/me"]).stdout)
            print(f"-> url {signed['url']}, Authorization {_hidden(signed['authorization'])}")
            request = urllib.request.Request(
                signed["url"], data=b"", method="POST", headers={"Authorization": signed["authorization"]}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                print(f"-> {response.status}: {response.read().decode()}")

            _show("8. whoami: the account this key is linked to")
            env["OLLAMA_CLOUD_BASE_URL"] = server.base_url
            print("-> " + call(["whoami"]).stdout.strip())
        _show("done: 401 -> sign -> token -> Bearer, and a signed API call, all verified")
        return 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``--help`` prints what the demo does and exits; without arguments it runs."""
    parser = argparse.ArgumentParser(
        prog="python -m credential_helper.demo",
        description=(
            "Run the whole flow on loopback, printing each step: a throwaway key in a temporary "
            "$HOME, a stand-in for ollama.com on 127.0.0.1 that verifies signatures from the wire, "
            "a registry 401 -> signed token request -> token -> Bearer retry, and a signed API call. "
            "Needs no network, no Ollama and no API key; touches nothing outside a temporary directory."
        ),
        epilog="It takes no arguments. Exit 0 when every step was verified.",
    )
    parser.parse_args(argv)
    return run()


if __name__ == "__main__":
    sys.exit(main())

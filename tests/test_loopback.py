"""Issue 21: ``proxy --listen`` on any loopback address gives a proxy that answers
the URL ``--print-env`` prints for it (the rule is ``policy.loopback_names``).

Before, ``127.0.0.2:P`` and ``[0:0:0:0:0:0:0:1]:P`` were accepted and printed,
but the Host check knew only 127.0.0.1, localhost and [::1]: every request to
the printed URL got 403.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request

import pytest

import serving
from conftest import helper_executable
from credential_helper import policy

SPELLINGS = ["127.0.0.2", "127.45.6.7", "[0:0:0:0:0:0:0:1]", "[::0001]", "[::1]", "localhost", "LocalHost", "127.0.0.1"]


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_proxy_answers_the_url_it_prints(spelling, proxy_env, upstream):
    # Break caught: own_hosts with its old fixed names (127.0.0.2 and the long ::1 spelling got 403),
    # and parse_listen returning the spelling as given (--print-env printed [0:0:0:0:0:0:0:1]).
    bind = policy.loopback_names(spelling.strip("[]"))[0].strip("[]")
    listen = f"{spelling}:{free_port(bind)}"
    printed = subprocess.run(
        [*helper_executable(), "proxy", "--listen", listen, "--print-env"],
        env=proxy_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = dict(line[len("export ") :].split("=", 1) for line in printed.splitlines())
    base, token = exported["OLLAMA_HOST"], exported["OLLAMA_API_KEY"]
    with serving.running("proxy", "--upstream", upstream.base_url, env=proxy_env, listen=listen) as started:
        first = started.first_line
        assert first.startswith(f"listening on {base} "), (first, base)
        request = urllib.request.Request(f"{base}/api/me", data=b"", method="POST", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
        started.stop()
    assert status == 200 and len(upstream.signed_requests) == 1


@pytest.mark.parametrize(
    "spelling, names",
    [
        ("127.0.0.2", ("127.0.0.2",)),
        ("localhost", ("127.0.0.1", "localhost")),
        ("LOCALHOST", ("127.0.0.1", "localhost")),
        ("0:0:0:0:0:0:0:1", ("[::1]", "localhost")),
        ("::1", ("[::1]", "localhost")),
        ("127.0.0.01", ()),
        ("localhost.", ()),
        ("0.0.0.0", ()),
        ("::1%lo", ()),
        ("evil.example", ()),
    ],
)
def test_the_names_of_a_loopback_address(spelling, names):
    assert policy.loopback_names(spelling) == names

"""Issue 19, the gate as members and operators meet it day to day: the
certificate reloaded on SIGHUP without dropping connections, and
X-Forwarded-For set from the peer the gate saw."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl

import pytest

from faults import CertificateAuthority
from frontends import issue_certificate
from test_gate import both_keys_file, local_ollama, recorded, signed  # noqa: F401 (fixtures)


@pytest.mark.process
def test_client_address_headers_are_the_gates_own(recorded):  # noqa: F811
    # Break caught: dropping CLIENT_ADDRESS from the gate's filter (the client's X-Forwarded-For reaches
    # Ollama, whose gin takes ClientIP() from it), or not adding the peer.
    from test_gate import POSITIVES

    gate_, ollama, clock = recorded
    vector = POSITIVES[0]
    clock["now"] = vector["ts"]
    with socket.create_connection(("127.0.0.1", gate_.port), timeout=10) as sock:
        sock.sendall(
            f"{vector['method']} {vector['target']} HTTP/1.1\r\nHost: box\r\nAuthorization: {vector['authorization']}\r\n"
            "X-Forwarded-For: 6.6.6.6\r\nx-real-ip: 6.6.6.7\r\nX_Forwarded_For: 6.6.6.8\r\nForwarded: for=6.6.6.9\r\n"
            "X-Real_IP: 6.6.6.10\r\nConnection: close\r\n\r\n".encode()
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 ")
    ((_, head, _),) = ollama.requests
    fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line]
    assert b"6.6.6." not in head and not [
        name for name, _ in fields if name.lower() in (b"x-real-ip", b"forwarded", b"x_forwarded_for")
    ]
    assert [value.strip() for name, value in fields if name.lower() == b"x-forwarded-for"] == [b"127.0.0.1"]


def trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    # Python 3.13 sets VERIFY_X509_STRICT, which wants an Authority Key Identifier that
    # tests/frontends.issue_certificate does not write; what is tested here is which certificate is served.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    return context


def _get(conn: http.client.HTTPSConnection, keys) -> int:
    target, authorization = signed(keys, "GET", "/api/tags")
    conn.request("GET", target, headers={"Authorization": authorization, "Host": "localhost"})
    response = conn.getresponse()
    response.read()
    return response.status


def test_sighup_reloads_the_certificate_for_new_connections_and_keeps_open_ones(tmp_path, start_gate, local_ollama, keys):  # noqa: F811
    # Break caught: a reload that only rereads authorized_keys (the new connection still gets the old
    # certificate), and one that replaced the listening socket (the open connection would be dropped).
    for name in ("old-ca", "new-ca", "box"):
        (tmp_path / name).mkdir()
    old_ca, new_ca = CertificateAuthority(tmp_path / "old-ca"), CertificateAuthority(tmp_path / "new-ca")
    cert, key = issue_certificate(old_ca, tmp_path / "box", "localhost")
    gate_ = start_gate(
        "--upstream",
        local_ollama.base_url,
        "--authorized-keys",
        both_keys_file(tmp_path),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    trusts_old, trusts_new = trusting(old_ca), trusting(new_ca)
    kept = http.client.HTTPSConnection("localhost", gate_.port, context=trusts_old, timeout=10)
    assert _get(kept, keys) == 200
    sock = kept.sock

    issue_certificate(new_ca, tmp_path / "box", "localhost")  # certbot renews the files in place
    gate_.process.send_signal(signal.SIGHUP)
    gate_.wait_for(lambda line: "reloaded" in line and "fullchain.pem" in line)

    assert _get(kept, keys) == 200 and kept.sock is sock  # the open connection goes on, with its certificate
    fresh = http.client.HTTPSConnection("localhost", gate_.port, context=trusts_new, timeout=10)
    assert _get(fresh, keys) == 200
    stale = http.client.HTTPSConnection("localhost", gate_.port, context=trusts_old, timeout=10)
    try:
        _get(stale, keys)
        raise AssertionError("a new connection still got the old certificate")
    except ssl.SSLCertVerificationError:
        pass
    kept.close(), fresh.close()


@pytest.mark.parametrize("broken", ["--tls-cert", "--tls-key"])
def test_a_broken_renewal_keeps_the_previous_certificate(tmp_path, start_gate, local_ollama, keys, broken):  # noqa: F811
    (tmp_path / "ca").mkdir(), (tmp_path / "box").mkdir()
    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = issue_certificate(ca, tmp_path / "box", "localhost")
    gate_ = start_gate(
        "--upstream",
        local_ollama.base_url,
        "--authorized-keys",
        both_keys_file(tmp_path),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    conn = http.client.HTTPSConnection("localhost", gate_.port, context=trusting(ca), timeout=10)
    assert _get(conn, keys) == 200  # serving, so its SIGHUP handler is in place
    conn.close()
    damaged = cert if broken == "--tls-cert" else key
    damaged.write_text("half a file\n")
    gate_.process.send_signal(signal.SIGHUP)
    line = gate_.wait_for("previous certificate", timeout=10)
    # The file at fault is named, not OpenSSL's bare "[SSL] PEM lib".
    assert line.startswith(f"warning: cannot use {broken} {damaged}:") and "PEM lib" not in line and "half a file" not in line, (
        line
    )
    conn = http.client.HTTPSConnection("localhost", gate_.port, context=trusting(ca), timeout=10)
    assert _get(conn, keys) == 200
    conn.close()


@pytest.mark.parametrize(
    "case", ["missing-cert", "missing-key", "garbage-cert", "garbage-key", "key-as-cert", "other-key", "fifo-cert", "fifo-key"]
)
def test_a_tls_file_the_gate_cannot_use_is_named_at_start(run, tmp_path, case):
    (tmp_path / "ca").mkdir(), (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    ca = CertificateAuthority(tmp_path / "ca")
    cert, key = issue_certificate(ca, tmp_path / "one", "localhost")
    _, other_key = issue_certificate(ca, tmp_path / "two", "localhost")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    missing = tmp_path / "nope.pem"
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)  # OpenSSL opens it blocking: the gate would wait for a writer forever
    given, named = {
        "fifo-cert": ((fifo, key), f"cannot use --tls-cert {fifo}: not a regular file"),
        "fifo-key": ((cert, fifo), f"cannot use --tls-key {fifo}: not a regular file"),
        "missing-cert": ((missing, key), f"cannot read --tls-cert {missing}: No such file or directory"),
        "missing-key": ((cert, missing), f"cannot read --tls-key {missing}: No such file or directory"),
        "garbage-cert": ((garbage, key), f"cannot use --tls-cert {garbage}: it holds no PEM certificate"),
        "garbage-key": ((cert, garbage), f"cannot use --tls-key {garbage}: it holds no unencrypted PEM private key"),
        "key-as-cert": ((key, key), f"cannot use --tls-cert {key}: it holds no PEM certificate"),
        "other-key": ((cert, other_key), f"--tls-key {other_key} is not the private key of --tls-cert {cert}"),
    }[case]
    result = run(
        [
            "gate",
            "--listen",
            "127.0.0.1:0",
            "--authorized-keys",
            both_keys_file(tmp_path),
            "--tls-cert",
            str(given[0]),
            "--tls-key",
            str(given[1]),
        ]
    )
    assert result.code == 2 and named in result.err and result.err.count("\n") == 1, result.err


def test_sighup_as_soon_as_the_listening_line_is_read_reloads(tmp_path, start_gate, local_ollama, keys):  # noqa: F811
    # A supervisor may send SIGHUP the moment it reads the listening line: the gate must reload,
    # not die of SIGHUP's default action. (The ordering itself is pinned in-process below.)
    path = both_keys_file(tmp_path, extra="ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ skipped-rsa-key\n" * 2000)
    gate_ = start_gate("--upstream", local_ollama.base_url, "--authorized-keys", path)
    gate_.process.send_signal(signal.SIGHUP)
    lines = [gate_.next_line() for _ in range(2000)]
    assert all("unsupported key type 'ssh-rsa'" in line for line in lines), f"exit {gate_.process.poll()}: {lines[-1]!r}"
    gate_.wait_for(f"reloaded {path}:")  # the reload warns of the same lines again, then says so
    assert gate_.process.poll() is None
    target, authorization = signed(keys, "GET", "/api/tags")
    conn = http.client.HTTPConnection("127.0.0.1", gate_.port, timeout=10)
    conn.request("GET", target, headers={"Authorization": authorization})
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.process
def test_the_listening_line_is_printed_only_once_sighup_is_handled(tmp_path, monkeypatch, capfd):
    # Deterministic form of the test above: serve_gate in this (main) thread; when the listening
    # line is out (the ready callback runs after it), SIGHUP and the stop signals must be ours.
    from credential_helper.serve import commands

    path = both_keys_file(tmp_path)
    seen = {}

    def ready(server):
        seen["sighup"] = signal.getsignal(signal.SIGHUP)
        seen["sigterm"] = signal.getsignal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # and stop

    code = commands.serve_gate(
        listen="127.0.0.1:0",
        upstream_text="http://127.0.0.1:9",
        auth_only=False,
        authorized_keys=str(path),
        max_skew=300,
        tls_cert=None,
        tls_key=None,
        timeout=5,
        max_in_flight=4,
        grace=1,
        verbose=False,
        ready=ready,
    )
    assert code == 0
    assert seen["sighup"] not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert seen["sigterm"] not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # put back after the stop

"""Every outbound TLS connection is verified through the system trust store
(``truststore``), and SSL_CERT_FILE still wins.

On Linux truststore reads OpenSSL's store, so a private CA handed to it with
SSL_CERT_DIR (a directory named by ``openssl x509 -hash``, as c_rehash makes
it) is trusted, another CA is refused and the host name is checked. That these
connections go through truststore, and not through a plain OpenSSL context
that reads SSL_CERT_DIR too, is recorded by a spy the test puts on
PYTHONPATH around ``truststore.SSLContext``.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap

import pytest

import serving
from conftest import assert_one_line_error, helper_executable
from credential_helper.standin import StandIn
from faults import CertificateAuthority

SPY = textwrap.dedent(
    """
    import os, truststore

    class _Spy(truststore.SSLContext):
        def __init__(self, *args, **kwargs):
            with open(os.environ["TRUSTSTORE_SPY"], "a") as log:
                log.write("truststore\\n")
            super().__init__(*args, **kwargs)

    truststore.SSLContext = _Spy
    """
)


def hashed_directory(ca: CertificateAuthority, directory) -> str:
    """The CA under the name OpenSSL looks up in a CApath: <subject hash>.0."""
    digest = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(ca.ca_file)], capture_output=True, text=True, check=True
    ).stdout.strip()
    directory.mkdir()
    shutil.copy(ca.ca_file, directory / f"{digest}.0")
    return str(directory)


@pytest.fixture
def trusted(tmp_path):
    (tmp_path / "ca").mkdir()
    ca = CertificateAuthority(tmp_path / "ca")
    return ca, hashed_directory(ca, tmp_path / "capath")


@pytest.fixture
def stranger(tmp_path):
    (tmp_path / "other-ca").mkdir()
    ca = CertificateAuthority(tmp_path / "other-ca")
    return ca, hashed_directory(ca, tmp_path / "other-capath")


@pytest.fixture
def spied(env, tmp_path):
    directory = tmp_path / "spy"
    directory.mkdir()
    (directory / "sitecustomize.py").write_text(SPY)
    log = tmp_path / "spy.log"
    environment = {k: v for k, v in env.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    environment.update(PYTHONPATH=str(directory), TRUSTSTORE_SPY=str(log))
    return environment, log


def used_truststore(log) -> int:
    return log.read_text().count("truststore") if log.exists() else 0


def tls_standin(ca, public_line, names=(), ips=("127.0.0.1",)):
    server = StandIn(tls_context=ca.server_context(list(names), list(ips)))
    server.authorize(public_line("ed25519-a"), name="jdoe", plan="pro")
    return server


def run_path(path: str, server: StandIn, environment: dict) -> subprocess.CompletedProcess:
    """One outbound path of the CLI against ``server``."""
    realm = f"{server.base_url}/token"
    if path == "get":
        args, stdin = (
            ["get", "--no-cache"],
            json.dumps({"realm": realm, "service": "ollama.com", "scope": "repository:library/x:pull"}),
        )
    elif path == "probe":  # the URL form of get's input: the helper asks the URL for its challenge
        args, stdin = ["get", "--no-cache"], f"{server.base_url}/v2/library/x/manifests/latest"
    elif path == "whoami":
        args, stdin = ["whoami"], ""
    else:
        args, stdin = ["doctor", "--json", "--registry", server.base_url], ""
    environment = dict(environment, OLLAMA_CLOUD_BASE_URL=server.base_url)
    return subprocess.run([*helper_executable(), *args], input=stdin, capture_output=True, text=True, env=environment, timeout=60)


def succeeded(path: str, completed: subprocess.CompletedProcess) -> bool:
    if path != "doctor":
        return completed.returncode == 0
    checks = {c["name"]: c for c in json.loads(completed.stdout)["checks"]}
    return all(checks[n]["status"] == "ok" for n in ("network (API)", "network (registry)", "link", "registry"))


PATHS = ["get", "probe", "whoami", "doctor"]


@pytest.mark.process
@pytest.mark.parametrize("path", PATHS)
def test_a_ca_in_the_system_store_is_trusted_through_truststore(path, trusted, spied, public_line):
    # Break caught: tls_context returning ssl.create_default_context() (the spy sees nothing).
    ca, capath = trusted
    environment, log = spied
    with tls_standin(ca, public_line) as server:
        completed = run_path(path, server, dict(environment, SSL_CERT_DIR=capath))
    assert succeeded(path, completed), completed
    assert used_truststore(log) >= 1


@pytest.mark.process
@pytest.mark.parametrize("path", PATHS)
def test_an_unknown_ca_is_refused(path, trusted, stranger, spied, public_line):
    # Break caught: a context with verify_mode CERT_NONE.
    ca, _ = trusted
    _, other_capath = stranger
    environment, log = spied
    with tls_standin(ca, public_line) as server:
        completed = run_path(path, server, dict(environment, SSL_CERT_DIR=other_capath))
        assert server.exchanges == 0
    if path == "doctor":
        checks = {c["name"]: c for c in json.loads(completed.stdout)["checks"]}
        assert (
            checks["network (API)"]["status"] == "fail" and "certificate verification failed" in checks["network (API)"]["detail"]
        )
    else:
        assert completed.returncode == 4, completed
        assert "certificate verification failed" in completed.stderr and len(completed.stderr.splitlines()) == 1
    assert used_truststore(log) >= 1


@pytest.mark.process
@pytest.mark.parametrize("path", ["get", "whoami"])
def test_the_host_name_is_checked(path, trusted, spied, public_line):
    # Break caught: check_hostname = False on the context.
    ca, capath = trusted
    environment, _ = spied
    with tls_standin(ca, public_line, names=["other.example"], ips=()) as server:
        completed = run_path(path, server, dict(environment, SSL_CERT_DIR=capath))
        assert server.exchanges == 0
    assert completed.returncode == 4, completed
    assert "TLS failure" in completed.stderr and "127.0.0.1" in completed.stderr


@pytest.mark.process
@pytest.mark.parametrize("path", ["get", "whoami"])
def test_ssl_cert_file_wins(path, trusted, stranger, spied, public_line):
    # Break caught: ignoring SSL_CERT_FILE (truststore is used and the spy sees it).
    ca, capath = trusted
    other, _ = stranger
    environment, log = spied
    with tls_standin(ca, public_line) as server:
        good = run_path(path, server, dict(environment, SSL_CERT_FILE=str(ca.ca_file)))
        bad = run_path(path, server, dict(environment, SSL_CERT_FILE=str(other.ca_file)))
    assert good.returncode == 0, good
    assert bad.returncode == 4 and "certificate verification failed" in bad.stderr, bad
    assert used_truststore(log) == 0


def test_tls_context_in_process(monkeypatch, tmp_path):
    import truststore

    from credential_helper import transport

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    context = transport.tls_context()
    assert isinstance(context, truststore.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    (tmp_path / "ca").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(CertificateAuthority(tmp_path / "ca").ca_file))
    context = transport.tls_context()
    assert not isinstance(context, truststore.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_fifo_at_ssl_cert_file_is_still_refused(run, env, tmp_path):
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    result = run(["whoami"], environment=dict(env, SSL_CERT_FILE=str(fifo)), timeout=30)
    assert_one_line_error(result, 4)
    assert "SSL_CERT_FILE" in result.err


@pytest.mark.process
def test_a_cache_hit_imports_no_tls(env, public_line):
    # Break caught: importing truststore (or transport, or ssl) at the top of system.py or cache.py.
    with StandIn() as server:
        server.authorize(public_line("ed25519-a"))
        stdin = json.dumps({"realm": f"{server.base_url}/token", "service": "ollama.com", "scope": "repository:library/x:pull"})
        assert subprocess.run([*helper_executable(), "get"], input=stdin, text=True, env=env, capture_output=True).returncode == 0
        probe = (
            "import sys, json\n"
            "from credential_helper.cli import main\n"
            "code = main(['get'])\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('truststore', 'ssl', '_ssl', 'cryptography', 'urllib3', 'argparse')"
            " or m == 'credential_helper.transport')\n"
            "sys.stderr.write(json.dumps({'code': code, 'loaded': loaded}))\n"
        )
        completed = subprocess.run([sys.executable, "-c", probe], input=stdin, text=True, env=env, capture_output=True)
        assert server.exchanges == 1
    assert json.loads(completed.stderr) == {"code": 0, "loaded": []}


def serve_through(kind: str, server: StandIn, environment: dict, tmp_path) -> tuple[int, str, str]:
    """One request through the installed proxy or gate, whose upstream is ``server`` (https)."""
    import time
    import urllib.error
    import urllib.request

    from credential_helper.identity import load_identity

    environment = dict(environment, XDG_CONFIG_HOME=str(tmp_path / "config"))
    if kind == "proxy":
        args = ["proxy", "--no-local-token", "--upstream", server.base_url]
    else:
        keys = tmp_path / "authorized_keys"
        keys.write_text(
            subprocess.run([*helper_executable(), "key"], env=environment, capture_output=True, text=True, check=True).stdout
        )
        os.chmod(keys, 0o600)
        args = ["gate", "--authorized-keys", str(keys), "--upstream", server.base_url]
    with serving.running(*args, env=environment) as started:
        first, port = started.first_line, started.port
        target = "/api/me"
        headers = {}
        if kind == "gate":
            target = f"/api/me?ts={int(time.time())}"
            identity = load_identity(os.path.join(environment["HOME"], ".ollama", "id_ed25519"))
            headers["Authorization"] = identity.sign(f"POST,{target}")
        request = urllib.request.Request(f"http://127.0.0.1:{port}{target}", data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = response.status, response.read().decode(), first
        except urllib.error.HTTPError as err:
            answer = err.code, err.read().decode(), first
        started.stop()
    return answer


@pytest.mark.process
@pytest.mark.parametrize("kind", ["proxy", "gate"])
def test_the_proxys_and_gates_upstream_tls_goes_through_truststore(kind, trusted, stranger, spied, public_line, tmp_path):
    ca, capath = trusted
    _, other_capath = stranger
    environment, log = spied
    with tls_standin(ca, public_line) as server:
        if kind == "gate":
            server.verify_signatures = False  # a self-hosted Ollama checks nothing itself
        status, _, _ = serve_through(kind, server, dict(environment, SSL_CERT_DIR=capath), tmp_path)
        assert status == 200 and used_truststore(log) >= 1
        status, body, _ = serve_through(kind, server, dict(environment, SSL_CERT_DIR=other_capath), tmp_path)
        assert status == 502 and "certificate verification failed" in json.loads(body)["error"]
    with tls_standin(ca, public_line, names=["other.example"], ips=()) as misnamed:
        if kind == "gate":
            misnamed.verify_signatures = False
        status, body, _ = serve_through(kind, misnamed, dict(environment, SSL_CERT_DIR=capath), tmp_path)
        assert status == 502 and "127.0.0.1" in json.loads(body)["error"]

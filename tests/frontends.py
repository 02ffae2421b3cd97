"""Real nginx and Caddy on loopback, configured with the README's own blocks, in
front of the installed ``gate --auth-only`` (issue 15).

The configurations are the README's fenced blocks after ``<!-- gate-nginx.conf -->``
and ``<!-- gate-Caddyfile -->``, so the text people copy is the text that runs. Only the values a
test must own are replaced: ports, certificate paths, the server name; each
replacement must find its literal, so a changed block fails instead of running
half-substituted.
"""

from __future__ import annotations

import datetime
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import serving
from conftest import ROOT

SERVER_NAME = "ollama.example.com"
# The values the blocks are written with (an operator's defaults) and that a test replaces.
OLLAMA_PORT = "11434"
GATE_PORT = "11435"
CERT_PATH = "/etc/ssl/ollama/fullchain.pem"
KEY_PATH = "/etc/ssl/ollama/privkey.pem"
DOCUMENTS = ("README.md",)


def config_block(marker: str) -> tuple[str, str]:
    """(text of the fenced block after ``<!-- marker -->``, the file it came from)."""
    pattern = re.compile(r"<!-- " + re.escape(marker) + r" -->\s*\n```[\w-]*\n(.*?)\n```", re.S)
    for name in DOCUMENTS:
        path = ROOT / name
        if path.exists():
            found = pattern.search(path.read_text())
            if found:
                return found.group(1) + "\n", name
    raise AssertionError(f"no block marked <!-- {marker} --> in {' or '.join(DOCUMENTS)}")


def substitute(text: str, replacements: dict[str, str]) -> str:
    for literal, value in replacements.items():
        assert literal in text, f"the configuration no longer contains {literal!r}"
        text = text.replace(literal, value)
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_binary(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not found:
        pytest.skip(f"{name} is not installed (.ci/run installs Debian's {name} with apt-get)")
    return found


def issue_certificate(ca, directory: Path, name: str) -> tuple[Path, Path]:
    """A leaf certificate for ``name`` from the test CA (tests/faults.py), as files."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_file, key_file = directory / "fullchain.pem", directory / "privkey.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_file, 0o600)
    return cert_file, key_file


def wait_for_port(port: int, process: subprocess.Popen, what: str, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{read_log(log)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g}s:\n{read_log(log)}")


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# --- the gate ----------------------------------------------------------------------------------


class Gate:
    """``ollama-credential-helper gate --auth-only`` as installed, on a free loopback port."""

    def __init__(self, authorized_keys: Path, environment: dict[str, str], *extra: str) -> None:
        self.running = serving.start(
            "gate",
            "--auth-only",
            "--authorized-keys",
            str(authorized_keys),
            *extra,
            env=environment,
            expect="listening on http://127.0.0.1:",
        )
        self.process, self.first_line, self.port = self.running.process, self.running.first_line, self.running.port

    def ask(self, headers: dict[str, str], path: str = "/_gate") -> tuple[int, dict[str, str], bytes]:
        """One auth request straight to the gate, as a front server would make it."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    @property
    def log(self) -> list[str]:
        return self.running.log

    def stop(self) -> list[str]:
        return self.running.stop()


class Relay:
    """A loopback TCP relay before the gate that keeps every byte the front server
    sent it: the auth requests as they were on the wire (they have no bodies)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent: list[bytearray] = []
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def heads(self) -> list[dict[str, list[str]]]:
        """Each request head: lower-cased header name -> values, plus ':target'."""
        found = []
        for data in list(self.sent):
            for head in bytes(data).split(b"\r\n\r\n")[:-1]:
                lines = head.decode("latin-1").split("\r\n")
                parsed: dict[str, list[str]] = {":target": [lines[0].split(" ")[1]]}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    parsed.setdefault(name.strip().lower(), []).append(value.strip())
                found.append(parsed)
        return found

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()  # the gate is down: the front server sees a refused hop
                continue
            record = bytearray()
            self.sent.append(record)
            threading.Thread(target=self._pump, args=(client, server, record), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            source.settimeout(None)
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if record is not None:
                    record += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class RawUpstream:
    """A loopback "Ollama" that keeps every byte the front server forwards to it
    (heads and bodies), answering each request head ``200`` with an empty body.

    Used where the question is what reaches Ollama at all: a body, a forged header,
    a placeholder. It reads for ``linger`` seconds after each head, so that a body
    sent behind it (even one the framing does not announce) is recorded too.
    """

    def __init__(self, linger: float = 0.3) -> None:
        self.linger = linger
        self.received: list[bytearray] = []
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def heads(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """(request line, [(name, value), ...]) of each request head received."""
        found = []
        for data in list(self.received):
            for chunk in bytes(data).split(b"\r\n\r\n"):
                lines = chunk.decode("latin-1").split("\r\n")
                if lines and " HTTP/1." in lines[0]:
                    found.append((lines[0], [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]))
        return found

    def everything(self) -> bytes:
        return b"".join(bytes(data) for data in self.received)

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            record = bytearray()
            self.received.append(record)
            threading.Thread(target=self._serve, args=(client, record), daemon=True).start()

    def _serve(self, client: socket.socket, record: bytearray) -> None:
        answered = 0
        try:
            client.settimeout(self.linger)
            while True:
                try:
                    data = client.recv(65536)
                except TimeoutError:
                    data = None
                if data == b"":
                    return
                if data:
                    record += data
                heads = bytes(record).count(b"\r\n\r\n")
                if data is None and heads > answered:
                    for _ in range(heads - answered):
                        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n")
                    answered = heads
                client.settimeout(self.linger if heads > answered else 30)
        except OSError:
            pass
        finally:
            client.close()

    def stop(self) -> None:
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# --- the front servers --------------------------------------------------------------------------


class FrontServer:
    """A running nginx or Caddy; ``base`` is its https URL under SERVER_NAME."""

    name = ""
    process: subprocess.Popen
    log_file: Path

    def __init__(self, directory: Path, ca_file: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.ca_file = ca_file
        self.base = f"https://{SERVER_NAME}:{port}"

    def connection(self, timeout: float = 30) -> http.client.HTTPSConnection:
        return _PinnedConnection(SERVER_NAME, self.port, ssl.create_default_context(cafile=str(self.ca_file)), timeout)

    def request(self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes | None = None):
        """(status, lower-cased headers, body) for one request over TLS."""
        connection = self.connection()
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def stream(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, list[tuple[float, bytes]]]:
        """(status, [(seconds since the request was sent, line), ...]) reading line by line."""
        connection = self.connection()
        try:
            connection.request(method, target, body=body, headers=headers)
            sent = time.monotonic()
            response = connection.getresponse()
            lines = []
            while True:
                line = response.readline()
                if not line:
                    break
                lines.append((time.monotonic() - sent, line))
            return response.status, lines
        finally:
            connection.close()

    def stop(self) -> None:
        stop_process(self.process)

    def error_log(self) -> str:
        return read_log(self.log_file)


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS to SERVER_NAME (SNI, Host, certificate check) at 127.0.0.1, with no DNS."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def _replacements(ollama_port: int, gate_port: int, cert: Path, key: Path) -> dict[str, str]:
    return {OLLAMA_PORT: str(ollama_port), GATE_PORT: str(gate_port), CERT_PATH: str(cert), KEY_PATH: str(key)}


class Nginx(FrontServer):
    name = "nginx"

    def __init__(self, directory: Path, ca, ollama_port: int, gate_port: int) -> None:
        binary = find_binary("nginx")
        directory.mkdir()
        cert, key = issue_certificate(ca, directory, SERVER_NAME)
        super().__init__(directory, ca.ca_file, free_port())
        block, self.source = config_block("gate-nginx.conf")
        replacements = _replacements(ollama_port, gate_port, cert, key)
        replacements["listen 443 ssl;"] = f"listen 127.0.0.1:{self.port} ssl;"
        self._run(binary, substitute(block, replacements))

    def _run(self, binary: str, site: str) -> None:
        directory = self.directory
        (directory / "ollama.conf").write_text(site)
        self.log_file = directory / "error.log"
        temp = {kind: directory / kind for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
        # What Debian's /etc/nginx/nginx.conf provides around conf.d/*.conf, in the test's directory.
        (directory / "nginx.conf").write_text(
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"worker_processes 1;\nerror_log {self.log_file} info;\npid {directory / 'nginx.pid'};\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"    access_log {directory / 'access.log'};\n"
            + "".join(f"    {kind}_temp_path {path};\n" for kind, path in temp.items())
            + f"    include {directory / 'ollama.conf'};\n"
            "}\n"
        )
        test = subprocess.run(
            [binary, "-t", "-p", str(directory), "-c", str(directory / "nginx.conf")], capture_output=True, text=True
        )
        assert test.returncode == 0, f"nginx -t refused the {self.source} configuration:\n{test.stderr}"
        self.process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(directory / "stderr.log", "w"),
        )
        wait_for_port(self.port, self.process, "nginx", self.log_file)


# ingress-nginx's external-auth directives, as its controller renders them from
# rootfs/etc/nginx/template/nginx.tmpl (kubernetes/ingress-nginx at dbb11b92, lines cited)
# for an Ingress with the README's annotations. Only what the template sets is here;
# its Lua balancer, caches and snippets are left out (they touch neither the auth
# request's headers nor what reaches Ollama).
INGRESS_AUTH_PATH = "/_external-auth-Lw-Prefix"  # template.go buildAuthLocation: base64url(path) and pathType


def ingress_nginx_site(
    port: int, cert: Path, key: Path, ollama_port: int, gate_url: str, response_headers: list[str], auth_method: str | None = None
) -> str:
    annotation_method = (
        (
            # nginx.tmpl 1050-1054: only with nginx.ingress.kubernetes.io/auth-method
            f"        proxy_method                {auth_method};\n"
            "        proxy_set_header            X-Original-URI          $request_uri;\n"
            "        proxy_set_header            X-Scheme                $scheme;\n"
        )
        if auth_method
        else ""
    )
    # template.go buildAuthResponseHeaders (599-617), for nginx.ingress.kubernetes.io/auth-response-headers
    copied = "".join(
        f"        auth_request_set $authHeader{i} $upstream_http_{name.lower().replace('-', '_')};\n"
        f"        proxy_set_header '{name}' $authHeader{i};\n"
        for i, name in enumerate(response_headers)
    )
    return (
        f"upstream ollama {{\n    server 127.0.0.1:{ollama_port};\n}}\n\n"
        "server {\n"
        f"    listen 127.0.0.1:{port} ssl;\n"
        f"    server_name {SERVER_NAME};\n"
        f"    ssl_certificate     {cert};\n"
        f"    ssl_certificate_key {key};\n"
        f"    location = {INGRESS_AUTH_PATH} {{\n"  # nginx.tmpl 1007
        "        internal;\n"
        # nginx.tmpl 1044-1048
        "        proxy_intercept_errors      off;\n"
        "        proxy_pass_request_body     off;\n"
        '        proxy_set_header            Content-Length          "";\n'
        '        proxy_set_header            X-Forwarded-Proto       "";\n'
        "        proxy_set_header            X-Request-ID            $request_id;\n" + annotation_method +
        # nginx.tmpl 1056-1065: Host is the auth-url's; the rest always
        "        proxy_set_header            Host                    ollama-gate.ollama.svc;\n"
        "        proxy_set_header            X-Original-URL          $scheme://$http_host$request_uri;\n"
        "        proxy_set_header            X-Original-Method       $request_method;\n"
        '        proxy_set_header            X-Sent-From             "nginx-ingress-controller";\n'
        "        proxy_set_header            X-Real-IP               $remote_addr;\n"
        "        proxy_set_header            X-Forwarded-For        $remote_addr;\n"
        "        proxy_set_header            X-Auth-Request-Redirect $request_uri;\n"  # nginx.tmpl 1070
        "        proxy_buffering                         off;\n"
        "        proxy_ssl_server_name       on;\n"
        "        proxy_pass_request_headers  on;\n"  # nginx.tmpl 1086: the client's headers go to the gate
        "        proxy_http_version 1.1;\n"  # nginx.tmpl 1122
        f"        set $target {gate_url};\n"
        "        proxy_pass $target;\n"  # nginx.tmpl 1123-1125
        "    }\n"
        "    location / {\n"
        f"        auth_request        {INGRESS_AUTH_PATH};\n"  # nginx.tmpl 1236-1238
        "        auth_request_set    $auth_cookie $upstream_http_set_cookie;\n"
        "        add_header          Set-Cookie $auth_cookie;\n" + copied + "        proxy_http_version 1.1;\n"
        "        proxy_buffering off;\n"
        "        proxy_pass http://ollama;\n"
        "    }\n"
        "}\n"
    )


class IngressNginx(Nginx):
    """Real nginx running ingress-nginx's external-auth directives (see ingress_nginx_site)."""

    name = "ingress-nginx"

    def __init__(
        self, directory: Path, ca, ollama_port: int, gate_port: int, response_headers: list[str], auth_method: str | None = None
    ) -> None:
        binary = find_binary("nginx")
        directory.mkdir()
        cert, key = issue_certificate(ca, directory, SERVER_NAME)
        FrontServer.__init__(self, directory, ca.ca_file, free_port())
        self.source = "ingress-nginx's nginx.tmpl"
        self._run(
            binary,
            ingress_nginx_site(
                self.port, cert, key, ollama_port, f"http://127.0.0.1:{gate_port}/_gate", response_headers, auth_method
            ),
        )


class Caddy(FrontServer):
    name = "caddy"

    def __init__(self, directory: Path, ca, ollama_port: int, gate_port: int) -> None:
        binary = find_binary("caddy")
        directory.mkdir()
        cert, key = issue_certificate(ca, directory, SERVER_NAME)
        super().__init__(directory, ca.ca_file, free_port())
        block, self.source = config_block("gate-Caddyfile")
        site = substitute(block, _replacements(ollama_port, gate_port, cert, key))
        data = directory / "data"
        # Global options for the test only: no admin endpoint, the test's ports, HTTP/1.1
        # and HTTP/2 (no UDP listener), nothing written outside the directory.
        caddyfile = (
            "{\n"
            "    admin off\n"
            f"    http_port {free_port()}\n"
            f"    https_port {self.port}\n"
            "    auto_https disable_redirects\n"
            "    skip_install_trust\n"
            f"    storage file_system {{\n        root {data}\n    }}\n"
            "    servers {\n        protocols h1 h2\n    }\n"
            "}\n\n" + site
        )
        (directory / "Caddyfile").write_text(caddyfile)
        self.log_file = directory / "caddy.log"
        environment = {key: value for key, value in os.environ.items() if not key.startswith(("XDG_", "CADDY"))}
        environment.update(HOME=str(directory), XDG_DATA_HOME=str(data), XDG_CONFIG_HOME=str(directory / "config"))
        self.process = subprocess.Popen(
            [binary, "run", "--config", str(directory / "Caddyfile"), "--adapter", "caddyfile"],
            env=environment,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_file, "w"),
        )
        wait_for_port(self.port, self.process, "caddy", self.log_file)
        # Listening is not yet serving: wait for a complete TLS exchange with the test's certificate.
        deadline = time.monotonic() + 15
        while True:
            try:
                self.request("GET", "/_frontends_ready")
                return
            except (OSError, ssl.SSLError, http.client.HTTPException):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"caddy did not serve TLS:\n{self.error_log()}")
                time.sleep(0.1)

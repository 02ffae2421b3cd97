"""``gate --auth-only``: where the method and target of the request to check come from.

Header families (nginx, ingress-nginx, Caddy, Traefik) and the auth request's own
request line after ``--path-prefix`` (Envoy's ext_authz HTTP service). Signatures
are made with the ``cryptography`` package directly over the golden test keys,
never by this project's signer, so a refusal is for the fault under test.

The shapes come from the front servers' sources, not from this project:
- ingress-nginx, ``rootfs/etc/nginx/template/nginx.tmpl`` (kubernetes/ingress-nginx
  dbb11b9), the ``location = {{ $authPath }}`` block: ``X-Original-URL
  $scheme://$http_host$request_uri`` and ``X-Original-Method $request_method``
  always, ``X-Original-URI $request_uri`` only under ``{{ if $externalAuth.Method }}``
  (the auth-method annotation), and ``proxy_pass_request_headers on``;
- Envoy, ``api/envoy/extensions/filters/http/ext_authz/v3/ext_authz.proto``
  (``HttpService.path_prefix``: "Sets a prefix to the value of authorization request
  header Path"; ``allowed_headers``: Host, Method, Path, Content-Length and
  Authorization always included) and
  ``source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc``
  (``RawHttpClientImpl::check`` sends ``StrCat(pathPrefix(), :path)`` with the
  client's method and ``Content-Length: 0``; ``toResponse``: OK only for status 200,
  a 5xx is an error, anything else a denial whose status and body reach the client;
  ``x-envoy-auth-headers-to-remove`` lists headers removed from the upstream request).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import asset, helper_executable
from credential_helper.serve.authorized_keys import parse
from credential_helper.serve.forwarded import forwarded_request, prefixed_request
from credential_helper.serve.verify import Refused, verify
from frontends import Gate

PUB_A = asset("keys/ed25519-a.pub").read_text()
PUB_B = asset("keys/ed25519-b.pub").read_text()
NOW = 1796153339
TARGET = f"/api/chat?ts={NOW}"
URL = f"https://ollama.example.com{TARGET}"


def private(name: str):
    return serialization.load_ssh_private_key(asset(f"keys/{name}").read_bytes(), password=None)


def sign(method: str, target: str, name: str = "ed25519-a") -> str:
    blob = (PUB_A if name == "ed25519-a" else PUB_B).split()[1]
    return f"{blob}:{base64.b64encode(private(name).sign(f'{method},{target}'.encode())).decode()}"


# --- ingress-nginx: X-Original-URL ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        # ingress-nginx's default directives
        [("X-Original-URL", URL), ("X-Original-Method", "POST")],
        # with the auth-method annotation it adds X-Original-URI (the same request)
        [("X-Original-URL", URL), ("X-Original-Method", "POST"), ("X-Original-URI", TARGET)],
        [("x-original-url", f"http://10.0.0.7:8080{TARGET}"), ("x-original-method", "POST")],
        # a Host holding '?', '#' or '@' cannot move the target: nginx refuses '/' in Host
        [("X-Original-URL", f"https://a?b#c@d{TARGET}"), ("X-Original-Method", "POST")],
        [
            ("X-Original-URL", f"HTTPS://ollama.example.com{TARGET}"),
            ("X-Original-Method", "POST"),
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Uri", TARGET),
        ],
    ],
)
def test_x_original_url_names_the_request(headers):
    assert forwarded_request(headers) == ("POST", TARGET)


@pytest.mark.parametrize(
    "headers",
    [
        # Issue 19 item 1: behind ingress-nginx's defaults the client adds X-Original-URI for
        # a path it is granted; it must not complete (or outvote) the front server's URL.
        [
            ("X-Original-URL", "https://ollama.example.com/api/ps?ts=1"),
            ("X-Original-Method", "GET"),
            ("X-Original-URI", "/api/tags?ts=1"),
        ],
        # the client's X-Forwarded-* family beside it: a disagreement, never a choice
        [
            ("X-Original-URL", "https://h/api/ps?ts=1"),
            ("X-Original-Method", "GET"),
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/api/tags?ts=1"),
        ],
        [("X-Original-URL", "https://h/api/ps?ts=1"), ("X-Original-Method", "GET"), ("X-Forwarded-Uri", "/api/tags?ts=1")],
        # a URL alone (no method), a method alone, a URL that is not one
        [("X-Original-URL", URL)],
        [("X-Original-Method", "POST")],
        [("X-Original-URL", "ollama.example.com/api/chat"), ("X-Original-Method", "POST")],
        [("X-Original-URL", "ftp://h/api/chat"), ("X-Original-Method", "POST")],
        [("X-Original-URL", "https://ollama.example.com"), ("X-Original-Method", "POST")],
        [("X-Original-URL", URL), ("X-Original-URL", URL), ("X-Original-Method", "POST")],
    ],
)
def test_x_original_url_is_never_outvoted_or_completed_by_a_client_header(headers):
    result = forwarded_request(headers)
    assert isinstance(result, Refused) and result.status == 400, result


def test_the_issues_attack_is_refused_before_any_signature_is_looked_at():
    """bob may list models only; he signs GET /api/tags and asks ingress-nginx for GET /api/ps."""
    keys = parse(
        PUB_A.split()[0] + " " + PUB_A.split()[1] + " alice *\n" + PUB_B.split()[0] + " " + PUB_B.split()[1] + " bob /api/tags\n"
    )[0]
    granted = f"/api/tags?ts={NOW}"
    authorization = sign("GET", granted, "ed25519-b")
    headers = [("X-Original-URL", f"https://h/api/ps?ts={NOW}"), ("X-Original-Method", "GET"), ("X-Original-URI", granted)]
    assert isinstance(forwarded_request(headers), Refused)
    # and what the gate verifies for ingress-nginx's own headers is the real request: refused too
    method, target = forwarded_request(headers[:2])
    assert isinstance(verify(method, target, authorization, keys, NOW), Refused)


# --- Envoy: the request line after --path-prefix ----------------------------------------------


@pytest.mark.parametrize(
    "method, target, expected",
    [
        ("POST", f"/_gate{TARGET}", ("POST", TARGET)),
        ("DELETE", "/_gate/api/delete?ts=1", ("DELETE", "/api/delete?ts=1")),
        ("HEAD", "/_gate/", ("HEAD", "/")),
        ("GET", "/_gate/?ts=1", ("GET", "/?ts=1")),
    ],
)
def test_prefixed_request_strips_the_prefix_and_keeps_the_method(method, target, expected):
    assert prefixed_request(method, target, "/_gate") == expected


@pytest.mark.parametrize(
    "target", ["/api/chat?ts=1", "/_gate", "/_gate?ts=1", "/_gatex/api/chat", "/_GATE/api/chat", "/x/_gate/api/tags"]
)
def test_prefixed_request_refuses_anything_outside_the_prefix(target):
    result = prefixed_request("GET", target, "/_gate")
    assert isinstance(result, Refused) and result.status == 400, result


@pytest.mark.process
@pytest.mark.parametrize("prefix", ["", "/", "_gate", "/_gate/", "/a//b", "/a/../b", "/a%2Fb", "/a?b"])
def test_a_path_prefix_that_cannot_work_is_refused_at_start(tmp_path, env, prefix):
    keys = tmp_path / "authorized_keys"
    keys.write_text(PUB_A)
    keys.chmod(0o600)
    done = subprocess.run(
        [
            *helper_executable(),
            "gate",
            "--auth-only",
            "--path-prefix",
            prefix,
            "--listen",
            "127.0.0.1:0",
            "--authorized-keys",
            str(keys),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--path-prefix" in done.stderr, (done.returncode, done.stderr)


@pytest.mark.process
def test_path_prefix_needs_auth_only(tmp_path, env):
    keys = tmp_path / "authorized_keys"
    keys.write_text(PUB_A)
    keys.chmod(0o600)
    done = subprocess.run(
        [*helper_executable(), "gate", "--path-prefix", "/_gate", "--listen", "127.0.0.1:0", "--authorized-keys", str(keys)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--auth-only" in done.stderr


@pytest.fixture
def envoy_gate(tmp_path, env):
    """``gate --auth-only --path-prefix /_gate``: alice anything, bob /api/tags only."""
    keys = tmp_path / "authorized_keys"
    a, b = PUB_A.split(), PUB_B.split()
    keys.write_text(f"{a[0]} {a[1]} alice *\n{b[0]} {b[1]} bob /api/tags\n")
    keys.chmod(0o600)
    gate = Gate(keys, env, "--path-prefix", "/_gate")
    yield gate
    for line in gate.stop():
        assert "ts=" not in line and "AAAAC3NzaC1lZDI1NTE5" not in line, line


def envoy_asks(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """The auth request as RawHttpClientImpl::check builds it: the client's method, the
    prefix before the client's :path, Content-Length: 0, the allowed headers only."""
    lines = [
        f"{method} /_gate{path} HTTP/1.1",
        "Host: ollama.example.com",
        "Content-Length: 0",
        *(f"{name}: {value}" for name, value in headers.items()),
        "Connection: close",
        "",
        "",
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *fields = head.decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), {n.strip().lower(): v.strip() for n, _, v in (f.partition(":") for f in fields)}, body


@pytest.mark.process
def test_envoy_shape_admits_with_200_and_tells_envoy_to_drop_the_signature(envoy_gate):
    target = f"/api/chat?ts={int(time.time())}"
    status, headers, body = envoy_asks(envoy_gate.port, "POST", target, {"Authorization": sign("POST", target)})
    # Envoy admits only a 200: a 204 would be a denial (ext_authz_http_impl.cc toResponse).
    assert status == 200 and body == b"" and headers["content-length"] == "0", (status, headers, body)
    assert headers["x-ollama-user"] == "alice" and headers["x-ollama-key"].startswith("SHA256:")
    assert headers["x-envoy-auth-headers-to-remove"] == "authorization"


@pytest.mark.process
@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "PATCH", "OPTIONS"])
def test_envoy_shape_verifies_any_method_on_the_request_line(envoy_gate, method):
    target = f"/api/delete?ts={int(time.time())}"
    assert envoy_asks(envoy_gate.port, method, target, {"Authorization": sign(method, target)})[0] == 200
    # the same signature for another method does not verify
    other = "POST" if method != "POST" else "GET"
    status, _, body = envoy_asks(envoy_gate.port, other, target, {"Authorization": sign(method, target)})
    assert status == 401 and json.loads(body)["error"]


@pytest.mark.process
def test_envoy_shape_refuses_with_the_reason_and_never_reads_header_families(envoy_gate):
    """bob, granted /api/tags, asks for /api/ps; header families naming /api/tags are not read."""
    granted = f"/api/tags?ts={int(time.time())}"
    authorization = sign("GET", granted, "ed25519-b")
    claim = {
        "X-Original-Method": "GET",
        "X-Original-URI": granted,
        "X-Forwarded-Method": "GET",
        "X-Forwarded-Uri": granted,
        "X-Original-URL": f"https://h{granted}",
    }
    ps = "/api/ps?" + granted.split("?", 1)[1]
    status, headers, body = envoy_asks(envoy_gate.port, "GET", ps, {"Authorization": authorization, **claim})
    assert status == 401 and "signature does not verify" in json.loads(body)["error"], body
    assert "x-ollama-user" not in headers and "x-envoy-auth-headers-to-remove" not in headers
    # the same signature for what it signs: admitted, as bob
    status, headers, _ = envoy_asks(envoy_gate.port, "GET", granted, {"Authorization": authorization, **claim})
    assert status == 200 and headers["x-ollama-user"] == "bob"
    chat = f"/api/chat?ts={int(time.time())}"
    status, _, body = envoy_asks(envoy_gate.port, "POST", chat, {"Authorization": sign("POST", chat, "ed25519-b")})
    assert status == 403 and "not granted /api/chat" in json.loads(body)["error"]


@pytest.mark.process
@pytest.mark.parametrize("path", ["/api/tags?ts=1", "/_gatex/api/tags", "/", "/x/_gate/api/tags"])
def test_envoy_shape_refuses_a_request_outside_the_prefix(envoy_gate, path):
    with socket.create_connection(("127.0.0.1", envoy_gate.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ") and b"--path-prefix" in reply, reply


@pytest.mark.process
def test_envoy_shape_health_check_removes_a_clients_identity_key(envoy_gate):
    status, headers, _ = envoy_asks(envoy_gate.port, "HEAD", "/", {})
    assert status == 200 and headers["x-ollama-user"] == "-" and "x-ollama-key" not in headers
    # nothing of ours overrides a client's X-Ollama-Key here, so Envoy is told to remove it
    assert [name.strip() for name in headers["x-envoy-auth-headers-to-remove"].split(",")] == ["authorization", "x-ollama-key"]
    assert envoy_asks(envoy_gate.port, "GET", "/", {})[0] == 401

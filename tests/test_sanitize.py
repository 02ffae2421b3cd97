"""The sanitiser: secrets hidden in every form, before and after cleaning, before any cut.

The end-to-end tests put a hostile forward proxy in front of ``get`` and
``doctor``: its 407 echoes the ``Proxy-Authorization`` it received (whole, the
base64 alone, or decoded), and nothing of the credentials may reach stdout,
stderr or an exception's text. User names of every length modulo 3 are used:
the password's own base64 appears inside base64("user:password") only when
len("user:") is a multiple of 3 (RFC 4648 §4), which once made a leak look
redacted.
"""

from __future__ import annotations

import base64
import json
import socket

import pytest

from conftest import assert_one_line_error
from credential_helper import sanitize
from credential_helper.proxy_env import environment_secrets, parse_proxy, proxy_secrets
from faults import ScriptedServer

SECRET = "Zq8+w/Yx3K>>>p0L???m"  # 20 characters; its base64 has + and /


@pytest.fixture(autouse=True)
def _no_ambient_secrets(monkeypatch):
    for name in ("OLLAMA_API_KEY", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_a_secret_of_exactly_the_minimum_length_is_redacted():
    exact = "k" * (sanitize.MIN_SECRET_CHARS - 1) + "Q"
    assert sanitize.server_text(f"a {exact} b", [exact]) == "a [redacted] b"
    shorter = exact[1:]
    assert sanitize.server_text(f"a {shorter} b", [shorter]) == f"a {shorter} b"


def test_redaction_runs_after_cleaning_a_secret_split_by_an_escape_sequence():
    split = SECRET[:6] + "\x1b[31m" + SECRET[6:]
    out = sanitize.server_text(f"echo {split} end", [SECRET])
    assert out == "echo [redacted] end"
    assert SECRET[:6] not in out and SECRET[6:] not in out


def test_redaction_runs_before_the_cut_so_no_prefix_of_a_straddling_secret_leaks():
    for limit in (10, 40, 200):
        for offset in range(1, len(SECRET)):
            text = "x" * (limit - offset) + SECRET + " tail"
            out = sanitize.server_text(text, [SECRET], limit=limit)
            assert SECRET[:offset] not in out.replace("x", ""), (limit, offset, out)
            assert len(out) <= limit + 3


def test_base64_and_base64url_forms_of_the_whole_secret_are_redacted():
    raw = base64.b64encode(SECRET.encode()).decode()
    url = base64.urlsafe_b64encode(SECRET.encode()).decode()
    assert raw != url  # the sample must exercise both alphabets
    for form in (raw, raw.rstrip("="), url, url.rstrip("=")):
        assert sanitize.server_text(f"<{form}>", [SECRET]) == "<[redacted]>", form


def test_percent_and_json_escaped_forms_are_redacted():
    percent = "".join("%%%02X" % b for b in SECRET.encode())
    escaped = SECRET.replace("/", "\\/").replace(">", "\\u003e")  # JSON escapes
    for form in (percent, percent.lower(), escaped, SECRET.replace("+", " ")):
        assert "[redacted]" in sanitize.server_text(form, [SECRET]), form


@pytest.mark.parametrize("user", ["u", "us", "use", "user", "alice", "proxy-user", "x" * 9])
def test_basic_credentials_are_redacted_whole_decoded_and_by_password(user):
    password = "hunter2-long-pass"
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    encoded = header[6:]
    for echo in (
        header,
        encoded,
        encoded.rstrip("="),
        f"{user}:{password}",
        password,
        base64.urlsafe_b64encode(f"{user}:{password}".encode()).decode(),
    ):
        out = sanitize.server_text(f"407 echo {echo} end", [header])
        assert password not in out and encoded.rstrip("=") not in out and "[redacted]" in out, (echo, out)


@pytest.mark.parametrize("user", ["u", "us", "use", "user"])
def test_proxy_credentials_in_the_environment_are_always_redacted(monkeypatch, user):
    password = "p@ss:word-long"
    monkeypatch.setenv("HTTPS_PROXY", f"http://{user}:p%40ss%3Aword-long@proxy.test:3128")
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    for echo in (f"Basic {encoded}", encoded, f"{user}:{password}", password, "p%40ss%3Aword-long"):
        out = sanitize.server_text(f"said {echo}.", ())  # no secrets passed: the environment's are used
        assert "word-long" not in out and encoded.rstrip("=") not in out, (echo, out)


def test_proxy_secrets_for_the_engine():
    proxy = parse_proxy("http://alice:s3cr3t%40pass@127.0.0.1:8080", "HTTPS_PROXY")
    found = proxy_secrets(proxy)
    assert found == ("Basic " + base64.b64encode(b"alice:s3cr3t@pass").decode(), "alice:s3cr3t@pass", "s3cr3t@pass")
    assert proxy_secrets(parse_proxy("http://127.0.0.1:8080", "HTTPS_PROXY")) == ()
    assert proxy_secrets(None) == ()
    # An unparseable value still has its user info hidden.
    assert "bob:pa ss" in environment_secrets({"HTTP_PROXY": "http://bob:pa%20ss@[bad"})


# --- a hostile forward proxy in front of get and doctor --------------------------------------

USERS = ["a", "ab", "abc", "abcd"]  # len("user:") mod 3 = 2, 0, 1, 2
PASSWORD = "Tr0ub4dor-and-3"


def echo_proxy(style: str):
    """A forward proxy that answers every request 407, echoing its Proxy-Authorization."""

    def script(conn: socket.socket, head: bytes) -> None:
        value = ""
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, rest = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                value = rest.strip()
        encoded = value.partition(" ")[2]
        echo = {
            "header": f"Proxy-Authorization: {value}",
            "base64": f"bad credentials {encoded}",
            "decoded": f"bad user {base64.b64decode(encoded + '==').decode(errors='replace') if encoded else ''}",
        }[style]
        body = json.dumps({"error": echo}).encode()
        conn.sendall(
            f'HTTP/1.1 407 {echo}\r\nProxy-Authenticate: Basic realm="{echo}"\r\n'
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    return script


def leaked(text: str, user: str) -> list[str]:
    pair = f"{user}:{PASSWORD}".encode()
    forms = [
        PASSWORD,
        pair.decode(),
        base64.b64encode(pair).decode().rstrip("="),
        base64.b64encode(PASSWORD.encode()).decode().rstrip("=")[:8],
    ]
    return [form for form in forms if form in text]


@pytest.mark.parametrize("style", ["header", "base64", "decoded"])
@pytest.mark.parametrize("user", USERS)
def test_a_407_echo_never_shows_the_proxy_credentials_in_get(run, env, user, style):
    with ScriptedServer(echo_proxy(style)) as proxy:
        url = f"http://{user}:{PASSWORD}@{proxy.host}"
        tunnel = run(
            ["get", "--no-cache", "--timeout", "5"],
            "https://ollama.test/v2/x/manifests/latest",
            environment=dict(env, HTTPS_PROXY=url),
        )
        forward = run(
            ["get", "--no-cache", "--timeout", "5", "--verbose"],
            "http://registry.test/v2/x/manifests/latest",
            environment=dict(env, HTTP_PROXY=url),
        )
    assert len(proxy.requests) == 2
    assert all(b"proxy-authorization: basic" in head.lower() for head in proxy.requests)
    assert_one_line_error(tunnel, 4)
    assert "407" in tunnel.err and "407" in forward.err
    assert forward.code == 4 and forward.out == ""
    for result in (tunnel, forward):
        assert leaked(result.err + result.out, user) == [], result


@pytest.mark.parametrize("user", USERS)
def test_a_407_echo_never_shows_the_proxy_credentials_in_doctor(run, env, user):
    with ScriptedServer(echo_proxy("header")) as proxy, ScriptedServer(echo_proxy("decoded")) as other:
        environment = dict(
            env, HTTPS_PROXY=f"http://{user}:{PASSWORD}@{proxy.host}", HTTP_PROXY=f"http://{user}:{PASSWORD}@{other.host}"
        )
        text = run(["doctor", "--timeout", "5", "--registry", "http://registry.test"], environment=environment)
        as_json = run(["doctor", "--json", "--timeout", "5", "--registry", "http://registry.test"], environment=environment)
    assert proxy.requests and other.requests
    assert text.code == 1 and "407" in text.out
    checks = {c["name"]: c for c in json.loads(as_json.out)["checks"]}
    assert checks["network (API)"]["status"] == "fail" and "407" in checks["network (API)"]["detail"]
    for result in (text, as_json):
        assert leaked(result.out + result.err, user) == [], result


def test_every_non_printable_becomes_one_space_and_runs_collapse():
    text = "a\r\nforged: line\x07b\x00c\u2028d\u200be\x85f\t\tg"
    assert sanitize.printable(text) == "a forged: line b c d e f g"
    assert sanitize.server_text("x\x1b]0;title\x07y\x1b[2Jz") == "xyz"


def test_a_basic_password_with_a_colon_is_hidden_whole():
    # RFC 7617 §2: the user-id ends at the first colon; the password may hold more.
    header = "Basic " + base64.b64encode(b"bob:first-part:second-part").decode()
    out = sanitize.server_text("said first-part:second-part", [header])
    assert out == "said [redacted]"


def test_proxy_secrets_of_a_user_without_a_password():
    proxy = parse_proxy("http://alice-the-user@127.0.0.1:8080", "HTTPS_PROXY")
    assert proxy_secrets(proxy) == ("Basic " + base64.b64encode(b"alice-the-user:").decode(), "alice-the-user:")

"""An attacker's view: hostile servers, hostile caches, hostile input, broken pipes.

Each test runs the installed executable (or the Python API) against real
loopback servers and real files, and checks the contract: exit 0, 1, 2, 3, 4 or 6
(5 is a bug), one stderr line on failure, no secret on stderr, and no file
touched outside the cache.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import stat
import subprocess
import time
import urllib.parse

import pytest

from conftest import assert_one_line_error, helper_executable
from credential_helper.cache import TokenCache, entry_key, identity_digest
from credential_helper.standin import StandIn
from faults import ScriptedServer, reply

API_KEY = "sk-live-0123456789abcdef-SECRET"
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
DAY = 24 * 3600


def cache_dir(env) -> str:
    return os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper")


def entry_path(env, key_file, realm, service="s", scope="x") -> str:
    """Where the cache keeps this challenge's entry (the name is the cache's own
    SHA-256 key; the tests plant files there, so they must find it)."""
    with open(key_file, "rb") as handle:
        key = entry_key(identity_digest(handle.read()), realm, service, [scope])
    return os.path.join(cache_dir(env), key + ".json")


def json_challenge(realm: str, **extra) -> str:
    return json.dumps({"realm": realm, "service": "s", "scope": "x", **extra})


def seconds_until(stamp: str) -> float:
    import calendar

    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.time()


def authorization_of(head: bytes) -> str:
    match = re.search(rb"(?im)^authorization: *(.+?)\r$", head)
    return match.group(1).decode() if match else ""


def encoded_forms(secret: str) -> dict[str, str]:
    """How a server might echo a secret: raw and in the usual encodings."""
    return {
        "raw": secret,
        "json": secret.replace("/", "\\/").replace("+", "\\u002b"),
        "percent": urllib.parse.quote(secret, safe=""),
        "base64url": secret.replace("+", "-").replace("/", "_").rstrip("="),
    }


def assert_secret_absent(text: str, secret: str) -> None:
    signature = secret.split(":")[-1]
    for form, value in {**encoded_forms(secret), **{f"sig-{k}": v for k, v in encoded_forms(signature).items()}}.items():
        assert value not in text, f"the {form} form leaked: {text!r}"


# --- numbers a server or a cache file chooses ----------------------------------------------


def token_server(body: bytes, status: str = "200 OK", headers: dict | None = None) -> ScriptedServer:
    return ScriptedServer(reply(status, body, {"Content-Type": "application/json", **(headers or {})}))


def jwt_with(claims: str) -> str:
    part = lambda raw: base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part('{}')}.{part(claims)}.c2ln"


ABSURD_RESPONSES = {
    "expires_in 1e300": b'{"token": "tok-0123456789", "expires_in": 1e300}',
    "expires_in Infinity": b'{"token": "tok-0123456789", "expires_in": Infinity}',
    "expires_in 1e17": b'{"token": "tok-0123456789", "expires_in": 1e17}',
    "expires_in NaN": b'{"token": "tok-0123456789", "expires_in": NaN}',
    "expires_in -Infinity": b'{"token": "tok-0123456789", "expires_in": -Infinity}',
    "issued_at far future": b'{"token": "tok-0123456789", "expires_in": 300, "issued_at": "9999-12-31T23:59:59Z"}',
    "issued_at far past": b'{"token": "tok-0123456789", "expires_in": 300, "issued_at": "0001-01-01T00:00:00Z"}',
    "jwt exp NaN": json.dumps({"token": jwt_with('{"exp": NaN}')}).encode(),
    "jwt exp 1e300": json.dumps({"token": jwt_with('{"exp": 1e300}')}).encode(),
    "jwt exp -1e300": json.dumps({"token": jwt_with('{"exp": -1e300}')}).encode(),
    "jwt exp Infinity, iat -Infinity": json.dumps({"token": jwt_with('{"exp": Infinity, "iat": -Infinity}')}).encode(),
}


@pytest.mark.parametrize("body", ABSURD_RESPONSES.values(), ids=ABSURD_RESPONSES.keys())
def test_absurd_lifetimes_are_clamped_and_cached_safely(run, env, body):
    with token_server(body) as server:
        realm = f"http://{server.host}/token"
        first = run(["get"], json_challenge(realm))
        second = run(["get"], json_challenge(realm))  # served from what the first stored
    for result in (first, second):
        assert result.code == 0, result
        stamp = result.json()["expires_at"]
        assert RFC3339.fullmatch(stamp), stamp
        assert seconds_until(stamp) <= DAY + 5
    assert len(server.requests) in (1, 2)


@pytest.mark.parametrize("expires_at", ["1e300", "9e18", "Infinity", "-Infinity", "NaN", '"2030-01-01"', "true", "null"])
def test_hand_written_cache_entry_with_absurd_numbers_is_a_miss(run, env, standin, expires_at):
    realm = f"{standin.base_url}/token"
    path = entry_path(env, os.path.join(env["HOME"], ".ollama", "id_ed25519"), realm)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        handle.write('{"token": "planted-token-0123", "expires_at": %s, "lifetime": 300}' % expires_at)
    result = run(["get"], json_challenge(realm))
    assert result.code == 0, result
    assert result.json()["token"] != "planted-token-0123"
    assert standin.exchanges == 1
    assert RFC3339.fullmatch(result.json()["expires_at"])


@pytest.mark.parametrize(
    "content",
    [
        "{}",
        "[]",
        "null",
        '{"token": null, "expires_at": null, "lifetime": null}',
        '{"token": "planted-token-0123", "expires_at": "%(far)s", "lifetime": "300"}',
        '{"token": "planted-token-0123", "expires_at": %(far)s, "lifetime": 0}',
        '{"token": "planted-token-0123", "expires_at": %(far)s, "lifetime": -5}',
        '{"token": "planted-token-0123", "expires_at": %(far)s, "lifetime": true}',
        '{"token": "planted token with spaces", "expires_at": %(far)s, "lifetime": 300}',
        '{"token": "planted\\u001b[31m", "expires_at": %(far)s, "lifetime": 300}',
        '{"token": 12345678901, "expires_at": %(far)s, "lifetime": 300}',
    ],
)
def test_cache_entries_of_the_wrong_shape_are_misses(run, env, standin, content):
    realm = f"{standin.base_url}/token"
    path = entry_path(env, os.path.join(env["HOME"], ".ollama", "id_ed25519"), realm)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        handle.write(content % {"far": time.time() + 3600})
    result = run(["get"], json_challenge(realm))
    assert result.code == 0, result
    assert standin.exchanges == 1
    assert "planted" not in result.out


def test_a_well_formed_planted_entry_is_a_hit(run, env, standin):
    """The control for the test above: the same file, valid, is served."""
    realm = f"{standin.base_url}/token"
    path = entry_path(env, os.path.join(env["HOME"], ".ollama", "id_ed25519"), realm)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        handle.write('{"token": "planted-token-0123", "expires_at": %s, "lifetime": 300}' % (time.time() + 3600))
    result = run(["get"], json_challenge(realm))
    assert result.code == 0 and result.json()["token"] == "planted-token-0123"
    assert standin.exchanges == 0


def test_date_header_far_in_the_future_is_not_a_clock(run, env):
    headers = {"Date": "Sun, 01 Jan 292277026596 00:00:00 GMT"}
    with token_server(b'{"error": "denied"}', "401 Unauthorized", headers) as server:
        result = run(["get", "--no-cache"], json_challenge(f"http://{server.host}/token"))
    assert_one_line_error(result, 1)
    assert len(server.requests) == 1  # no skew retry on a nonsense Date


def test_failed_skew_retry_is_one_line(run, env):
    from email.utils import formatdate

    headers = {"Date": formatdate(time.time() + 7200, usegmt=True)}
    with token_server(b'{"error": "stale"}', "401 Unauthorized", headers) as server:
        result = run(["get", "--no-cache"], json_challenge(f"http://{server.host}/token"))
    assert_one_line_error(result, 1)
    assert len(server.requests) == 2
    assert "clock" in result.err and "behind" in result.err


@pytest.mark.parametrize(
    "token",
    ["tok\u0001en", "tok en", "tök-0123456789", "tok\r\nX-Injected: 1", "tok\x7f", "tok\u2028x"],
    ids=["C0", "space", "non-ascii", "crlf", "del", "line-separator"],
)
def test_token_that_cannot_go_into_a_header_is_a_malformed_response(run, env, token):
    with token_server(json.dumps({"token": token}).encode()) as server:
        result = run(["get", "--no-cache"], json_challenge(f"http://{server.host}/token"))
    assert_one_line_error(result, 4)
    assert token not in result.err


# --- no secret on stderr, whatever the server echoes --------------------------------------


def echo_authorization(layout):
    """A script that answers with ``layout(authorization)`` as the raw response bytes."""

    def script(conn, head):
        conn.sendall(layout(authorization_of(head)).encode("latin-1", "replace"))

    return script


def status_line(code: int, form: str):
    def layout(auth: str) -> str:
        return f"HTTP/1.1 {code} {encoded_forms(auth)[form]}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    return layout


def body_echo(form: str):
    def layout(auth: str) -> str:
        signature = auth.split(":")[-1]
        body = json.dumps({"error": f"bad {encoded_forms(auth)[form]} sig {encoded_forms(signature)[form]}"})
        return f"HTTP/1.1 403 Forbidden\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"

    return layout


def malformed_status(auth: str) -> str:
    return f"HTTP/1.1 {auth}\r\n\r\n"


def location_echo(form: str):
    def layout(auth: str) -> str:
        return (
            f"HTTP/1.1 302 Found\r\nLocation: https://{encoded_forms(auth)[form]}@elsewhere.test/x\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n"
        )

    return layout


FORMS = ["raw", "json", "percent", "base64url"]
ECHOES = {
    **{f"reason-{code}-{form}": status_line(code, form) for code in (401, 403, 500) for form in FORMS},
    **{f"body-{form}": body_echo(form) for form in FORMS},
    **{f"location-{form}": location_echo(form) for form in FORMS},
    "malformed-status-line": malformed_status,
}


@pytest.mark.parametrize("layout", ECHOES.values(), ids=ECHOES.keys())
def test_get_never_echoes_the_signature_to_stderr(run, env, layout):
    captured = []

    def script(conn, head):
        captured.append(authorization_of(head))
        echo_authorization(layout)(conn, head)

    with ScriptedServer(script) as server:
        result = run(
            ["get", "--no-cache"], json_challenge(f"http://{server.host}/token"), environment=dict(env, OLLAMA_API_KEY=API_KEY)
        )
    assert result.code in (1, 4), result
    assert len(result.err.splitlines()) == 1, result
    assert captured and ":" in captured[0]
    assert_secret_absent(result.err, captured[0])
    assert API_KEY not in result.err


@pytest.mark.parametrize("layout", ECHOES.values(), ids=ECHOES.keys())
def test_whoami_never_echoes_the_signature_to_stderr(run, env, layout):
    captured = []

    def script(conn, head):
        captured.append(authorization_of(head))
        echo_authorization(layout)(conn, head)

    with ScriptedServer(script) as server:
        result = run(["whoami"], environment=dict(env, OLLAMA_CLOUD_BASE_URL=f"http://{server.host}"))
    assert result.code in (1, 4), result
    assert len(result.err.splitlines()) == 1, result
    assert_secret_absent(result.err, captured[0])


@pytest.mark.process
@pytest.mark.parametrize("layout", ECHOES.values(), ids=ECHOES.keys())
def test_whoami_with_the_api_key_raises_nothing_that_carries_it(env, tmp_path, monkeypatch, layout):
    """In-process: str(), repr() and args of the exception are secret-free."""
    from credential_helper import HelperError, account

    monkeypatch.setenv("OLLAMA_API_KEY", API_KEY)
    with ScriptedServer(echo_authorization(layout)) as server:
        with pytest.raises(HelperError) as caught:
            account.whoami(f"http://{server.host}", identity=str(tmp_path / "no-such-key"), timeout=5)
    monkeypatch.delenv("OLLAMA_API_KEY")  # so nothing below could hide a leak by redacting
    exc = caught.value
    for text in (str(exc), repr(exc), repr(exc.args)):
        for form in encoded_forms(API_KEY).values():
            assert form not in text, text


def test_an_excerpt_never_shows_the_signature_part_alone(run, env):
    def script(conn, head):
        signature = authorization_of(head).split(":")[-1]
        body = json.dumps({"error": f"signature {signature} rejected"}).encode()
        reply("403 Forbidden", body)(conn, head)

    with ScriptedServer(script) as server:
        result = run(["get", "--no-cache"], json_challenge(f"http://{server.host}/token"))
    assert_one_line_error(result, 1)
    assert "rejected" in result.err and "[redacted]" in result.err
    assert not re.search(r"[A-Za-z0-9+/]{80,}", result.err), result.err


ESCAPES = "\x1b[2J\x1b[31mred\x1b]0;title\x07\rollama-credential-helper: forged\nline\x9b1m\u202e"


def test_control_characters_from_a_server_never_reach_the_terminal(run, env):
    def script(conn, head):
        body = ESCAPES.encode()
        conn.sendall(b"HTTP/1.1 403 \x1b[1mBold\x1b[0m\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    with ScriptedServer(script) as server:
        result = run(["get", "--no-cache"], json_challenge(f"http://{server.host}/token"))
    assert_one_line_error(result, 1)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202e]", result.err.rstrip("\n")), repr(result.err)
    assert "forged" in result.err  # shown as text, inside the one line


def test_whoami_human_output_is_sanitised(run, env):
    body = json.dumps(
        {"name": "eve\x1b[2J\r\nollama-credential-helper: forged", "email": "e\x07@x", "plan": "pro\x1b]0;t\x07"}
    ).encode()
    with ScriptedServer(reply("200 OK", body, {"Content-Type": "application/json"})) as server:
        result = run(["whoami"], environment=dict(env, OLLAMA_CLOUD_BASE_URL=f"http://{server.host}"))
    assert result.code == 0, result
    assert len(result.out.splitlines()) == 1
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", result.out.rstrip("\n")), repr(result.out)
    assert result.out.startswith("eve ollama-credential-helper: forged")


# --- the cache touches only its own files ------------------------------------------------


def plant_victims(directory) -> dict[str, str]:
    os.makedirs(directory, exist_ok=True)
    names = {"precious.json": "a", "work.lock": "b", "draft.tmp": "c", "0" * 64 + ".json": "d"}
    for name, text in names.items():
        with open(os.path.join(directory, name), "w") as handle:
            handle.write(text)
    return names


def test_erase_through_a_symlinked_cache_directory_deletes_nothing(run, env, tmp_path):
    victim = tmp_path / "victim"
    names = plant_victims(victim)
    os.makedirs(env["XDG_CACHE_HOME"], exist_ok=True)
    os.symlink(victim, cache_dir(env))
    result = run(["erase", "--verbose"], "")
    assert result.code == 0, result
    assert sorted(os.listdir(victim)) == sorted(names)


def test_get_through_a_symlinked_cache_directory_neither_chmods_nor_writes(run, env, standin, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    os.chmod(victim, 0o755)
    os.makedirs(env["XDG_CACHE_HOME"], exist_ok=True)
    os.symlink(victim, cache_dir(env))
    result = run(["get", "--verbose"], json_challenge(f"{standin.base_url}/token"))
    assert result.code == 0, result
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o755
    assert os.listdir(victim) == []
    assert "symlink" in result.err  # --verbose says why there is no cache


def test_a_cache_directory_owned_by_someone_else_is_not_used(run, env, standin):
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to another user")
    directory = cache_dir(env)
    names = plant_victims(directory)
    os.chmod(directory, 0o777)
    os.chown(directory, 65534, 65534)  # nobody
    assert run(["erase"], "").code == 0
    assert sorted(os.listdir(directory)) == sorted(names)
    result = run(["get", "--verbose"], json_challenge(f"{standin.base_url}/token"))
    assert result.code == 0 and "another user" in result.err
    assert sorted(os.listdir(directory)) == sorted(names)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o777


def test_erase_removes_only_the_caches_own_regular_files(run, env, standin, tmp_path):
    assert run(["get"], json_challenge(f"{standin.base_url}/token")).code == 0
    directory = cache_dir(env)
    own = sorted(os.listdir(directory))
    assert own and all(re.fullmatch(r"[0-9a-f]{64}\.(json|lock)", name) for name in own)
    names = plant_victims(directory)
    outside = tmp_path / "outside.json"
    outside.write_text("keep me")
    os.symlink(outside, os.path.join(directory, "1" * 64 + ".json"))
    os.mkfifo(os.path.join(directory, "2" * 64 + ".lock"))
    result = run(["erase"], "")
    assert result.code == 0, result
    left = sorted(os.listdir(directory))
    assert left == sorted([*(n for n in names if n != "0" * 64 + ".json"), "1" * 64 + ".json", "2" * 64 + ".lock"])
    assert outside.read_text() == "keep me"


@pytest.mark.parametrize("suffix", [".json", ".lock"])
def test_a_fifo_in_the_cache_never_hangs_get(run, env, standin, suffix):
    realm = f"{standin.base_url}/token"
    path = entry_path(env, os.path.join(env["HOME"], ".ollama", "id_ed25519"), realm)[: -len(".json")] + suffix
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    os.mkfifo(path, 0o600)
    started = time.monotonic()
    result = run(["get", "--timeout", "5"], json_challenge(realm), timeout=20)
    assert result.code == 0, result
    assert time.monotonic() - started < 10


def test_a_fifo_at_ssl_cert_file_never_hangs(run, env, tmp_path):
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = run(
        ["get", "--timeout", "3", "--no-cache"],
        json_challenge("https://127.0.0.1:9/token"),
        environment=dict(env, SSL_CERT_FILE=str(fifo)),
        timeout=20,
    )
    assert_one_line_error(result, 4)
    assert "SSL_CERT_FILE" in result.err
    assert time.monotonic() - started < 10


def test_a_planted_hard_link_never_receives_the_cache_write(env, tmp_path, monkeypatch):
    """The temporary file is created anew (O_EXCL) under an unpredictable name."""
    from credential_helper.cache import Entry

    cache = TokenCache(cache_dir(env))
    assert cache.problem(create=True) is None
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    os.chmod(outside, 0o644)
    key = "a" * 64
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    for name in (f"{key}.json.4242.tmp", f"{key}.json.tmp"):
        os.link(outside, os.path.join(cache.directory, name))
    assert cache.store(key, Entry("tok-0123456789", time.time() + 300, 300))
    assert outside.read_text() == "keep me"
    assert stat.S_IMODE(os.stat(os.path.join(cache.directory, key + ".json")).st_mode) == 0o600


# --- input and output edges --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["realm", "service", "scope", "nonce"])
def test_lone_surrogate_in_get_input_is_bad_input(run, env, field):
    fields = {"realm": "http://127.0.0.1:9/token", "service": "s", "scope": "x"}
    fields[field] = fields.get(field, "n") + "\ud800"
    stdin = json.dumps(fields)  # json.dumps writes the surrogate as "\ud800"
    assert "\\ud800" in stdin
    assert_one_line_error(run(["get"], stdin), 2)


def test_lone_surrogate_in_sign_input_is_bad_input(run, env):
    stdin = json.dumps({"method": "GET", "url": "https://ollama.com/api/\ud800"})
    assert_one_line_error(run(["sign"], stdin), 2)


def test_lone_surrogate_in_the_python_api_is_an_input_error(env, monkeypatch):
    from credential_helper import Challenge, InputError, get_token, sign_request

    monkeypatch.setenv("HOME", env["HOME"])
    with pytest.raises(InputError):
        get_token(Challenge("http://127.0.0.1:9/token", "s\ud800", "x"))
    with pytest.raises(InputError):
        get_token(Challenge("http://127.0.0.1:9/token", "s", "x"), nonce="\udfff")
    with pytest.raises(InputError):
        sign_request("GET", "https://ollama.com/api/\ud800")


def run_with_stdout(env, args, stdout, stdin: bytes = b"", shell_prefix: str = "") -> subprocess.CompletedProcess:
    command = [*helper_executable(), *args]
    if shell_prefix:
        command = ["bash", "-c", f'exec "$@" {shell_prefix}', "bash", *command]
    return subprocess.run(command, input=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, timeout=60)


@pytest.mark.parametrize("how", ["closed", "full", "broken-pipe"])
@pytest.mark.parametrize("command", ["key", "get-hit", "get-miss"])
def test_undeliverable_output_exits_6_with_one_line(env, standin, how, command):
    stdin = json_challenge(f"{standin.base_url}/token").encode()
    args = ["key"] if command == "key" else ["get"]
    if command == "get-hit":
        assert subprocess.run([*helper_executable(), "get"], input=stdin, capture_output=True, env=env).returncode == 0
    if how == "closed":
        done = run_with_stdout(env, args, None, stdin, ">&-")
    elif how == "full":
        with open("/dev/full", "w") as full:
            done = run_with_stdout(env, args, full, stdin)
    else:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            done = run_with_stdout(env, args, write_end, stdin)
        finally:
            os.close(write_end)
    err = done.stderr.decode()
    assert done.returncode == 6, err
    assert len(err.splitlines()) == 1 and err.startswith("ollama-credential-helper: "), err
    assert "standard output" in err and "Traceback" not in err


def test_a_dangling_symlink_at_the_key_path_never_falls_back_to_the_api_key(run, env, standin, tmp_path):
    key_path = os.path.join(env["HOME"], ".ollama", "id_ed25519")
    os.unlink(key_path)
    os.symlink(tmp_path / "gone", key_path)
    environment = dict(env, OLLAMA_API_KEY=API_KEY)
    for args, stdin in (
        (["get"], json_challenge(f"{standin.base_url}/token")),
        (["sign", "GET", f"{standin.base_url}/api/tags"], ""),
    ):
        result = run(args, stdin, environment=environment)
        assert_one_line_error(result, 3)
        assert "symlink" in result.err and API_KEY not in result.err


@pytest.mark.parametrize(
    "key", ["ed25519-encrypted", "rsa-2048", "ecdsa-p256", "garbage", "truncated", "loose-mode", "directory", "dangling"]
)
@pytest.mark.parametrize("command", ["get", "sign"])
def test_every_unusable_key_exits_3_even_with_an_api_key(run, env, keys, standin, tmp_path, key, command):
    if key == "loose-mode":
        path = keys / "ed25519-a"
        os.chmod(path, 0o644)
    elif key == "directory":
        path = tmp_path / "a-directory"
        path.mkdir()
    elif key == "dangling":
        path = tmp_path / "dangling"
        os.symlink(tmp_path / "nowhere", path)
    else:
        path = keys / key
    args = ["--identity", str(path)]
    environment = dict(env, OLLAMA_API_KEY=API_KEY)
    if command == "get":
        result = run(["get", *args], json_challenge(f"{standin.base_url}/token"), environment=environment)
    else:
        result = run(["sign", *args, "GET", f"{standin.base_url}/api/tags"], environment=environment)
    assert_one_line_error(result, 3)
    assert API_KEY not in result.err
    assert standin.exchanges == 0


# --- a registry signature must never read as an API signature -------------------------------


@pytest.mark.parametrize("query", ["zzz=", "u=1", "tsz=1", "%7A=1", "a=1&zzz=2", "%C3%A9=1"])
def test_realm_query_keys_after_ts_are_refused_before_the_key_is_read(run, env, query):
    environment = dict(env, HOME=env["HOME"] + "-missing")  # no key: exit 3 would mean too late
    result = run(["get"], json_challenge(f"https://registry.ollama.ai/v2/token?{query}"), environment=environment)
    assert_one_line_error(result, 2)
    assert "ts" in result.err


@pytest.mark.parametrize("query", ["a=1", "Z=1", "ts=5", "nonce=x&service=y"])
def test_realm_query_keys_before_ts_keep_the_signed_string_ending_in_ts(run, env, query):
    result = run(["get", "--dry-run"], json_challenge(f"http://127.0.0.1:9/token?{query}"))
    assert result.code == 0, result
    signed = result.json()["signed_data"]
    assert re.search(r"[?&]ts=\d+,[A-Za-z0-9+/=]+$", signed), signed


# --- rules that every caller shares --------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evilollama.com", "notregistry.ollama.ai", "ollama.com.evil.test", "registry.ollama.ai.evil.test"]
)
def test_allowlists_match_whole_labels(run, env, host):
    environment = dict(env, HOME=env["HOME"] + "-missing", OLLAMA_API_KEY=API_KEY)
    got = run(["get"], json_challenge(f"https://{host}/token"), environment=dict(env))
    assert_one_line_error(got, 2)
    signed = run(["sign", "GET", f"https://{host}/api/tags"], environment=environment)
    assert_one_line_error(signed, 2)
    assert API_KEY not in signed.err


def test_a_cached_token_is_never_served_past_the_realm_rules(run, standin):
    stdin = json.dumps({"realm": f"{standin.base_url}/token", "service": "s", "scope": "x"})
    assert run(["get", "--host", standin.host], stdin).code == 0
    other = "127.0.0.1:" + str(int(standin.host.rsplit(":", 1)[1]) + 1)
    result = run(["get", "--host", other], stdin)  # the fast path sees a cached entry
    assert_one_line_error(result, 2)
    assert standin.exchanges == 1


def test_verbose_on_a_cache_hit_shows_no_token(run, standin):
    stdin = json_challenge(f"{standin.base_url}/token")
    token = run(["get"], stdin).json()["token"]
    result = run(["get", "--verbose"], stdin)
    assert result.code == 0 and "cache: hit" in result.err
    assert token not in result.err and result.json()["token"] == token


def test_the_nonce_on_the_wire_is_16_random_bytes_as_unpadded_base64url(run, standin):
    for _ in range(3):
        assert run(["get", "--no-cache"], json_challenge(f"{standin.base_url}/token")).code == 0
    assert len(standin.seen_nonces) == 3
    for nonce in standin.seen_nonces:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", nonce), nonce
        assert len(base64.urlsafe_b64decode(nonce + "==")) == 16


def test_lock_wait_respects_the_timeout(run, env, standin):
    import fcntl

    realm = f"{standin.base_url}/token"
    lock_path = entry_path(env, os.path.join(env["HOME"], ".ollama", "id_ed25519"), realm)[: -len(".json")] + ".lock"
    os.makedirs(os.path.dirname(lock_path), mode=0o700, exist_ok=True)
    holder = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        result = run(["get", "--timeout", "2"], json_challenge(realm), timeout=30)
        elapsed = time.monotonic() - started
    finally:
        os.close(holder)
    assert elapsed < 6, elapsed
    assert result.code in (0, 4), result


def test_erase_with_identity_removes_that_identitys_entry(run, keys, public_line):
    with StandIn() as server:
        server.authorize(public_line("ed25519-b"))
        stdin = json_challenge(f"{server.base_url}/token")
        args = ["--identity", str(keys / "ed25519-b")]
        assert run(["get", *args], stdin).code == 0
        assert run(["get", *args], stdin).code == 0 and server.exchanges == 1
        assert run(["erase", *args], stdin).code == 0
        assert run(["get", *args], stdin).code == 0
        assert server.exchanges == 2


# --- default ports and Host headers -----------------------------------------------------------


def _port_443_free() -> bool:
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", 443))
        return True
    except OSError:
        return False
    finally:
        probe.close()


@pytest.fixture
def standin_on_443(tmp_path, public_line):
    from faults import CertificateAuthority

    if not _port_443_free():
        pytest.skip("127.0.0.1:443 is not available here")
    ca = CertificateAuthority(tmp_path)
    server = StandIn(tls_context=ca.server_context([], ["127.0.0.1"]), port=443)
    server.authorize(public_line("ed25519-a"))
    server.start()
    yield server, str(ca.ca_file)
    server.stop()


def test_https_without_a_port_connects_to_443_with_the_host_as_written(run, env, standin_on_443):
    server, ca_file = standin_on_443
    environment = dict(env, SSL_CERT_FILE=ca_file)
    result = run(["get", "--no-cache"], "https://127.0.0.1/v2/library/x/manifests/latest", environment=environment)
    assert result.code == 0, result
    assert server.hosts_seen == ["127.0.0.1", "127.0.0.1"]  # the probe, then the exchange
    who = run(["whoami"], environment=dict(environment, OLLAMA_CLOUD_BASE_URL="https://127.0.0.1"))
    assert who.code == 0, who
    assert server.hosts_seen[-1] == "127.0.0.1"


def test_an_explicit_port_is_sent_in_host_exactly_as_written(run, env, standin_on_443):
    server, ca_file = standin_on_443
    environment = dict(env, SSL_CERT_FILE=ca_file)
    result = run(["get", "--no-cache"], "https://127.0.0.1:443/v2/library/x/manifests/latest", environment=environment)
    assert result.code == 0, result
    assert server.hosts_seen[0] == "127.0.0.1:443"
    who = run(["whoami"], environment=dict(environment, OLLAMA_CLOUD_BASE_URL="https://127.0.0.1:443"))
    assert who.code == 0, who
    assert server.hosts_seen[-1] == "127.0.0.1:443"


@pytest.mark.process
@pytest.mark.parametrize(
    "layout",
    [status_line(403, "raw"), body_echo("percent"), location_echo("json"), malformed_status],
    ids=["reason", "body", "location", "status-line"],
)
def test_get_token_raises_nothing_that_carries_the_signature(keys, layout):
    """In-process: str(), repr() and args of the exception are secret-free."""
    from credential_helper import Challenge, HelperError, get_token

    captured = []

    def script(conn, head):
        captured.append(authorization_of(head))
        echo_authorization(layout)(conn, head)

    with ScriptedServer(script) as server:
        with pytest.raises(HelperError) as caught:
            get_token(Challenge(f"http://{server.host}/token", "s", "x"), identity=keys / "ed25519-a", timeout=5)
    exc = caught.value
    for text in (str(exc), repr(exc), repr(exc.args)):
        assert_secret_absent(text, captured[0])

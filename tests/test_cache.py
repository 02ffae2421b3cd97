"""The token cache: single flight, permissions, keying, lifetime, erase, faults.

Lifetimes are checked against the Docker registry token specification's rules
worked out by hand; concurrency against a stand-in that counts its exchanges.
"""

from __future__ import annotations

import base64
import calendar
import json
import time
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from freezegun import freeze_time

from conftest import assert_one_line_error, helper_executable
from credential_helper.cache import Entry, TokenCache, entry_key, lifetime_from_response
from credential_helper.standin import StandIn

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def cache_dir(env) -> str:
    return os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper")


def entries(env) -> list[str]:
    try:
        return sorted(n for n in os.listdir(cache_dir(env)) if n.endswith(".json"))
    except FileNotFoundError:
        return []


def challenge(server, scope: str = "repository:library/x:pull") -> str:
    return json.dumps({"realm": f"{server.base_url}/token", "service": "ollama.com", "scope": scope})


# --- single flight -----------------------------------------------------------------


@pytest.mark.process
def test_sixteen_concurrent_callers_make_one_exchange(env, public_line):
    with StandIn(exchange_delay=0.5) as server:
        server.authorize(public_line("ed25519-a"))
        stdin = challenge(server).encode()

        def call(_):
            return subprocess.run([*helper_executable(), "get"], input=stdin, capture_output=True, env=env, timeout=60)

        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(call, range(16)))
        assert [r.returncode for r in results] == [0] * 16, [r.stderr for r in results]
        tokens = {json.loads(r.stdout)["token"] for r in results}
        assert len(tokens) == 1
        assert server.exchanges == 1


# --- files, permissions, keying ------------------------------------------------------


def test_cache_directory_0700_and_entries_0600(run, env, standin):
    assert run(["get"], challenge(standin)).code == 0
    directory = cache_dir(env)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    names = os.listdir(directory)
    assert names and all(stat.S_IMODE(os.stat(os.path.join(directory, n)).st_mode) == 0o600 for n in names)
    assert not [n for n in names if n.endswith(".tmp")]


def test_token_never_appears_in_a_file_name(run, env, standin):
    token = run(["get"], challenge(standin)).json()["token"]
    assert all(token not in name for name in os.listdir(cache_dir(env)))


def test_a_loose_cache_directory_is_tightened(run, env, standin):
    os.makedirs(cache_dir(env), mode=0o755)
    os.chmod(cache_dir(env), 0o755)
    assert run(["get"], challenge(standin)).code == 0
    assert stat.S_IMODE(os.stat(cache_dir(env)).st_mode) == 0o700


def test_second_call_is_served_from_the_cache(run, standin):
    first = run(["get"], challenge(standin)).json()
    second = run(["get"], challenge(standin)).json()
    assert first == second
    assert standin.exchanges == 1


def test_keyed_by_identity(run, keys, public_line):
    with StandIn() as server:
        server.authorize(public_line("ed25519-a"))
        server.authorize(public_line("ed25519-b"))
        a = run(["get", "--identity", str(keys / "ed25519-a")], challenge(server)).json()
        b = run(["get", "--identity", str(keys / "ed25519-b")], challenge(server)).json()
        assert a["token"] != b["token"]
        assert server.exchanges == 2


def test_keyed_by_scope_set_not_order(run, standin):
    first = run(["get"], challenge(standin, "repository:a:pull repository:b:pull")).json()
    same_set = run(["get"], challenge(standin, "repository:b:pull repository:a:pull")).json()
    assert first["token"] == same_set["token"] and standin.exchanges == 1
    other = run(["get"], challenge(standin, "repository:a:pull")).json()
    assert other["token"] != first["token"] and standin.exchanges == 2


def test_entry_key_separates_every_component():
    base = ("id", "https://ollama.com/token", "svc", ["a", "b"])
    keys = {
        entry_key(*base),
        entry_key("id2", *base[1:]),
        entry_key(base[0], "https://ollama.com/token2", *base[2:]),
        entry_key(*base[:2], "svc2", base[3]),
        entry_key(*base[:3], ["a"]),
    }
    assert len(keys) == 5
    assert entry_key(*base[:3], ["b", "a", "a"]) == entry_key(*base)


# --- lifetime ----------------------------------------------------------------------------


def _jwt(claims: dict) -> str:
    part = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    "body, token, expected",
    [
        ({"expires_in": 300}, "opaque", (NOW + 300, 300)),
        # issued_at is the start of expires_in (Docker token spec).
        ({"expires_in": 300, "issued_at": "2027-01-15T07:59:00Z"}, "opaque", (NOW - 60 + 300, 300)),
        ({"expires_in": 300, "issued_at": "2027-01-15T07:59:00.123456789+00:00"}, "opaque", (NOW - 60 + 0.123456 + 300, 300)),
        ({}, _jwt({"exp": NOW + 900, "iat": NOW - 100}), (NOW + 900, 1000)),
        ({}, _jwt({"exp": NOW + 900}), (NOW + 900, 900)),
        ({}, "opaque", (NOW + 60, 60)),  # the specification's default
        ({"expires_in": "300"}, "opaque", (NOW + 60, 60)),  # not a number: ignored
        ({"expires_in": True}, "opaque", (NOW + 60, 60)),
        ({}, "a.b.c", (NOW + 60, 60)),  # three parts, not a JWT
        # A server's numbers are bounded where they enter: at most 24 hours.
        ({"expires_in": 1e300}, "opaque", (NOW + 86400, 86400)),
        ({"expires_in": float("inf")}, "opaque", (NOW + 86400, 86400)),
        ({"expires_in": float("nan")}, "opaque", (NOW + 60, 60)),
        ({"expires_in": 300, "issued_at": "0001-01-01T00:00:00Z"}, "opaque", (NOW + 300, 300)),
        ({}, _jwt({"exp": 1e300}), (NOW + 86400, 86400)),
        ({}, _jwt({"exp": -1e300}), (NOW + 60, 60)),
    ],
)
def test_lifetime_sources(body, token, expected):
    expires_at, lifetime = lifetime_from_response(body, token, NOW)
    assert expires_at == pytest.approx(expected[0], abs=1e-3)
    assert lifetime == pytest.approx(expected[1])


def test_expiry_from_expires_in_reaches_the_output(run, public_line):
    with StandIn(expires_in=3600) as server:
        server.authorize(public_line("ed25519-a"))
        result = run(["get"], challenge(server))
    assert result.code == 0
    import datetime

    expires = datetime.datetime.fromisoformat(result.json()["expires_at"].replace("Z", "+00:00")).timestamp()
    assert 3590 < expires - datetime.datetime.now(datetime.timezone.utc).timestamp() <= 3601


def test_expiry_defaults_to_sixty_seconds(run, public_line):
    with StandIn(expires_in=None) as server:
        server.authorize(public_line("ed25519-a"))
        before = time.time()
        result = run(["get"], challenge(server))
        after = time.time()
    assert result.code == 0, result
    # The Docker token specification: no expires_in means 60 seconds.
    expires = calendar.timegm(time.strptime(result.json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert int(before) + 60 - 1 <= expires <= int(after) + 60


def test_early_refresh_margin_with_frozen_time(tmp_path):
    cache = TokenCache(str(tmp_path / "c"))
    with freeze_time("2027-01-15T08:00:00Z"):
        assert cache.store("k", Entry("t", NOW + 300, 300))
        assert cache.lookup("k").token == "t"
    # 300 s lifetime: margin min(30, 150) = 30 s.
    with freeze_time("2027-01-15T08:04:29Z"):
        assert cache.lookup("k") is not None  # 31 s left
    with freeze_time("2027-01-15T08:04:30Z"):
        assert cache.lookup("k") is None  # 30 s left: refresh now
    # 40 s lifetime: margin min(30, 20) = 20 s.
    with freeze_time("2027-01-15T08:00:00Z"):
        cache.store("short", Entry("t", NOW + 40, 40))
    with freeze_time("2027-01-15T08:00:19Z"):
        assert cache.lookup("short") is not None
    with freeze_time("2027-01-15T08:00:20Z"):
        assert cache.lookup("short") is None


def test_expired_entry_triggers_a_new_exchange(run, env, public_line):
    with StandIn(expires_in=1) as server:  # margin 0.5 s of a 1 s lifetime
        server.authorize(public_line("ed25519-a"))
        first = run(["get"], challenge(server)).json()
        import time

        time.sleep(1.1)
        second = run(["get"], challenge(server)).json()
        assert first["token"] != second["token"] and server.exchanges == 2


# --- refresh, no-cache, erase ------------------------------------------------------------


def test_refresh_skips_the_cache_but_stores_the_new_token(run, standin):
    first = run(["get"], challenge(standin)).json()
    refreshed = run(["get", "--refresh"], challenge(standin)).json()
    again = run(["get"], challenge(standin)).json()
    assert refreshed["token"] != first["token"]
    assert again["token"] == refreshed["token"]
    assert standin.exchanges == 2


def test_no_cache_neither_reads_nor_writes(run, env, standin):
    run(["get", "--no-cache"], challenge(standin))
    assert entries(env) == []
    run(["get"], challenge(standin))
    third = run(["get", "--no-cache"], challenge(standin))
    assert third.code == 0 and standin.exchanges == 3


def test_erase_one_entry(run, env, standin):
    run(["get"], challenge(standin, "repository:a:pull"))
    run(["get"], challenge(standin, "repository:b:pull"))
    assert len(entries(env)) == 2
    erased = run(["erase"], challenge(standin, "repository:a:pull"))
    assert erased.code == 0 and erased.out == ""
    assert len(entries(env)) == 1
    run(["get"], challenge(standin, "repository:b:pull"))
    assert standin.exchanges == 2  # b still cached
    run(["get"], challenge(standin, "repository:a:pull"))
    assert standin.exchanges == 3  # a was forgotten


def test_erase_all_with_empty_stdin(run, env, standin):
    run(["get"], challenge(standin, "repository:a:pull"))
    run(["get"], challenge(standin, "repository:b:pull"))
    assert run(["erase"], "").code == 0
    assert entries(env) == []


def test_erase_with_nothing_cached_exits_0(run):
    assert run(["erase"], "").code == 0
    assert run(["erase"], 'Bearer realm="https://ollama.com/token",service="s",scope="x"').code == 0


def test_erase_with_bad_input_exits_2(run):
    assert_one_line_error(run(["erase"], "Basic realm=x"), 2)


# --- faults: the cache never causes a failure -------------------------------------------


@pytest.mark.parametrize("content", [b"", b"{", b'{"token": 5, "expires_at": 1, "lifetime": 1}', b"\xff\xfe", b"[]" * 40000])
def test_corrupt_entry_is_a_miss_and_gets_replaced(run, env, standin, content):
    first = run(["get"], challenge(standin)).json()
    [name] = entries(env)
    with open(os.path.join(cache_dir(env), name), "wb") as handle:
        handle.write(content)
    second = run(["get"], challenge(standin))
    assert second.code == 0 and second.json()["token"] != first["token"]
    with open(os.path.join(cache_dir(env), name)) as handle:
        assert json.load(handle)["token"] == second.json()["token"]


def test_unwritable_cache_means_no_caching_not_failure(run, env, standin, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be")
    environment = dict(env, XDG_CACHE_HOME=str(blocker))
    first = run(["get"], challenge(standin), environment=environment)
    second = run(["get"], challenge(standin), environment=environment)
    assert first.code == 0 and second.code == 0
    assert first.err == "" and standin.exchanges == 2


def test_entry_with_loose_permissions_is_ignored(run, env, standin):
    run(["get"], challenge(standin))
    [name] = entries(env)
    os.chmod(os.path.join(cache_dir(env), name), 0o644)
    run(["get"], challenge(standin))
    assert standin.exchanges == 2


def test_cache_hit_does_not_load_cryptography_urllib3_or_tls(env, standin):
    assert (
        subprocess.run([*helper_executable(), "get"], input=challenge(standin).encode(), env=env, capture_output=True).returncode
        == 0
    )
    probe = (
        "import sys, json\n"
        "from credential_helper.cli import main\n"
        "code = main(['get'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'urllib3', 'argparse', 'truststore', 'ssl'))\n"
        "sys.stderr.write(json.dumps({'code': code, 'loaded': loaded}))\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], input=challenge(standin).encode(), env=env, capture_output=True)
    report = json.loads(completed.stderr)
    assert report == {"code": 0, "loaded": []}
    assert standin.exchanges == 1

"""``doctor``: each check's ok and fail case, against the stand-in and planted files,
through the installed executable; and no secret in anything it prints."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from credential_helper.standin import StandIn
from faults import CertificateAuthority, ConnectProxy

API_KEY = "sk-live-doctor-0123456789abcdef"
SIGNATURE_SHAPE = re.compile(r"AAAAC3NzaC1lZDI1NTE5[A-Za-z0-9+/=]+:[A-Za-z0-9+/]{40,}")


@pytest.fixture
def linked(public_line):
    server = StandIn()
    server.authorize(public_line("ed25519-a"), name="jdoe", plan="pro")
    server.start()
    yield server
    server.stop()


def doctor(run, env, server, *args, **extra):
    environment = dict(env, OLLAMA_CLOUD_BASE_URL=server.base_url if server else extra.pop("base", ""), **extra)
    registry = extra.get("registry") or (server.base_url if server else "http://127.0.0.1:9")
    result = run(["doctor", "--json", "--registry", registry, *args], environment=environment)
    assert result.code in (0, 1), result
    report = json.loads(result.out)
    checks = {check["name"]: check for check in report["checks"]}
    assert report["ok"] is (result.code == 0) is all(c["status"] != "fail" for c in checks.values())
    return result, checks


def assert_no_secret(text: str, server: StandIn | None) -> None:
    assert API_KEY not in text
    assert not SIGNATURE_SHAPE.search(text)
    for token in server.tokens if server else {}:
        assert token not in text


def test_everything_ok(run, env, linked):
    result, checks = doctor(run, env, linked, OLLAMA_API_KEY=API_KEY)
    assert result.code == 0
    assert [c["status"] for c in checks.values()] == ["ok"] * 9
    assert "SHA256:" in checks["identity"]["detail"] and "ssh-ed25519 AAAA" in checks["identity"]["detail"]
    assert "not used" in checks["api key"]["detail"] and f"{len(API_KEY)} characters" in checks["api key"]["detail"]
    assert "jdoe, plan pro" in checks["link"]["detail"]
    assert "token exchanged, valid for" in checks["registry"]["detail"]
    assert linked.exchanges == 1
    assert_no_secret(result.out + result.err, linked)


def test_human_output_marks_each_line_and_names_the_fix(run, env, linked, tmp_path):
    environment = dict(env, OLLAMA_CLOUD_BASE_URL=linked.base_url, HOME=str(tmp_path / "nobody-home"))
    result = run(["doctor", "--registry", linked.base_url], environment=environment)
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].startswith("[FAIL] identity: no key at ")
    assert lines[1].strip().startswith("fix: ollama-credential-helper key --generate")
    assert re.fullmatch(r"\d+ failed, \d+ warnings?, \d+ ok", lines[-1])
    assert all(line.startswith(("[ ok ]", "[warn]", "[FAIL]", "       fix: ")) for line in lines[:-1])


def test_missing_key_with_an_api_key_says_it_would_be_used(run, env, linked, tmp_path):
    result, checks = doctor(run, env, linked, HOME=str(tmp_path / "nobody-home"), OLLAMA_API_KEY=API_KEY)
    assert checks["identity"]["status"] == "fail"
    assert checks["api key"]["status"] == "warn" and "used" in checks["api key"]["detail"]
    assert_no_secret(result.out, linked)


def test_loose_permissions_name_chmod(run, env, linked):
    key = os.path.join(env["HOME"], ".ollama", "id_ed25519")
    os.chmod(key, 0o644)
    _, checks = doctor(run, env, linked)
    assert checks["identity"]["status"] == "fail" and checks["identity"]["fix"] == f"chmod 600 {key}"


def test_encrypted_key_names_ssh_keygen(run, env, linked, keys):
    _, checks = doctor(run, env, linked, "--identity", str(keys / "ed25519-encrypted"))
    assert checks["identity"]["status"] == "fail" and checks["identity"]["fix"].startswith("ssh-keygen -p")


def test_system_service_key_that_differs_is_a_warning(monkeypatch, tmp_path, keys, env):
    from credential_helper import doctor as doctor_module, identity

    service = tmp_path / "service.pub"
    service.write_text((keys / "ed25519-b.pub").read_text())
    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", str(service))
    check = doctor_module.check_identity(str(keys / "ed25519-a"))
    assert check.status == "warn" and str(service) in check.detail and "linking one does not link the other" in check.detail
    service.write_text((keys / "ed25519-a.pub").read_text())
    assert doctor_module.check_identity(str(keys / "ed25519-a")).status == "ok"


def test_unreachable_api_and_registry_fail_and_skip_what_depends_on_them(run, env):
    result, checks = doctor(run, env, None, base="http://127.0.0.1:9")
    assert result.code == 1
    assert checks["network (API)"]["status"] == "fail" and "connection refused" in checks["network (API)"]["detail"]
    assert checks["network (registry)"]["status"] == "fail"
    assert [checks[n]["status"] for n in ("clock", "link", "registry")] == ["warn"] * 3


def test_untrusted_tls_names_ssl_cert_file(run, env, tmp_path, public_line):
    ca = CertificateAuthority(tmp_path)
    with StandIn(tls_context=ca.server_context([], ["127.0.0.1"])) as server:
        server.authorize(public_line("ed25519-a"))
        _, bad = doctor(run, env, server)
        _, good = doctor(run, env, server, SSL_CERT_FILE=str(ca.ca_file))
    assert bad["network (API)"]["status"] == "fail" and "SSL_CERT_FILE" in bad["network (API)"]["fix"]
    assert good["network (API)"]["status"] == "ok" and "TLS verified" in good["network (API)"]["detail"]


def test_network_through_a_proxy_says_which(run, env, tmp_path, public_line):
    ca = CertificateAuthority(tmp_path)
    with (
        StandIn(tls_context=ca.server_context(["ollama.test"], [])) as server,
        ConnectProxy({"ollama.test": "127.0.0.1"}) as proxy,
    ):
        server.authorize(public_line("ed25519-a"))
        base = f"https://ollama.test:{server.server.server_address[1]}"
        result = run(
            ["doctor", "--json", "--registry", base],
            environment=dict(env, OLLAMA_CLOUD_BASE_URL=base, SSL_CERT_FILE=str(ca.ca_file), HTTPS_PROXY=proxy.url),
        )
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert result.code == 0, result
    assert f"through the proxy {proxy.url} (HTTPS_PROXY)" in checks["network (API)"]["detail"]


def test_skewed_clock_fails(run, env, public_line):
    with StandIn(clock_offset=600, max_skew=900) as server:
        server.authorize(public_line("ed25519-a"))
        _, checks = doctor(run, env, server)
    assert checks["clock"]["status"] == "fail" and "behind" in checks["clock"]["detail"]
    assert "timedatectl" in checks["clock"]["fix"]


def test_unlinked_key_fails_link_and_registry_with_the_connect_url(run, env):
    with StandIn() as server:  # knows no key
        result, checks = doctor(run, env, server)
    assert result.code == 1
    assert checks["link"]["status"] == "fail" and checks["link"]["fix"].startswith("open https://ollama.com/connect?")
    assert checks["registry"]["status"] == "fail" and "401" in checks["registry"]["detail"]
    assert_no_secret(result.out, server)


def test_cache_symlink_and_foreign_owner_are_warnings(run, env, linked, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.makedirs(env["XDG_CACHE_HOME"], exist_ok=True)
    os.symlink(target, os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper"))
    _, checks = doctor(run, env, linked)
    assert checks["cache"]["status"] == "warn" and "symlink" in checks["cache"]["detail"]
    assert checks["cache"]["fix"].startswith("rm ")
    if os.getuid() == 0:
        os.unlink(os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper"))
        os.makedirs(os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper"))
        os.chown(os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper"), 65534, 65534)
        _, checks = doctor(run, env, linked)
        assert checks["cache"]["status"] == "warn" and "another user" in checks["cache"]["detail"]


def test_cache_ok_counts_entries(run, env, linked):
    assert run(["get"], json.dumps({"realm": f"{linked.base_url}/token", "service": "s", "scope": "x"})).code == 0
    _, checks = doctor(run, env, linked)
    directory = os.path.join(env["XDG_CACHE_HOME"], "ollama-credential-helper")
    assert checks["cache"]["status"] == "ok"
    assert (
        checks["cache"]["detail"] == f"{directory}: yours, mode {stat.S_IMODE(os.stat(directory).st_mode):04o}, 1 cached token(s)"
    )


def test_one_timeout_budget_for_every_network_check(run, env):
    from faults import ScriptedServer, silent

    import time

    with ScriptedServer(silent) as quiet:
        started = time.monotonic()
        result = run(
            ["doctor", "--json", "--timeout", "2", "--registry", f"http://{quiet.host}"],
            environment=dict(env, OLLAMA_CLOUD_BASE_URL=f"http://{quiet.host}"),
            timeout=60,
        )
        elapsed = time.monotonic() - started
    assert result.code == 1 and elapsed < 6, (elapsed, result)
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert "timed out" in checks["network (API)"]["detail"]
    assert "budget" in checks["network (registry)"]["detail"] or "timed out" in checks["network (registry)"]["detail"]


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_a_service_key_that_is_not_a_regular_file_never_hangs_doctor(monkeypatch, tmp_path, keys, kind):
    import threading

    from credential_helper import doctor as doctor_module, identity

    path = tmp_path / "id_ed25519.pub"
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open() would wait forever
    elif kind == "directory":
        path.mkdir()
    else:
        path = "/dev/zero"
    monkeypatch.setattr(identity, "SYSTEM_SERVICE_PUBKEY", str(path))
    found = []
    worker = threading.Thread(target=lambda: found.append(doctor_module.check_identity(str(keys / "ed25519-a"))), daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive() and kind == "fifo":
        with open(path, "wb"):  # release the stuck open so the thread can end
            pass
    assert found, f"check_identity hung on a {kind} at the service key path"
    assert found[0].status == "ok"  # no service key to compare with


def test_a_local_clock_ahead_of_the_server_fails_too(run, env, public_line):
    with StandIn(clock_offset=-600, max_skew=900) as server:  # the server's clock is behind: ours is ahead
        server.authorize(public_line("ed25519-a"))
        _, checks = doctor(run, env, server)
    assert checks["clock"]["status"] == "fail" and "ahead of" in checks["clock"]["detail"]
    with StandIn(clock_offset=-10, max_skew=900) as server:  # inside the tolerance
        server.authorize(public_line("ed25519-a"))
        _, checks = doctor(run, env, server)
    assert checks["clock"]["status"] == "ok"


def test_a_dangling_key_symlink_is_a_broken_key_not_an_api_key_in_use(run, env, linked, home):
    key = home / ".ollama" / "id_ed25519"
    key.unlink()
    os.symlink(home / "nowhere" / "id_ed25519", key)
    _, checks = doctor(run, env, linked, OLLAMA_API_KEY=API_KEY)
    assert checks["identity"]["status"] == "fail"
    assert checks["api key"]["status"] == "ok" and "not used" in checks["api key"]["detail"]


def test_the_registry_check_depends_on_the_registry_not_the_api(run, env, linked):
    # API unreachable, registry fine: the registry check still runs (and passes).
    result = run(
        ["doctor", "--json", "--registry", linked.base_url], environment=dict(env, OLLAMA_CLOUD_BASE_URL="http://127.0.0.1:9")
    )
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["network (API)"]["status"] == "fail" and checks["link"]["status"] == "warn"
    assert checks["registry"]["status"] == "ok", checks["registry"]
    # API fine, registry unreachable: the registry check is skipped, link still runs.
    _, checks = doctor(run, env, linked, registry="http://127.0.0.1:9")
    assert checks["link"]["status"] == "ok"
    assert checks["registry"]["status"] == "warn" and "registry could not be reached" in checks["registry"]["detail"]


def test_the_link_check_stays_inside_the_timeout_budget(run, env):
    import time
    from email.utils import formatdate

    from faults import ScriptedServer, reply

    def script(conn, head):
        if head.startswith(b"POST /api/me"):
            time.sleep(30)  # held: only the --timeout budget ends the wait
        reply("200 OK", b"{}", {"Date": formatdate(usegmt=True)})(conn, head)

    with ScriptedServer(script) as server:
        started = time.monotonic()
        result = run(
            ["doctor", "--json", "--timeout", "3", "--registry", "http://127.0.0.1:9"],
            environment=dict(env, OLLAMA_CLOUD_BASE_URL=f"http://{server.host}"),
            timeout=60,
        )
        elapsed = time.monotonic() - started
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["network (API)"]["status"] == "ok" and checks["link"]["status"] == "fail", checks
    assert "timed out" in checks["link"]["detail"]
    assert elapsed < 6, elapsed


def test_doctor_timeout_help_says_what_the_readme_and_man_page_say(capsys):
    # Break caught: doctor's --help said "bound on the whole exchange" (get's wording), while
    # the README and the man page said the network checks share one budget.
    from conftest import ROOT

    from credential_helper.cli_commands import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["doctor", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    phrase = "all network checks share, not one per check"
    assert f"--timeout SECONDS the budget {phrase} (default: 10, at most 600)" in text, text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "All network checks share one `--timeout` budget, not one per check (default 10 s, at most 600 s)" in readme
    man = " ".join(re.sub(r"^\.\w+ ?", "", (ROOT / "man" / "ollama-credential-helper.1").read_text(), flags=re.M).split())
    assert f"the budget {phrase};" in man


@pytest.mark.parametrize("verdict", ["refused", None])
@pytest.mark.parametrize("second_exists", [False, True])
def test_doctor_host_cli_advice_names_one_key_path_for_the_proxy_and_the_key_to_make(
    tmp_path, monkeypatch, verdict, second_exists
):
    # Break caught: with no other key admitted, the advice told the member to make ~/.ollama/box_ed25519
    # but to run the proxy with "--identity PATH" (the placeholder, not the key it had just made), and
    # with no key at ~/.ollama/id_ed25519 it named no key to make at all.
    from credential_helper import protocol
    from credential_helper.doctor_host_verdicts import check_cli

    SECOND_KEY = "~/.ollama/box_ed25519"  # the README's second key

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ollama").mkdir()
    default = tmp_path / ".ollama" / "id_ed25519"
    if verdict is not None:
        default.write_text("a key")
    if second_exists:
        (tmp_path / ".ollama" / "box_ed25519").write_text("a key")
    verdicts = {str(default): verdict} if verdict is not None else {}
    fix = check_cli(protocol.parse_url("https://box:11435"), verdicts).fix
    assert "PATH" not in fix and f"--identity {SECOND_KEY}" in fix and "--upstream https://box:11435" in fix, fix
    assert (f"key --generate --identity {SECOND_KEY}" in fix) is not second_exists, fix  # never over an existing file
    # With an admitted key, the proxy signs with that one and nothing is made.
    admitted = str(tmp_path / ".ollama" / "team_ed25519")
    fix = check_cli(protocol.parse_url("https://box:11435"), {**verdicts, admitted: "admitted"}).fix
    assert f"--identity {admitted}" in fix and "--generate" not in fix, fix


def test_the_summary_says_1_warning_and_2_warnings():
    # Break caught: "1 warnings" (the plural whatever the count).
    from credential_helper.doctor import Check, render

    def last(*statuses: str) -> str:
        return render([Check(f"c{n}", status, "x") for n, status in enumerate(statuses)]).splitlines()[-1]

    assert last("warn", "ok") == "0 failed, 1 warning, 1 ok"
    assert last("warn", "warn", "fail") == "1 failed, 2 warnings, 0 ok"
    assert last("ok") == "0 failed, 0 warnings, 1 ok"


def test_doctor_host_help_and_readme_say_a_host_without_a_scheme_is_https(capsys):
    # Break caught: neither said it, and "--host 127.0.0.1:PORT" at a plain-http gate looked like a TLS trust problem.
    from conftest import ROOT

    from credential_helper.cli_commands import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["doctor", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "without a scheme, URL means https://URL" in text, text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`--host box:11435`, without a scheme, means `https://box:11435`" in readme
    assert "`--host` without a scheme means `https://`" in readme

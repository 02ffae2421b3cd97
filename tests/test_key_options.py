"""sshd-style options before the key type (issue 22 item 1, grammar and matchers).

Cases come from OpenSSH's documentation and code, never from this project's
output: ``man sshd`` (sshd.8, AUTHORIZED_KEYS FILE FORMAT), ``man ssh_config``
(ssh_config.5, PATTERNS), and auth-options.c / misc.c / match.c / addrmatch.c
(openssh-portable 0ef0f5a). Where Debian's sshd is installed, the options sshd
itself knows (``from=``, ``expiry-time=``) are also put to a real sshd on
loopback, and the gate's answer must be sshd's.
"""

from __future__ import annotations

import base64
import calendar
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import GOLDEN, asset
from credential_helper.serve.authorized_keys import parse
from credential_helper.serve.key_options import (
    NO_OPTIONS,
    OptionError,
    address_allowed,
    expired,
    model_allowed,
    parse_options,
    parse_timespec,
)

A = asset("keys/ed25519-a.pub").read_text().split()[1]
BLOB_A = base64.b64decode(A)


def options_of(line: str):
    keys, warnings = parse(line + "\n")
    grants = keys.grants_for(BLOB_A)
    return (grants[0].options if grants else None), warnings


def refused(options_text: str) -> str:
    """The warning for a line with these options, which must grant nothing."""
    keys, warnings = parse(f"{options_text} ssh-ed25519 {A} bob *\n")
    assert keys.grants_for(BLOB_A) == [], options_text
    assert len(warnings) == 1 and warnings[0].startswith("line 1: skipped: options: "), warnings
    return warnings[0]


# --- the grammar (sshd.8: "comma-separated option specifications. No spaces are
# permitted, except within double quotes ... option keywords are case-insensitive") ---------


def test_a_line_without_options_has_none():
    options, warnings = options_of(f"ssh-ed25519 {A} bob *")
    assert warnings == [] and options is NO_OPTIONS and options.empty


def test_the_four_options_together():
    options, warnings = options_of(
        f'from="10.0.0.0/8,!10.0.9.*",expiry-time="20991231Z",models="llama3*,!*70b*",max-concurrent=2 ssh-ed25519 {A} bob *'
    )
    assert warnings == []
    assert options.from_patterns == ("10.0.0.0/8", "!10.0.9.*")
    assert options.expiry == calendar.timegm((2099, 12, 31, 0, 0, 0))
    assert options.models == ("llama3*", "!*70b*")
    assert options.max_concurrent == 2 and options.needs_reverse_proxy


@pytest.mark.parametrize(
    "text", ['FROM="10.0.0.1"', 'From="10.0.0.1"', 'Expiry-Time="20991231Z"', 'MODELS="x:*"', "Max-Concurrent=3"]
)
def test_option_keywords_are_case_insensitive(text):
    options, warnings = options_of(f"{text} ssh-ed25519 {A} bob *")
    assert warnings == [] and not options.empty


def test_options_apply_to_a_line_for_any_key_too():
    keys, warnings = parse('from="192.168.0.0/16" * * team /api/tags\n')
    [grant] = keys.grants_for(BLOB_A)
    assert warnings == [] and grant.wildcard and grant.options.from_patterns == ("192.168.0.0/16",)


def test_spaces_inside_quotes_stay_in_the_options_field():
    # sshd ends the options at the first space or tab outside quotes
    # (authfile.c sshkey_advance_past_options); a space in a pattern is then malformed here.
    assert "models= pattern" in refused('models="a b"')


def test_an_escaped_quote_is_part_of_the_value():
    # misc.c opt_dequote: \" inside the quotes is a '"'; here no pattern may hold one.
    assert "quotes" in refused(r'models="a\"b"')


@pytest.mark.parametrize(
    "text, why",
    [
        ("restrict", "unknown option"),  # sshd.8's own options: the gate cannot honour them
        ("no-pty", "unknown option"),
        ('command="uptime"', "unknown option"),
        ('environment="A=b"', "unknown option"),
        ('tunnel="0"', "unknown option"),
        ('from ="10.0.0.1"', "unknown option"),  # misc.c opt_match: the keyword then '='
        ("%restrict", "unknown option (not shown: it may be key material)"),
        ("from=10.0.0.1", "missing start quote"),  # opt_dequote: valued options are quoted
        ('from="10.0.0.1', "unterminated quote"),
        ('from="10.0.0.1";models="x"', "unexpected ';'"),  # sshauthopt_parse: anything but ',' is unknown
        ('from="10.0.0.1",from="10.0.0.2"', "appears twice"),  # sshd: 'multiple "from" clauses'
        ('expiry-time="20991231",expiry-time="20991230"', "appears twice"),  # sshd keeps the earliest; here: nothing
        ('models="a",models="b"', "appears twice"),
        ("max-concurrent=1,max-concurrent=2", "appears twice"),
    ],
)
def test_an_unknown_malformed_or_repeated_option_grants_nothing(text, why):
    assert why in refused(text)


def test_a_space_after_a_comma_ends_the_options():
    # "No spaces are permitted, except within double quotes": the options end at the
    # space, and what follows is read as the key type.
    keys, warnings = parse(f'from="10.0.0.1", models="x:*" ssh-ed25519 {A} bob *\n')
    assert keys.grants_for(BLOB_A) == [] and len(warnings) == 1 and "unsupported key type" in warnings[0]


def test_a_trailing_comma_before_the_key_type_is_accepted_as_sshd_accepts_it():
    # sshauthopt_parse reads the options in place: after the ',' it meets the space before
    # the key type, not the end of the string (Debian's sshd 9.2 admits such a line).
    options, warnings = options_of(f'from="10.0.0.1", ssh-ed25519 {A} bob *')
    assert warnings == [] and options.from_patterns == ("10.0.0.1",)


@pytest.mark.parametrize("value, expected", [("1", 1), ('"2"', 2), ("100000", 100000), ('"17"', 17)])
def test_max_concurrent_quoted_or_not(value, expected):
    options, warnings = options_of(f"max-concurrent={value} ssh-ed25519 {A} bob *")
    assert warnings == [] and options.max_concurrent == expected


@pytest.mark.parametrize("value", ["0", "-1", "2.5", '""', "", "01", "100001", '"x"', "1e3"])
def test_max_concurrent_that_is_not_a_positive_whole_number_grants_nothing(value):
    refused(f"max-concurrent={value}")


# --- expiry-time (sshd.8: "a YYYYMMDD[Z] date or a YYYYMMDDHHMM[SS][Z] time ... in the
# system time zone unless suffixed by a Z character"; misc.c parse_absolute_time) ----------


@pytest.mark.parametrize(
    "spec, moment",
    [
        ("20270301Z", (2027, 3, 1, 0, 0, 0)),
        ("202703011230Z", (2027, 3, 1, 12, 30, 0)),
        ("20270301123045Z", (2027, 3, 1, 12, 30, 45)),
        ("20270301z", (2027, 3, 1, 0, 0, 0)),  # strcasecmp
        ("20270301UTC", (2027, 3, 1, 0, 0, 0)),  # parse_absolute_time also takes "UTC"
        ("20270301utc", (2027, 3, 1, 0, 0, 0)),
    ],
)
def test_a_utc_timespec(spec, moment):
    assert parse_timespec(spec) == calendar.timegm(moment)


@pytest.fixture
def tokyo(monkeypatch):
    # POSIX TZ (no tzdata needed): nine hours ahead of UTC, no summer time.
    monkeypatch.setenv("TZ", "JST-9")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "spec, moment",
    [
        ("20270301", (2027, 3, 1, 0, 0, 0)),
        ("202703011230", (2027, 3, 1, 12, 30, 0)),
        ("20270301123045", (2027, 3, 1, 12, 30, 45)),
    ],
)
def test_without_z_the_timespec_is_the_systems_local_time(tokyo, spec, moment):
    assert parse_timespec(spec) == calendar.timegm(moment) - 9 * 3600


@pytest.mark.parametrize(
    "spec",
    [
        "2027030",
        "2027030112",
        "202703011",
        "2027030112304",
        "202703011230456",  # lengths 7, 10, 9, 13, 15
        "20271301",
        "20270230",
        "20270431",
        "20270301240000",
        "20270301126000",
        "20270301123060",  # no such moment
        "2027-03-01",
        "+0270301",
        "2027030x",
        "Z",
        "UTC",
        "",
        "19600101",
        "\u0662\u0660\u0662\u0667\u0660\u0663\u0660\u0661",  # before 1970: sshd's uint64 would never expire
    ],
)
def test_a_timespec_that_is_not_one_grants_nothing(spec):
    with pytest.raises(OptionError):
        parse_timespec(spec)
    refused(f'expiry-time="{spec}"')


def test_expired_only_after_the_moment():
    # auth2-pubkeyfile.c: refused when valid_before < now.
    options = parse_options('expiry-time="20270301Z"')
    moment = calendar.timegm((2027, 3, 1, 0, 0, 0))
    assert not expired(options, moment - 1) and not expired(options, moment) and expired(options, moment + 1)
    assert not expired(NO_OPTIONS, 4e9)


# --- from= (ssh_config.5 PATTERNS; sshd.8: "may match IP addresses using CIDR
# address/masklen notation"; match.c match_host_and_ip, addrmatch.c addr_match_list) -------


def allowed(patterns: str, ip: str) -> bool:
    return address_allowed(parse_options(f'from="{patterns}"'), ip)


@pytest.mark.parametrize(
    "ip, expected",
    [
        ("192.168.0.1", True),
        ("192.168.0.9", True),
        ("192.168.0.10", False),
        ("192.168.1.1", False),
    ],
)
def test_a_question_mark_is_one_character(ip, expected):
    # ssh_config.5: "192.168.0.? would match any host in the 192.168.0.[0-9] network range".
    assert allowed("192.168.0.?", ip) is expected


@pytest.mark.parametrize(
    "ip, expected",
    [("10.1.2.3", True), ("10.255.255.255", True), ("11.0.0.1", False), ("::ffff:10.1.2.3", True), ("2001:db8::1", False)],
)
def test_cidr(ip, expected):
    assert allowed("10.0.0.0/8", ip) is expected


def test_ipv6_cidr_and_wildcards_over_the_canonical_text():
    assert allowed("2001:db8::/32", "2001:DB8:0:0::7") and not allowed("2001:db8::/32", "2001:db9::1")
    assert allowed("2001:DB8::*", "2001:db8::7")  # match_hostname lowers the pattern
    assert allowed("fe80::/10", "fe80::1%eth0")


def test_a_negated_match_never_admits_by_itself():
    # ssh_config.5: matching host3 against from="!host1,!host2" fails; add a positive term.
    assert not allowed("!10.0.0.1,!10.0.0.2", "10.0.0.3")
    assert allowed("!10.0.0.1,!10.0.0.2,*", "10.0.0.3")
    assert not allowed("!10.0.0.1,!10.0.0.2,*", "10.0.0.1")


@pytest.mark.parametrize("patterns", ["*,!10.0.0.5", "!10.0.0.5,*", "10.0.0.0/8,!10.0.0.0/24", "!10.0.0.0/24,10.0.0.0/8"])
def test_a_negated_match_denies_outright_wherever_it_stands(patterns):
    # match.c: addr_match_list returns -1 on the first negated hit; match_host_and_ip then denies.
    assert not allowed(patterns, "10.0.0.5")
    assert allowed(patterns, "10.9.9.9")


@pytest.mark.parametrize(
    "patterns, why",
    [
        ("*.example.com", "never host names"),  # the gate does no DNS: it could never match
        ("office.example.com", "never host names"),
        ("!*.dialup.example.com,*", "never host names"),  # ssh_config.5's own example: a negation that would never fire
        ("10.0.0.1/8", "host bits"),  # addr_pton_cidr: host bits under the mask are -2 (an error, which denies)
        ("10.0.0.0/33", "mask length"),
        ("10.1", "canonical form"),  # getaddrinfo would read 10.0.0.1
        ("012.0.0.1", "canonical form"),  # and this as octal
        ("10.0.0.0/255.0.0.0", "bad mask length"),  # sshd's strtonum: not a range, a pattern that never matches
        ("10.0.0.0/0.255.255.255", "bad mask length"),  # Python's ipaddress reads a host mask here
        ("fe80::%eth0/64", "bad mask length"),
        ("10.0.0.0/08", "bad mask length"),
        ("\u0661\u0660.0.0.1", "never host names"),  # Arabic-Indic digits
        ("10.0.0.1,,10.0.0.2", "empty pattern"),  # addr_match_list: an empty entry is -2
        ("!", "empty pattern"),
    ],
)
def test_a_from_list_the_gate_cannot_read_as_sshd_would_grants_nothing(patterns, why):
    assert why in refused(f'from="{patterns}"')


def test_no_from_option_admits_every_address_and_a_garbled_peer_is_denied():
    assert address_allowed(NO_OPTIONS, "203.0.113.9")
    assert not allowed("*", "not-an-address")


# --- models= (match.c match_pattern_list with '!'; case-insensitive as Ollama's name.go) --


@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama3:8b", True),
        ("LLAMA3:8B", True),
        ("llama3:70b", False),
        ("llama3.1:70b-instruct", False),
        ("qwen2.5:7b", True),
        ("qwen2.5:14b", False),
        ("gemma3", False),
    ],
)
def test_model_patterns(name, expected):
    options = parse_options('models="llama3*,!*70b*,qwen2.5:?b"')
    assert model_allowed(options, name) is expected


def test_models_negations_alone_admit_nothing_and_no_option_admits_all():
    assert not model_allowed(parse_options('models="!big*"'), "small")
    assert model_allowed(NO_OPTIONS, "anything")


def test_which_lines_need_reverse_proxy_mode():
    keys, warnings = parse(
        f'ssh-ed25519 {A} a *\nfrom="10.0.0.0/8" ssh-ed25519 {A} b *\nmodels="x:*" ssh-ed25519 {A} c *\n'
        f'max-concurrent=1 * * d /api/tags\nexpiry-time="20991231Z" * * e /api/tags\n'
    )
    assert warnings == [] and keys.needing_reverse_proxy() == [3, 4]


def test_until_the_engine_enforces_them_a_line_with_options_grants_less_never_more():
    from credential_helper.serve.key_options import enforceable_by_verify

    now = calendar.timegm((2027, 1, 1, 0, 0, 0))
    assert enforceable_by_verify(parse_options('expiry-time="20270301Z"'), now)
    assert not enforceable_by_verify(parse_options('expiry-time="20261231Z"'), now)
    for text in ('from="*"', 'models="*"', "max-concurrent=9"):
        assert not enforceable_by_verify(parse_options(text), now)


@pytest.mark.parametrize(
    "options, admitted",
    [
        ("", True),
        ('expiry-time="20991231Z"', True),
        ('expiry-time="20200101Z"', False),
        ('from="*"', False),
        ('models="*"', False),
        ("max-concurrent=5", False),
    ],
)
def test_verify_alone_admits_only_through_options_it_can_enforce(options, admitted):
    from cryptography.hazmat.primitives import serialization

    from credential_helper.serve.verify import Admitted, verify

    key = serialization.load_ssh_private_key(asset("keys/ed25519-a").read_bytes(), password=None)
    now = time.time()
    target = f"/api/tags?ts={int(now)}"
    authorization = f"{A}:{base64.b64encode(key.sign(f'GET,{target}'.encode())).decode()}"
    keys, warnings = parse(f"{options} ssh-ed25519 {A} bob *\n".lstrip())
    assert warnings == []
    assert isinstance(verify("GET", target, authorization, keys, now), Admitted) is admitted


# --- the same lines put to Debian's real sshd (from= and expiry-time= only) ----------------


SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


@pytest.fixture(scope="module")
def real_sshd(tmp_path_factory):
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("Debian's openssh-server is not installed (apt-get install openssh-server)")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("sshd with privilege separation needs root")
    directory = tmp_path_factory.mktemp("sshd")
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (directory / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\nAuthorizedKeysFile {directory / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPidFile {directory / 'sshd.pid'}\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(directory / "sshd_config")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield directory, port
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.interop
@pytest.mark.parametrize(
    "options",
    [
        'from="127.0.0.1"',
        'FROM="127.0.0.1"',
        'from="127.0.0.0/8"',
        'from="127.0.0.?"',
        'from="127.*"',
        'from="10.0.0.0/8"',
        'from="!127.0.0.1,*"',
        'from="*,!127.0.0.0/8"',
        'from="!10.0.0.1,!10.0.0.2"',
        'from="!10.0.0.1,*"',
        'from="127.0.0.1/8"',
        'from="10.0.0.1,,127.0.0.1"',
        "from=127.0.0.1",
        'from="127.0.0.1",',
        'from="127.0.0.1",from="127.0.0.1"',
        'expiry-time="20200101"',
        'expiry-time="20991231Z"',
        'expiry-time="20991231UTC"',
        'expiry-time="209912"',
        'expiry-time="209912312359"',
        'expiry-time="20991231235959Z"',
        'from="127.0.0.1",expiry-time="20991231"',
        'from="127.0.0.1",expiry-time="20200101Z"',
        'from="127.0.0.1";expiry-time="20991231"',
        'from="127.0.0.0/255.0.0.0"',
        'from="127.0.0.1/32"',
        'from="127.0.0.1", ',
    ],
)
def test_the_gate_admits_exactly_when_sshd_does(real_sshd, options):
    directory, port = real_sshd
    public = (directory / "user.pub").read_text().split()
    (directory / "authorized_keys").write_text(f"{options} {public[0]} {public[1]}\n")
    result = subprocess.run(
        [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-i",
            str(directory / "user"),
            "-p",
            str(port),
            "root@127.0.0.1",
            "true",
        ],
        capture_output=True,
        timeout=30,
    )
    sshd_admits = result.returncode == 0
    keys, _ = parse(f"{options} ssh-ed25519 {public[1]} member *\n")
    grants = keys.grants_for(base64.b64decode(public[1]))
    gate_admits = any(address_allowed(g.options, "127.0.0.1") and not expired(g.options, time.time()) for g in grants)
    assert gate_admits is sshd_admits, (options, result.stderr)


@pytest.mark.parametrize("name", ["ed25519-a", "ed25519-b", "ecdsa-p256", "ed25519-encrypted"])
def test_a_private_key_pasted_into_the_file_is_named_and_never_echoed(name):
    # An admin pastes id_ed25519 (not .pub) into authorized_keys: every line of it is skipped, the
    # warning says what happened, and no run of its text reaches the log (the review found 10
    # bytes of the seed echoed, lower-cased, as an "unknown option").
    text = (GOLDEN / "keys" / name).read_text()
    keys, warnings = parse(text)
    assert keys.grants_for(BLOB_A) == []
    shown = " ".join(warnings).lower()
    body = "".join(text.splitlines()[1:-1]).lower()
    assert not any(body[i : i + 8] in shown for i in range(len(body) - 8)), warnings
    assert any("a private key was pasted here" in warning for warning in warnings), warnings


def test_only_an_option_sshd_knows_is_named():
    assert "unknown option 'no-pty' (an sshd option)" in refused("no-pty")
    assert "unknown option 'restrict' (an sshd option)" in refused("Restrict,from=1.2.3.4")
    warning = refused("abcdefghijklmnopqrstuvwxyz0123456789=1")
    assert "abcdef" not in warning and "not shown" in warning

"""The gate's verifier against requests Ollama's own, unmodified client sent
(golden/gate.json, recorded from api/client.go with OLLAMA_AUTH=1), and against
hostile requests signed with the golden test keys by the ``cryptography``
package directly (never by this project's signer), so that each refusal is for
the one fault under test and not for a bad signature.
"""

from __future__ import annotations

import base64
import statistics
import time

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import asset, load_vectors
from credential_helper.serve.authorized_keys import fingerprint, parse
from credential_helper.serve.forwarded import authorization_header, forwarded_request
from credential_helper.serve.verify import (
    HEALTH_CHECK_NAME,
    Admitted,
    Refused,
    verify,
)
from credential_helper.serve.target import canonical_path_problem

VECTORS = load_vectors("gate.json")
POSITIVES = [v for v in VECTORS if v["expect"] == "admit"]
NEGATIVES = [v for v in VECTORS if v["expect"] == "refuse"]
SKEW = 300
PUB_A = asset("keys/ed25519-a.pub").read_text()
PUB_B = asset("keys/ed25519-b.pub").read_text()
BOTH = parse(PUB_A + PUB_B)[0]
A_B64, B_B64 = PUB_A.split()[1], PUB_B.split()[1]
FP_A = "SHA256:gt1PrHph2b7/AcPLzcXtYtCpWnx8wNxrqQkE1Cxovow"  # ssh-keygen -lf golden/keys/ed25519-a.pub
NOW = 1796153339


def private(name: str):
    return serialization.load_ssh_private_key(asset(f"keys/{name}").read_bytes(), password=None)


KEY_A, KEY_B = private("ed25519-a"), private("ed25519-b")


def sign(method: str, target: str, key=None, b64: str | None = None) -> str:
    """auth/auth.go Sign over <METHOD>,<target>: <key base64>:<raw signature base64>."""
    key = key or KEY_A
    b64 = b64 or (A_B64 if key is KEY_A else B_B64)
    return f"{b64}:{base64.b64encode(key.sign(f'{method},{target}'.encode())).decode()}"


def keys_for(text: str):
    keys, warnings = parse(text)
    assert warnings == [], warnings
    return keys


TAGS_ONLY = keys_for(f"ssh-ed25519 {A_B64} alice /api/tags\n")


def check(result, status: int | None):
    """status None: admitted. Otherwise refused with that status and a message
    that is one printable line and holds no signature."""
    if status is None:
        assert isinstance(result, Admitted), result
        return result
    assert isinstance(result, Refused), result
    assert result.status == status, result
    assert result.message and result.message.isprintable() and len(result.message) < 600, result
    return result


def no_secret(result, authorization: str) -> None:
    signature = authorization.rpartition(":")[2]
    assert signature[:16] not in result.message


# --- Ollama's own client ------------------------------------------------------------------


@pytest.mark.parametrize("vector", POSITIVES, ids=[v["name"] for v in POSITIVES])
def test_ollamas_own_requests_are_admitted_at_their_ts(vector):
    result = check(verify(vector["method"], vector["target"], vector["authorization"], BOTH, vector["ts"], SKEW), None)
    expected = "test@example" if vector["key_file"].endswith("-b") else FP_A
    assert result.name == expected
    blob = base64.b64decode(vector["authorization"].split(":")[0])
    assert result.fingerprint == fingerprint(blob)
    # the same request in Bearer form (some of Ollama's callers send it so)
    check(verify(vector["method"], vector["target"], "Bearer " + vector["authorization"], BOTH, vector["ts"], SKEW), None)


@pytest.mark.parametrize("vector", NEGATIVES, ids=[v["name"] for v in NEGATIVES])
def test_the_recorded_negatives_are_refused_at_their_now(vector):
    result = check(verify(vector["method"], vector["target"], vector["authorization"], BOTH, vector["now"], SKEW), 401)
    no_secret(result, vector["authorization"])


@pytest.mark.parametrize("vector", POSITIVES, ids=[v["name"] for v in POSITIVES])
def test_each_of_ollamas_requests_is_refused_outside_the_window(vector):
    ts, args = vector["ts"], (vector["method"], vector["target"], vector["authorization"], BOTH)
    check(verify(*args, ts + SKEW, SKEW), None)  # the window's edges are inside
    check(verify(*args, ts - SKEW, SKEW), None)
    assert "behind" in check(verify(*args, ts + SKEW + 1, SKEW), 401).message
    assert "ahead of" in check(verify(*args, ts - SKEW - 1, SKEW), 401).message
    check(verify(*args, ts + 0.5, 0), 401)  # --max-skew 0 really is zero
    check(verify(*args, float("nan"), SKEW), 401)


@pytest.mark.parametrize("vector", POSITIVES, ids=[v["name"] for v in POSITIVES])
@pytest.mark.parametrize("index", [0, 1, 31, 32, 62, 63])
def test_each_of_ollamas_requests_is_refused_with_a_signature_byte_changed(vector, index):
    key, signature = vector["authorization"].split(":")
    raw = bytearray(base64.b64decode(signature))
    for bit in (0x01, 0x80):
        changed = raw.copy()
        changed[index] ^= bit
        authorization = f"{key}:{base64.b64encode(bytes(changed)).decode()}"
        check(verify(vector["method"], vector["target"], authorization, BOTH, vector["ts"], SKEW), 401)


@pytest.mark.parametrize("vector", POSITIVES, ids=[v["name"] for v in POSITIVES])
def test_each_of_ollamas_requests_is_refused_on_another_path_or_method(vector):
    ts, authorization = vector["ts"], vector["authorization"]
    for method in {"GET", "POST", "HEAD", "DELETE", "PUT"} - {vector["method"]}:
        check(verify(method, vector["target"], authorization, BOTH, ts, SKEW), 401)
    check(verify(vector["method"].lower(), vector["target"], authorization, BOTH, ts, SKEW), 401)
    for target in ("/api/other?ts=%d" % ts, "/api/pull?ts=%d" % ts, "/?ts=%d" % ts, vector["target"] + "&x=1"):
        if target != vector["target"]:
            check(verify(vector["method"], target, authorization, BOTH, ts, SKEW), 401)
    # the other golden key presented with this signature
    key = vector["authorization"].split(":")[0]
    other = B_B64 if key == A_B64 else A_B64
    check(verify(vector["method"], vector["target"], other + authorization[len(key) :], BOTH, ts, SKEW), 401)


def test_an_unlisted_key_with_a_valid_signature_hears_its_fingerprint_and_the_line_to_add():
    vector = POSITIVES[0]  # key a, GET /api/tags
    only_b = keys_for(PUB_B)
    result = check(verify(vector["method"], vector["target"], vector["authorization"], only_b, vector["ts"], SKEW), 401)
    assert FP_A in result.message
    assert f"ssh-ed25519 {A_B64} <name> /api/tags" in result.message
    no_secret(result, vector["authorization"])
    assert str(vector["ts"]) not in result.message


# --- endpoint grants --------------------------------------------------------------------------


def test_a_key_listed_for_tags_only():
    target = f"/api/tags?ts={NOW}"
    assert check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), None) == Admitted("alice", FP_A)
    target = f"/api/chat?ts={NOW}"
    authorization = sign("POST", target)
    result = check(verify("POST", target, authorization, TAGS_ONLY, NOW), 403)
    assert FP_A in result.message and "alice" in result.message and "/api/chat" in result.message
    no_secret(result, authorization)


def test_the_query_is_not_part_of_the_endpoint():
    target = f"/api/tags?x=/api/chat&ts={NOW}"
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), None)
    target = f"/api/chat?x=/api/tags&ts={NOW}"
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), 403)


# Every spelling of /api/chat we could think of, each correctly signed by the
# tags-only key: 400 when not canonical, 403 when canonical but not /api/tags.
NON_CANONICAL_CHAT = [
    "/api/tags/../chat",
    "/api/tags/%2e%2e/chat",
    "/api/tags/%2E%2E/chat",
    "/api/tags/.%2e/chat",
    "/api/./chat",
    "/./api/chat",
    "/api/tags/..",
    "/api/tags/.",
    "/api//chat",
    "//api/chat",
    "/api/chat//",
    "/api/%63hat",
    "/api/ch%61t",
    "/%61pi/chat",
    "/api%2Fchat",
    "/api%2fchat",
    "/api%5Cchat",
    "/api%5cchat",
    "/api\\chat",
    "/api/tags\\..\\chat",
    "/api/chat%00",
    "/api/chat%20",
    "/api/ch%2561t",
    "/api/chat;x",
    "/api/tags;/../chat",
    "/api/chat#frag",
    "/api/chat\x00",
    "/api/chat\t",
    "/api/ch\u0430t",  # Cyrillic a
    "/api/chat\u200b",
    "http://box.example/api/chat",
    "HTTP://box.example/api/chat",
    "box.example:443",
    "*",
    "api/chat",
    "",
]
CANONICAL_BUT_NOT_TAGS = [
    "/API/chat",
    "/API/TAGS",
    "/api/Tags",
    "/api/tags/",
    "/api/chat/",
    "/api/chat",
    "/api/tagsx",
    "/api/tags.json",
    "/api/tags/x",
]


@pytest.mark.parametrize("path", NON_CANONICAL_CHAT)
def test_a_non_canonical_spelling_is_refused_with_400(path):
    target = f"{path}?ts={NOW}" if path not in ("", "*", "box.example:443") else path
    assert canonical_path_problem(target) is not None
    for keys in (TAGS_ONLY, keys_for(f"ssh-ed25519 {A_B64} root *\n")):
        result = check(verify("POST", target, sign("POST", target), keys, NOW), 400)
        # never echoes the caller's spelling
        assert "\x00" not in result.message and "\u0430" not in result.message and "#frag" not in result.message


@pytest.mark.parametrize("path", CANONICAL_BUT_NOT_TAGS)
def test_a_canonical_path_other_than_the_grant_is_refused_with_403(path):
    target = f"{path}?ts={NOW}"
    assert canonical_path_problem(target) is None
    check(verify("POST", target, sign("POST", target), TAGS_ONLY, NOW), 403)


@pytest.mark.parametrize(
    "query",
    [
        f"ts={NOW}&x=a;b",
        f"ts={NOW}&x=%zz",
        f"ts={NOW}&x=%4",
        f"%74s={NOW}",
        f"ts={NOW}&x=%41",
        f"ts={NOW}&x=a b",
        f"ts={NOW}&x=\u00e9",
        f"ts={NOW}&x=a\r\nX-Evil: 1",
    ],
)
def test_an_ambiguous_query_is_refused_with_400(query):
    target = f"/api/tags?{query}"
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), 400)


def test_go_style_query_escapes_are_canonical():
    # what url.QueryEscape writes: %XX for reserved bytes, + for space
    target = f"/api/tags?q=a+b%2Fc%3D%26%C3%A9&ts={NOW}"
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), None)


def test_wildcard_lines():
    keys = keys_for(f"ssh-ed25519 {B_B64} bob /api/chat\n* * * /api/tags\n")
    target = f"/api/tags?ts={NOW}"
    # an unlisted key: in for /api/tags under its fingerprint, 401 with the line to add elsewhere
    assert check(verify("GET", target, sign("GET", target), keys, NOW), None) == Admitted(FP_A, FP_A)
    chat = f"/api/chat?ts={NOW}"
    assert "ssh-ed25519 " + A_B64 in check(verify("POST", chat, sign("POST", chat), keys, NOW), 401).message
    # a listed key keeps its own name when a wildcard line lets it in
    result = check(verify("GET", target, sign("GET", target, KEY_B), keys, NOW), None)
    assert result.name == "bob"
    check(verify("POST", chat, sign("POST", chat, KEY_B), keys, NOW), None)
    # a named wildcard line names an unlisted caller
    keys = keys_for("* * team /api/tags\n")
    assert check(verify("GET", target, sign("GET", target), keys, NOW), None).name == "team"


def test_an_empty_file_admits_nobody():
    target = f"/api/tags?ts={NOW}"
    check(verify("GET", target, sign("GET", target), keys_for("# nobody yet\n"), NOW), 401)


# --- ts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "",
        "x=1",
        "TS=%d" % NOW,
        "ts=%d&ts=%d" % (NOW, NOW),
        "ts=%d&ts=%d" % (NOW, NOW - 1000),
        "ts&ts=%d" % NOW,
        "ts=",
        "ts",
        "ts=+%d" % NOW,
        "ts=+1",
        "ts=-%d" % NOW,
        "ts=0%d" % NOW,
        "ts=%d.0" % NOW,
        "ts=%de0" % NOW,
        "ts=0x6b0f8c7b",
        "ts=" + "9" * 40,
        "ts=" + "1" * 5000,
        "ts=%d%%20" % NOW,
        "ts=%d+" % NOW,
        "ts=1796153339\u0661",
    ],
)
def test_ts_must_occur_once_as_plain_digits(query):
    target = "/api/tags?" + query if query else "/api/tags"
    if canonical_path_problem(target) is not None:
        status = 400
    else:
        status = 401
    result = check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), status)
    assert "ts" in result.message or status == 400


def test_ts_zero_and_huge_values_are_only_stale():
    for ts in ("0", "999999999999"):
        target = f"/api/tags?ts={ts}"
        assert "clock" in check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), 401).message


def test_ts_may_sit_anywhere_in_the_query():
    target = f"/api/tags?a=1&ts={NOW}&b=2"
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), None)


def test_an_invalid_max_skew_is_a_programming_error():
    target = f"/api/tags?ts={NOW}"
    for skew in (float("nan"), float("inf"), -1):
        with pytest.raises(ValueError):
            verify("GET", target, sign("GET", target), TAGS_ONLY, NOW, skew)


# --- Authorization ----------------------------------------------------------------------------

RSA_BLOB = asset("keys/rsa-2048.pub").read_text().split()[1]
ECDSA_BLOB = asset("keys/ecdsa-p256.pub").read_text().split()[1]


@pytest.mark.parametrize(
    "make",
    [
        lambda good: good.replace(":", ""),
        lambda good: good.replace(":", ";"),
        lambda good: good.split(":")[0],
        lambda good: ":" + good.split(":")[1],
        lambda good: good + ":",
        lambda good: good + ":x",
        lambda good: good.split(":")[0] + ":!!!!" + good.split(":")[1][4:],
        lambda good: "!" + good[1:],
        lambda good: good.split(":")[0] + ":" + good.split(":")[1].rstrip("="),  # padding dropped
        lambda good: good.split(":")[0] + ": " + good.split(":")[1],
        lambda good: good.split(":")[0] + ":" + good.split(":")[1][:-3] + "B==",  # stray bits (non-canonical)
        lambda good: good.split(":")[0] + ":" + base64.b64encode(base64.b64decode(good.split(":")[1])[:63]).decode(),
        lambda good: good.split(":")[0] + ":" + base64.b64encode(base64.b64decode(good.split(":")[1]) + b"\0").decode(),
        lambda good: base64.b64encode(base64.b64decode(good.split(":")[0])[:-1]).decode() + ":" + good.split(":")[1],
        lambda good: base64.b64encode(base64.b64decode(good.split(":")[0]) + b"\0").decode() + ":" + good.split(":")[1],
        lambda good: RSA_BLOB + ":" + good.split(":")[1],
        lambda good: ECDSA_BLOB + ":" + good.split(":")[1],
        lambda good: "Basic " + good,
        lambda good: "Bearer",
        lambda good: "Bearer ",
        lambda good: "Bearer\t" + good,
        lambda good: good + "\r\nX-Ollama-User: root",
        lambda good: good + "\nAuthorization: " + good,
        lambda good: good + "," + good,
        lambda good: good + " " + good,
        lambda good: "x" * 100_000,
        lambda good: good.split(":")[0] + ":" + "A" * 100_000,
    ],
)
def test_a_malformed_authorization_is_401(make):
    target = f"/api/tags?ts={NOW}"
    good = sign("GET", target)
    check(verify("GET", target, good, TAGS_ONLY, NOW), None)  # the control: the good one is in
    bad = make(good)
    result = check(verify("GET", target, bad, TAGS_ONLY, NOW), 401)
    no_secret(result, good)
    assert "root" not in result.message and "X-Ollama" not in result.message


def test_only_the_canonical_base64_spelling_is_accepted():
    # The last character before "==" of a 64-byte signature carries 2 data bits
    # and 4 unused ones: setting an unused bit leaves the decoded bytes (and so
    # the signature) unchanged. Go's encoder never writes it; the gate refuses it.
    target = f"/api/tags?ts={NOW}"
    key, signature = sign("GET", target).split(":")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stray = alphabet[alphabet.index(signature[-3]) | 0b0001]
    odd = signature[:-3] + stray + "=="
    assert odd != signature and base64.b64decode(odd) == base64.b64decode(signature)
    check(verify("GET", target, f"{key}:{odd}", TAGS_ONLY, NOW), 401)


def test_an_rsa_key_is_refused_even_with_a_wildcard_line():
    target = f"/api/tags?ts={NOW}"
    signature = base64.b64encode(bytes(64)).decode()
    assert "Ed25519" in check(verify("GET", target, f"{RSA_BLOB}:{signature}", keys_for("* * * *\n"), NOW), 401).message


def test_bearer_prefix_in_any_case_is_accepted():
    target = f"/api/tags?ts={NOW}"
    for prefix in ("Bearer ", "bearer ", "BEARER ", "Bearer  "):
        check(verify("GET", target, prefix + sign("GET", target), TAGS_ONLY, NOW), None)


def test_a_bad_method_is_400():
    target = f"/api/tags?ts={NOW}"
    for method in ("", "GE T", "GET\r\n", "G\u00c9T", "X" * 33):
        check(verify(method, target, sign("GET", target), TAGS_ONLY, NOW), 400)


def test_a_huge_target_is_refused_quickly():
    target = "/api/tags?x=" + "a" * 1_000_000 + f"&ts={NOW}"
    started = time.perf_counter()
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), 400)
    assert time.perf_counter() - started < 0.05


# --- HEAD / and unsigned requests -----------------------------------------------------------


def test_an_unsigned_head_slash_is_a_health_check():
    assert check(verify("HEAD", "/", None, TAGS_ONLY, NOW), None) == Admitted(HEALTH_CHECK_NAME, "")
    check(verify("HEAD", "/", "", TAGS_ONLY, NOW), None)
    # switched off: 401 like everything unsigned
    check(verify("HEAD", "/", None, TAGS_ONLY, NOW, allow_health_check=False), 401)


@pytest.mark.parametrize(
    "method, target",
    [
        ("GET", "/"),
        ("HEAD", "/?x=1"),
        ("HEAD", "/api/tags"),
        ("HEAD", "//"),
        ("POST", "/"),
        ("GET", "/api/tags"),
        ("HEAD", f"/?ts={NOW}"),
    ],
)
def test_every_other_unsigned_request_is_401(method, target):
    expected = 400 if canonical_path_problem(target) else 401
    check(verify(method, target, None, TAGS_ONLY, NOW), expected)


def test_a_signed_head_slash_is_verified_like_any_other():
    target = f"/?ts={NOW}"
    check(verify("HEAD", target, sign("HEAD", target), keys_for(PUB_A), NOW), None)
    check(verify("HEAD", "/", sign("HEAD", "/"), keys_for(PUB_A), NOW), 401)  # signed, no ts
    bad = sign("GET", target)
    check(verify("HEAD", target, bad, keys_for(PUB_A), NOW), 401)


def test_a_signed_heartbeat_passes_for_every_key_the_file_knows():
    # "ollama ls" calls HEAD / first: the draft's "* * * /api/tags" must let it.
    target = f"/?ts={NOW}"
    check(verify("HEAD", target, sign("HEAD", target), TAGS_ONLY, NOW), None)
    check(verify("HEAD", target, sign("HEAD", target, KEY_B), keys_for("* * * /api/tags\n"), NOW), None)
    # GET / is no heartbeat; an unknown key hears 401 and its line even at HEAD /
    check(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), 403)
    assert B_B64 in check(verify("HEAD", target, sign("HEAD", target, KEY_B), TAGS_ONLY, NOW), 401).message


# --- --auth-only: the front server's headers ------------------------------------------------

TARGET = f"/api/chat?ts={NOW}"


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Original-Method", "POST"), ("X-Original-URI", TARGET)],
        [("x-original-method", "POST"), ("x-original-uri", TARGET)],
        [("X-Forwarded-Method", "POST"), ("X-Forwarded-Uri", TARGET)],
        [("X-FORWARDED-METHOD", "POST"), ("X-Forwarded-URI", TARGET), ("Host", "gate")],
        [("X-Original-Method", "POST"), ("X-Original-URI", TARGET), ("X-Forwarded-Method", "POST"), ("X-Forwarded-Uri", TARGET)],
        [("X-Original-Method", " POST "), ("X-Original-URI", TARGET + "\t")],
    ],
)
def test_forwarded_request_reads_either_family(headers):
    assert forwarded_request(headers) == ("POST", TARGET)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Host", "gate")],
        [("X-Original-Method", "POST")],
        [("X-Original-URI", TARGET)],
        [("X-Original-Method", "POST"), ("X-Original-URI", TARGET), ("X-Forwarded-Method", "GET"), ("X-Forwarded-Uri", TARGET)],
        [
            ("X-Original-Method", "POST"),
            ("X-Original-URI", TARGET),
            ("X-Forwarded-Method", "POST"),
            ("X-Forwarded-Uri", "/api/tags"),
        ],
        [("X-Original-Method", "POST"), ("X-Original-URI", TARGET), ("X-Forwarded-Uri", TARGET)],
        [("X-Original-Method", "POST"), ("X-Original-URI", TARGET), ("x-original-uri", "/api/tags")],
        [("X-Original-Method", "POST"), ("X-Original-Method", "POST"), ("X-Original-URI", TARGET)],
        [("X-Forwarded-Method", "POST"), ("X-Forwarded-Uri", TARGET), ("X-Forwarded-Uri", TARGET)],
    ],
)
def test_forwarded_request_refuses_missing_repeated_or_disagreeing_headers(headers):
    result = forwarded_request(headers)
    assert isinstance(result, Refused) and result.status == 400, result


def test_forwarded_request_then_verify_end_to_end():
    authorization = sign("POST", TARGET)
    headers = [("X-Original-Method", "POST"), ("X-Original-URI", TARGET), ("Authorization", authorization)]
    method, target = forwarded_request(headers)
    assert authorization_header(headers) == authorization
    check(verify(method, target, authorization_header(headers), keys_for(PUB_A), NOW), None)
    # a CR/LF smuggled into the URI header never verifies
    headers = [("X-Original-Method", "POST"), ("X-Original-URI", TARGET + "\r\nX-Ollama-User: root")]
    method, target = forwarded_request(headers)
    check(verify(method, target, authorization, keys_for(PUB_A), NOW), 400)


def test_authorization_header_is_refused_when_repeated():
    assert authorization_header([("Host", "x")]) is None
    result = authorization_header([("Authorization", "a:b"), ("authorization", "c:d")])
    assert isinstance(result, Refused) and result.status == 400


# --- speed ------------------------------------------------------------------------------------


def test_one_verify_takes_well_under_a_millisecond():
    vector = POSITIVES[4]
    args = (vector["method"], vector["target"], vector["authorization"], BOTH, vector["ts"])
    times = []
    for _ in range(2000):
        started = time.perf_counter()
        verify(*args)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.001

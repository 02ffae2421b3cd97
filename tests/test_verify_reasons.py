"""Each of the gate's refusals with its status and reason class, the key and name the
log gets, and the words the caller reads (serve/verify.py; issue 21, found by
mutation: the existing tests pin the status, the log and metrics count the
class). Classes are PLAN.md's list as README "Gate" documents them; signatures
are made here with the golden keys (auth/auth.go Sign: <key b64>:<raw sig b64>)."""

from __future__ import annotations

import base64
import math

import pytest

from credential_helper.serve.verify import MAX_AUTHORIZATION_CHARS, Admitted, Refused, verify
from test_gate_verify import A_B64, B_B64, FP_A, NOW, RSA_BLOB, TAGS_ONLY, keys_for, sign

TARGET = f"/api/tags?ts={NOW}"


def refused(result, status: int, reason: str) -> Refused:
    assert isinstance(result, Refused), result
    assert (result.status, result.reason) == (status, reason), result
    return result


def test_a_bad_method_is_malformed():
    refused(verify("GE T", TARGET, sign("GET", TARGET), TAGS_ONLY, NOW), 400, "malformed")


def test_a_non_canonical_target_is_malformed():
    result = refused(verify("GET", f"/api//tags?ts={NOW}", sign("GET", TARGET), TAGS_ONLY, NOW), 400, "malformed")
    assert result.message.startswith("the request target is not in canonical form: ")
    assert result.message.endswith("; send the path exactly as the server routes it")


@pytest.mark.parametrize("authorization", [None, "", "  "])
def test_no_signature_is_unsigned(authorization):
    result = refused(verify("GET", TARGET, authorization, TAGS_ONLY, NOW), 401, "unsigned")
    assert "OLLAMA_AUTH=1" in result.message


def test_an_api_key_is_unsigned():
    result = refused(verify("GET", TARGET, "Bearer sk-0123456789", TAGS_ONLY, NOW), 401, "unsigned")
    assert result.message == (
        "the Authorization header is not '<public key>:<signature>' as Ollama's client signs it (OLLAMA_AUTH=1)"
    )


def test_the_length_bound_is_1024_characters():
    too_long = refused(verify("GET", TARGET, "x" * (MAX_AUTHORIZATION_CHARS + 1), TAGS_ONLY, NOW), 401, "malformed")
    assert too_long.message == "the Authorization header is too long to be '<public key>:<signature>'"
    at_bound = refused(verify("GET", TARGET, "x" * MAX_AUTHORIZATION_CHARS, TAGS_ONLY, NOW), 401, "unsigned")
    assert "too long" not in at_bound.message


def good_parts() -> tuple[str, str]:
    key, _, signature = sign("GET", TARGET).partition(":")
    return key, signature


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda k, s: f"!!!!:{s}", "the public key in the Authorization header is not valid base64"),
        (lambda k, s: f"{k}:!!!!", "the signature in the Authorization header is not valid base64"),
        (
            lambda k, s: f"{RSA_BLOB}:{s}",
            "the key in the Authorization header is not an Ed25519 key; only ssh-ed25519 keys are admitted",
        ),
        (
            lambda k, s: f"{k}:{base64.b64encode(base64.b64decode(s)[:63]).decode()}",
            "the signature in the Authorization header is not 64 bytes (Ed25519)",
        ),
    ],
)
def test_a_malformed_credential_says_which_part(make, message):
    result = refused(verify("GET", TARGET, make(*good_parts()), TAGS_ONLY, NOW), 401, "malformed")
    assert result.message == message


@pytest.mark.parametrize(
    "query, message",
    [
        ("a=1", "the signed target has no ts= in its query (Ollama's client adds it when OLLAMA_AUTH=1)"),
        (f"ts={NOW}&ts={NOW}", "the signed target has more than one ts= in its query"),
        (f"ts=0{NOW}", "ts= in the query is not Unix seconds in plain decimal digits"),
    ],
)
def test_a_ts_that_cannot_be_read_is_malformed(query, message):
    target = f"/api/tags?{query}"
    result = refused(verify("GET", target, sign("GET", target), TAGS_ONLY, NOW), 401, "malformed")
    assert result.message == message


def test_a_signature_that_does_not_verify_is_bad_signature():
    result = refused(verify("GET", TARGET, sign("POST", TARGET), TAGS_ONLY, NOW), 401, "bad-signature")
    assert result.message.startswith("the signature does not verify over GET /api/tags with its query")
    assert result.key == ""  # an unverified key is never named


@pytest.mark.parametrize("skew, direction", [(301, "behind"), (-301, "ahead of")])
def test_a_stale_ts_names_the_key_its_owner_and_the_direction(skew, direction):
    result = refused(verify("GET", TARGET, sign("GET", TARGET), TAGS_ONLY, NOW + skew), 401, "stale")
    assert (result.key, result.user) == (FP_A, "alice")
    assert result.message == (
        f"the signature's ts is 301 s {direction} this server's clock, more than the 300 s allowed: "
        "sync the client's clock (e.g. timedatectl set-ntp true), or the request was replayed"
    )


def test_a_clock_that_cannot_be_compared_is_stale():
    result = refused(verify("GET", TARGET, sign("GET", TARGET), TAGS_ONLY, math.nan), 401, "stale")
    assert result.message == "the signature's ts cannot be compared with this server's clock" and result.key == FP_A


def test_a_stale_key_is_named_only_by_its_own_lines():
    # Admitted through a named wildcard line only: the log must not call it by that line's name.
    result = refused(verify("GET", TARGET, sign("GET", TARGET), keys_for("* * team *\n"), NOW + 301), 401, "stale")
    assert (result.key, result.user) == (FP_A, "")


def test_a_listed_key_on_another_endpoint_is_not_granted():
    target = f"/api/chat?ts={NOW}"
    result = refused(verify("POST", target, sign("POST", target), TAGS_ONLY, NOW), 403, "not-granted")
    assert (result.key, result.user) == (FP_A, "alice")
    assert result.message == (
        f"key {FP_A} (alice) is not granted /api/chat: the operator can add /api/chat "
        "to its endpoint list in the server's authorized_keys"
    )


def test_an_unknown_key_hears_the_line_to_add_and_the_operator_gets_a_hint():
    other = keys_for(f"ssh-ed25519 {B_B64} bob *\n")
    result = refused(verify("GET", TARGET, sign("GET", TARGET), other, NOW), 401, "unknown-key")
    assert (result.key, result.user) == (FP_A, "")
    assert result.hint == f"to admit it add: ssh-ed25519 {A_B64} <name> /api/tags"
    assert result.message == (
        f"key {FP_A} is not in this server's authorized_keys; to admit it the operator adds the line: "
        f"ssh-ed25519 {A_B64} <name> /api/tags   (or * instead of /api/tags for every endpoint)"
    )


def test_an_admitted_key_is_named_by_its_own_line():
    admitted = verify("GET", TARGET, sign("GET", TARGET), TAGS_ONLY, NOW)
    assert isinstance(admitted, Admitted) and (admitted.name, admitted.fingerprint) == ("alice", FP_A)


def test_max_skew_must_be_finite_and_not_negative():
    for skew in (-1, math.inf, math.nan, "300"):
        with pytest.raises(ValueError, match="^max_skew must be a finite number of seconds, 0 or more$"):
            verify("GET", TARGET, sign("GET", TARGET), TAGS_ONLY, NOW, max_skew=skew)
    assert isinstance(verify("GET", TARGET, sign("GET", TARGET), TAGS_ONLY, NOW, max_skew=0), Admitted)


def test_the_key_set_counts_every_line_and_says_what_it_holds():
    keys = keys_for(f"ssh-ed25519 {A_B64} alice /api/tags\nssh-ed25519 {A_B64} alice /api/chat\n* * team /api/ps\n")
    assert len(keys) == 3
    assert repr(keys) == "<AuthorizedKeys 1 keys, 1 wildcard lines>"


def test_the_shared_server_warning_is_for_the_default_key_off_ollama_com():
    from credential_helper import policy, protocol

    other = protocol.parse_url("https://gate.example/api/tags")
    assert policy.shared_server_warning(other, False) is None  # a key chosen for it: no warning
    assert policy.shared_server_warning(protocol.parse_url("https://OLLAMA.COM./api/tags"), True) is None
    warning = policy.shared_server_warning(other, True)
    assert warning.startswith("signing with your default key toward gate.example: ")


# --- the key file's grammar at its edges (serve/authorized_keys.py) ---------------------------------


def test_a_line_of_8192_characters_is_read_and_a_longer_one_skipped():
    from credential_helper.serve.authorized_keys import parse

    line = f"ssh-ed25519 {A_B64} alice /api/tags"
    padded = line + "," + "/x" * ((8192 - len(line) - 1) // 2)
    padded += "y" * (8192 - len(padded))
    assert len(padded) == 8192
    keys, warnings = parse(padded + "\n")
    assert warnings == [] and len(keys) == 1
    keys, warnings = parse(padded + "y\n")
    assert warnings == ["line 1: skipped: longer than 8192 characters"] and len(keys) == 0


def test_an_option_where_the_name_goes_is_refused_even_without_endpoints():
    # sshd reads what follows the key as a comment; taken as a name it would grant every model.
    from credential_helper.serve.authorized_keys import parse

    for line in (f'ssh-ed25519 {A_B64} models="small"', f'ssh-ed25519 {A_B64} models="small" *'):
        keys, warnings = parse(line + "\n")
        assert len(keys) == 0 and len(warnings) == 1 and "is an option where the name goes" in warnings[0], warnings


def test_a_bom_before_leading_space_is_still_named():
    from credential_helper.serve.authorized_keys import parse

    keys, warnings = parse(f" \ufeffssh-ed25519 {A_B64} alice *\n")
    assert len(keys) == 0 and len(warnings) == 1 and "save the file as UTF-8 without BOM" in warnings[0], warnings

"""The gate's authorized_keys file: Ollama's draft format (ollama/ollama PR #11574,
auth/authorized_keys.go and its test), fingerprints as ssh-keygen prints them, and
the rules by which an ambiguous line grants less (issue 19). The file on disk is
tests/test_keyfile.py's.

The format cases are the draft's own test table (auth/authorized_keys_test.go,
TestParse), asserted as the grants they must give rather than the draft's map.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from conftest import asset
from credential_helper.serve.authorized_keys import default_path, fingerprint, parse


def pub(name: str) -> str:
    """The base64 field of a golden public key (as ssh-keygen wrote it)."""
    return asset(f"keys/{name}.pub").read_text().split()[1]


A, B, C = pub("ed25519-a"), pub("ed25519-b"), pub("ed25519-encrypted")
BLOB_A, BLOB_B, BLOB_C = (base64.b64decode(k) for k in (A, B, C))
RSA, ECDSA = pub("rsa-2048"), pub("ecdsa-p256")


def granted(keys, blob: bytes, path: str) -> bool:
    return any(grant.allows(path) for grant in keys.grants_for(blob))


# --- the format -----------------------------------------------------------------------------


def test_a_plain_public_key_line_is_full_access_named_by_its_comment():
    # id_ed25519.pub exactly as ssh-keygen wrote it (ed25519-b has the comment test@example).
    keys, warnings = parse(asset("keys/ed25519-b.pub").read_text())
    assert warnings == []
    [grant] = keys.grants_for(BLOB_B)
    assert (grant.name, grant.line, grant.wildcard) == ("test@example", 1, False)
    assert grant.allows("/api/chat") and grant.allows("/api/pull") and grant.allows("/")
    assert keys.grants_for(BLOB_A) == []


def test_a_line_without_name_is_named_by_the_fingerprint():
    # ed25519-a.pub has no comment: the draft would call it "default".
    keys, warnings = parse(asset("keys/ed25519-a.pub").read_text())
    assert warnings == []
    [grant] = keys.grants_for(BLOB_A)
    assert grant.name == grant.fingerprint == "SHA256:gt1PrHph2b7/AcPLzcXtYtCpWnx8wNxrqQkE1Cxovow"


# The draft's TestParse table, one case each, as grants.
def test_draft_two_fields_only_defaults():
    keys, _ = parse(f"ssh-ed25519 {A}\n")
    assert granted(keys, BLOB_A, "/api/anything")


def test_draft_extra_whitespace_collapsed_and_default_endpoints():
    keys, _ = parse(f"ssh-ed25519  {A}   alice\n")
    [grant] = keys.grants_for(BLOB_A)
    assert grant.name == "alice" and grant.allows("/api/chat")


def test_draft_four_fields_full():
    keys, _ = parse(f"ssh-ed25519 {A} bob /api/foo,/api/bar\n")
    [grant] = keys.grants_for(BLOB_A)
    assert grant.name == "bob"
    assert grant.allows("/api/foo") and grant.allows("/api/bar")
    assert not grant.allows("/api/baz") and not grant.allows("/api/foo/") and not grant.allows("/api")


def test_draft_endpoint_items_are_trimmed():
    keys, warnings = parse(f"ssh-ed25519 {A} bob /api/foo, /api/bar\n")
    assert warnings == [] and granted(keys, BLOB_A, "/api/bar")


def test_draft_comment_lines_ignored_and_entries_add_up():
    keys, warnings = parse(f"# header\n\nssh-ed25519 {A} user1\nssh-ed25519 {A}  user2  /api/x\n")
    assert warnings == []
    grants = keys.grants_for(BLOB_A)
    assert [g.line for g in grants] == [3, 4]
    assert granted(keys, BLOB_A, "/api/chat")  # user1's line is full access


def test_draft_two_entries_with_wildcard():
    keys, _ = parse(f"ssh-ed25519 {A} alice /api/a\n* * * /api/b\n")
    assert granted(keys, BLOB_A, "/api/a") and granted(keys, BLOB_A, "/api/b")
    assert not granted(keys, BLOB_A, "/api/c")
    # any other key: only the wildcard line, and it knows whose key asked.
    assert not granted(keys, BLOB_B, "/api/a") and granted(keys, BLOB_B, "/api/b")
    [grant] = keys.grants_for(BLOB_B)
    assert grant.wildcard and grant.fingerprint == fingerprint(BLOB_B) and grant.name == grant.fingerprint


def test_draft_tags_for_everyone():
    keys, _ = parse("* * * /api/tags\n")
    for blob in (BLOB_A, BLOB_B):
        assert granted(keys, blob, "/api/tags") and not granted(keys, blob, "/api/chat")


# --- issue 19 item 2: a field that can only be an endpoint list is never a name ------------


@pytest.mark.parametrize(
    "line",
    [
        f"ssh-ed25519 {A} /api/tags",  # the line: the draft reads name "/api/tags", endpoints *
        f"ssh-ed25519 {A} /api/tags,/api/show",
        f"ssh-ed25519 {A} /api/tags /api/show",  # a list where the name goes, another where the list goes
        f"ssh-ed25519 {A} tags,show",  # a ',' never occurs in a name ssh-keygen writes (user@host)
        f"ssh-ed25519 {A} /",
    ],
)
def test_an_endpoint_list_in_the_name_field_grants_nothing_and_says_so(line):
    keys, warnings = parse(line + "\n")
    assert keys.grants_for(BLOB_A) == []
    assert len(warnings) == 1 and warnings[0].startswith("line 1: skipped: the third field ")
    assert "endpoint list where the name goes" in warnings[0]


@pytest.mark.parametrize(
    "line",
    [
        "* * /api/tags",  # the README's '* * * /api/tags' with one '*' missing (issue 19 item 2)
        "* * *",  # name or endpoints? Either way every key would get everything
        "* * somename",  # the draft's TestParse "default name wildcard": every endpoint to every key
        "* *",
    ],
)
def test_a_line_for_any_key_must_state_its_endpoints(line):
    keys, warnings = parse(f"# shared box\n{line}\n")
    for blob in (BLOB_A, BLOB_B, BLOB_C):  # C stands for a freshly generated key
        assert keys.grants_for(blob) == []
    assert len(warnings) == 1 and warnings[0].startswith("line 2: skipped: ")
    assert "must state its endpoints" in warnings[0] or "endpoint list where the name goes" in warnings[0]


def test_a_line_for_any_key_with_its_endpoints_stated_is_kept():
    keys, warnings = parse("* * * /api/tags\n* * ci /api/show\n")
    assert warnings == []
    assert granted(keys, BLOB_C, "/api/tags") and granted(keys, BLOB_C, "/api/show")
    assert not granted(keys, BLOB_C, "/api/delete") and not granted(keys, BLOB_C, "/api/pull")


def test_a_star_in_the_name_field_still_means_no_name():
    # The draft's meaning, and not ambiguous: '*' there is "no name", the list is absent (*).
    keys, warnings = parse(f"ssh-ed25519 {A} *\nssh-ed25519 {B} * /api/tags\n")
    assert warnings == []
    [grant] = keys.grants_for(BLOB_A)
    assert not grant.named and grant.allows("/api/delete")
    assert granted(keys, BLOB_B, "/api/tags") and not granted(keys, BLOB_B, "/api/delete")


def test_the_hints_name_placeholder_pasted_as_is_loads_with_a_warning():
    # The unknown-key hint says 'to admit it add: ssh-ed25519 AAAA... <name> /api/tags'. Pasted
    # as is, the line grants what it says (a name only labels it), no more; the warning asks
    # for the holder's name. A name merely holding '<' or '>' is not a placeholder.
    keys, warnings = parse(f"ssh-ed25519 {A} <name> /api/tags\nssh-ed25519 {B} a<b /api/tags\n")
    assert len(warnings) == 1 and warnings[0].startswith("line 1: the name '<name>' is a placeholder")
    assert "skipped" not in warnings[0]
    [grant] = keys.grants_for(BLOB_A)
    assert grant.name == "<name>" and grant.allows("/api/tags") and not grant.allows("/api/chat")
    assert granted(keys, BLOB_B, "/api/tags")


# --- issue 19 item 14: a byte order mark ----------------------------------------------------


def test_a_byte_order_mark_skips_the_first_line_and_says_so():
    # Notepad's "UTF-8 with BOM". sshd and the draft read the mark as part of the key
    # type and skip the line; so does the gate, but it names the mark.
    keys, warnings = parse(f"\ufeffssh-ed25519 {A} alice *\nssh-ed25519 {B} bob /api/tags\n")
    assert keys.grants_for(BLOB_A) == [] and granted(keys, BLOB_B, "/api/tags")
    assert len(warnings) == 1 and warnings[0].startswith("line 1: skipped: ") and "byte order mark" in warnings[0]
    assert "unsupported key type" not in warnings[0]


def test_a_byte_order_mark_inside_a_joined_file_is_named_too():
    # cat ours theirs-from-notepad > authorized_keys
    keys, warnings = parse(f"ssh-ed25519 {B} bob *\n\ufeffssh-ed25519 {A} alice *\n")
    assert keys.grants_for(BLOB_A) == [] and granted(keys, BLOB_B, "/api/chat")
    assert len(warnings) == 1 and warnings[0].startswith("line 2: skipped: ") and "byte order mark" in warnings[0]


def test_a_byte_order_mark_before_a_comment_costs_nothing():
    keys, warnings = parse(f"\ufeff# keys\nssh-ed25519 {A} alice *\n")
    assert warnings == [] and granted(keys, BLOB_A, "/api/chat")


@pytest.mark.parametrize(
    "line, why",
    [
        ("ssh-rsa AAAAB3Nza...", "unsupported key type"),  # the draft's own case
        ("ssh-ed25519 invalid@@@", "not valid base64"),  # the draft's own case
        ("*", "expected"),  # the draft's "just an asterix"
        (f"ssh-rsa {RSA} carol", "unsupported key type"),  # a real RSA public key line
        (f"ecdsa-sha2-nistp256 {ECDSA} dave", "unsupported key type"),
        (f"ssh-ed25519 {RSA} mallory", "is an ssh-rsa key, not the ssh-ed25519"),  # type says ed25519, blob is RSA
        (f"ssh-ed25519 {ECDSA} mallory", "is an ecdsa-sha2-nistp256 key, not the ssh-ed25519"),
        (f"ssh-ed25519 {A[:-3]} short", "cut short (65 of the 68 characters"),
        (f"ssh-ed25519 {A[:-4]} short", "cut short (64 of the 68 characters"),  # valid base64 of 48 bytes
        (f"ssh-ed25519 {A[:40]} short", "cut short (40 of the 68 characters"),
        (f"ssh-ed25519 {base64.b64encode(BLOB_A + b'x').decode()} long", "longer than an Ed25519 key (52 bytes"),
        (f"ssh-ed25519 {base64.b64encode(BLOB_A[:-1]).decode()} short", "cut short (50 of the 51 bytes"),
        ("ssh-ed25519 aGVsbG8gd29ybGQh junk", "not an SSH public key"),
        (f"{A} alice *", "the key type is missing before the public key; write ssh-ed25519"),  # not "unknown option"
        (A, "the key type is missing before the public key; write ssh-ed25519"),
        (f"{A[:30]} cut", "the key type is missing"),
        (f'from="10.0.0.1" {A} alice', "the key type is missing before the public key; write ssh-ed25519"),
        (f"{RSA} carol", "the key type is missing before the public key, an ssh-rsa key"),
        (f"ssh-ed25519 {A}= padded", "not valid base64"),
        (f"* {A} x *", "needs public key '*'"),
        (f"restrict ssh-ed25519 {A} x", "options: unknown option"),  # sshd's own options: the gate cannot honour them
        (f'from="10.0.0.1" ssh-rsa {RSA} x', "unsupported key type"),
    ],
)
def test_an_invalid_key_line_is_skipped_with_its_line_number(line, why):
    keys, warnings = parse(f"# first\nssh-ed25519 {B} bob /api/tags\n{line}\n")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("line 3: skipped: ") and why in warnings[0], warnings
    assert not any(key[4:16] in warnings[0] for key in (A, RSA, ECDSA)), warnings  # the key is never shown
    assert keys.grants_for(BLOB_A) == []
    assert [g.line for g in keys.grants_for(BLOB_B)] == [2]  # the good line is kept


# RFC 8709 / RFC 4253 6.6: every Ed25519 public key's base64 starts with the same
# 19 bytes (string "ssh-ed25519", then the key's length, 32): 25 characters, the
# 26th mixes in the key. What follows is the key itself.
KEY_OWN = A[26:]


def test_a_key_type_glued_to_its_key_is_skipped_without_showing_the_key():
    # 'ssh-ed25519AAAA...' (the space lost in a paste): one unknown key type, and the
    # warning names it without reproducing the key after the shared header.
    keys, warnings = parse(f"ssh-ed25519 {B} bob\nssh-ed25519{A} alice *\n")
    assert keys.grants_for(BLOB_A) == [] and granted(keys, BLOB_B, "/api/chat")
    assert len(warnings) == 1 and warnings[0].startswith("line 2: skipped: "), warnings
    assert not any(KEY_OWN[i : i + 8] in warnings[0] for i in range(len(KEY_OWN) - 7)), warnings


def test_an_option_after_the_key_warns_that_options_go_before_the_key_type():
    # README: 'ssh-ed25519 AAAA... models="small" *' grants nothing, with a warning;
    # "Options go before the key type" (sshd(8): options, keytype, base64 key, comment).
    keys, warnings = parse(f'ssh-ed25519 {A} models="small" *\n')
    assert keys.grants_for(BLOB_A) == []
    [warning] = warnings
    assert re.search(r"\bbefore the key type\b", warning), warning
    # The form the warning shows, filled in, is a line that grants with the option.
    [form] = [quoted for quoted in re.findall(r"'([^']*)'", warning) if "ssh-ed25519" in quoted]
    line = form.replace('"..."', '"small:*"').replace("<public key>", A).replace("<name>", "alice")
    line = line.replace("<endpoint>,...", "/api/chat")
    keys, warnings = parse(line + "\n")
    [grant] = keys.grants_for(BLOB_A)
    assert warnings == [] and grant.options.models == ("small:*",) and grant.allows("/api/chat")


@pytest.mark.parametrize("placeholder", ["XXXX", "TODO", "<endpoint>,...", "...", "none"])
def test_a_placeholder_left_in_the_endpoint_field_grants_nothing(placeholder):
    # A word where the endpoint list goes is no path (the draft matches paths exactly):
    # the line never falls back to every endpoint.
    keys, warnings = parse(f"ssh-ed25519 {A} alice {placeholder}\n")
    assert keys.grants_for(BLOB_A) == []
    assert len(warnings) == 1 and warnings[0].startswith("line 1: skipped: "), warnings


def test_a_value_too_long_to_be_a_number_skips_its_line_and_nothing_else():
    # README: "a malformed value ... makes the line grant nothing, with a warning", and
    # "the gate never crashes on the file". 5,000 digits are past what Python's int()
    # converts from text by default (4,300).
    text = f"ssh-ed25519 {B} bob\nmax-concurrent={'9' * 5000} ssh-ed25519 {A} alice\n* * * /api/tags\n"
    keys, warnings = parse(text)
    assert len(warnings) == 1 and warnings[0].startswith("line 2: skipped: "), warnings
    # Said as the malformed value it is, not as a file the gate could not read.
    assert "is not a whole number from 1 to" in warnings[0] and "unreadable" not in warnings[0], warnings
    assert len(warnings[0]) < 400, warnings  # the value is shown cut, never whole
    assert granted(keys, BLOB_B, "/api/chat")


def test_a_grant_printed_names_its_line_name_fingerprint_and_endpoints():
    keys, _ = parse(f"\nssh-ed25519 {A} alice /api/tags,/api/show\n")
    [grant] = keys.grants_for(BLOB_A)
    shown = repr(grant)
    assert "line 2" in shown and "'alice'" in shown and fingerprint(BLOB_A) in shown
    assert "/api/show" in shown and "/api/tags" in shown


@pytest.mark.parametrize(
    "endpoints, why",
    [
        ("/api/tags,", "empty endpoint"),  # the draft refuses this too
        ("/api/tags,,/api/chat", "empty endpoint"),
        ("/api/*", "'*' inside a path"),  # not a prefix pattern in the draft: never silently one
        ("api/tags", "not a canonical path"),
        ("/api/tags?x=1", "holds a query"),
        ("/api/../chat", "dot segment"),
        ("/api//chat", "empty segment"),
        ("/api/%63hat", "percent-encoded"),
        ("/api%2Fchat", "encoded / or"),
        ("/api/chat;x", "';'"),
        ("/api\\chat", "backslash"),
        ("# trailing comment", "not a canonical path"),  # no inline comments in the draft
        ("/api/tags junk", "not a canonical path"),  # a second word after the list
    ],
)
def test_an_endpoint_that_cannot_mean_a_path_skips_the_line(endpoints, why):
    keys, warnings = parse(f"ssh-ed25519 {A} alice {endpoints}\n")
    assert len(warnings) == 1 and warnings[0].startswith("line 1: skipped: ") and why in warnings[0], warnings
    # never a wider grant: the key gets nothing from the line, not even /api/tags.
    assert keys.grants_for(BLOB_A) == []


def test_a_comment_with_spaces_does_not_become_full_access():
    # "ssh-ed25519 AAAA John Smith": the draft reads name John, endpoint "Smith".
    keys, warnings = parse(f"ssh-ed25519 {A} John Smith\n")
    assert keys.grants_for(BLOB_A) == [] and len(warnings) == 1


@pytest.mark.parametrize("name", ["al\x1b[31mice", "b\x00b", "jos\u00e9", "x" * 300])
def test_a_name_that_cannot_be_a_header_skips_the_line(name):
    keys, warnings = parse(f"ssh-ed25519 {A} {name} *\n")
    assert keys.grants_for(BLOB_A) == [] and len(warnings) == 1
    assert "\x1b" not in warnings[0] and "\x00" not in warnings[0]


def test_star_anywhere_in_the_list_is_every_endpoint():
    keys, _ = parse(f"ssh-ed25519 {A} alice /api/tags,*\n")
    assert granted(keys, BLOB_A, "/api/chat")


def test_crlf_line_ends_and_tabs_are_white_space():
    keys, warnings = parse(f"ssh-ed25519\t{A}\talice\t/api/tags\r\n")
    assert warnings == [] and granted(keys, BLOB_A, "/api/tags") and not granted(keys, BLOB_A, "/api/chat")


def test_endpoints_are_case_sensitive_like_ollamas_router():
    keys, _ = parse(f"ssh-ed25519 {A} alice /api/tags\n")
    assert not granted(keys, BLOB_A, "/API/tags") and not granted(keys, BLOB_A, "/api/Tags")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(list(" \t\r\n#*,/;%.\\\x00\x1b\u00e9") + ["ssh-ed25519", A, "/api/tags", "alice"]), max_size=60).map(
        "".join
    )
)
def test_parse_never_raises_and_grants_only_star_or_paths(text):
    keys, warnings = parse(text)
    assert all(w.startswith("line ") for w in warnings)
    for grant in keys.grants_for(BLOB_A):
        assert all(e == "*" or e.startswith("/") for e in grant.endpoints)


def test_huge_lines_are_skipped_not_parsed():
    keys, warnings = parse(f"ssh-ed25519 {A} alice /" + "a" * 100_000 + "\n")
    assert keys.grants_for(BLOB_A) == [] and warnings == ["line 1: skipped: longer than 8192 characters"]


# --- fingerprints, checked with ssh-keygen --------------------------------------------------


@pytest.mark.process
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
@pytest.mark.parametrize("name", ["ed25519-a", "ed25519-b", "ed25519-encrypted"])
def test_fingerprint_is_what_ssh_keygen_prints(name):
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(asset(f"keys/{name}.pub"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    keys, _ = parse(asset(f"keys/{name}.pub").read_text())
    [grant] = keys.grants_for(base64.b64decode(pub(name)))
    assert grant.fingerprint == printed
    assert fingerprint(base64.b64decode(pub(name))) == printed


@pytest.mark.process
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
@pytest.mark.parametrize(
    "line",
    [
        f"{A} alice *",
        f'from="10.0.0.1" {A} alice',
        f"ssh-ed25519 {A[:40]} cut",
        f"ssh-ed25519 {A[:-4]} cut",
        f"ssh-ed25519 {RSA} x",
    ],
)
def test_the_lines_named_as_broken_are_no_key_to_ssh_keygen_either(tmp_path, line):
    # OpenSSH reads the same file as skipping the line too (ssh-keygen -l lists only the good
    # key; with -v it says "not a public key", sshd skips such a line silently).
    path = tmp_path / "authorized_keys"
    path.write_text(f"ssh-ed25519 {B} bob\n{line}\n")
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert listed.count("SHA256:") == 1 and fingerprint(BLOB_B) in listed, listed
    assert len(parse(path.read_text())[1]) == 1


def test_default_path_is_under_dot_ollama(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == str(tmp_path / ".ollama" / "authorized_keys")


def test_a_models_pattern_without_tag_or_wildcard_is_warned_about_as_matching_nothing():
    # A new user wrote models="llama3": every name is matched with its tag (the README:
    # llama3 is llama3:latest, as types/model/name.go completes it), so the pattern
    # matched nothing and every request got 403 with no word at load.
    keys, warnings = parse(f'models="llama3,gemma3:4b,qwen*,!mistral" ssh-ed25519 {A} alice *\n')
    assert [(g.line, g.name) for g in keys.grants_for(BLOB_A)] == [(1, "alice")]  # still loaded: it grants less
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("line 1: models= pattern 'llama3' has no tag and no wildcard, so it matches no model")
    assert "write 'llama3:latest' or 'llama3:*'" in warnings[0]
    assert "'!mistral'" in warnings[1]

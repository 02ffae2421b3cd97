"""The gate's authorized_keys file: Ollama's draft format (ollama/ollama PR #11574,
auth/authorized_keys.go and its test), fingerprints as ssh-keygen prints them, and
the file on disk (ownership, modes, reload, revocation).

The format cases are the draft's own test table (auth/authorized_keys_test.go,
TestParse), asserted as the grants they must give rather than the draft's map.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time

import pytest
from hypothesis import given, settings, strategies as st

from conftest import asset
from credential_helper.errors import EXIT_IDENTITY, IdentityError
from credential_helper.serve import authorized_keys
from credential_helper.serve.authorized_keys import KeyFile, default_path, fingerprint, parse


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
    keys, _ = parse("* * * /api/tags")
    for blob in (BLOB_A, BLOB_B):
        assert granted(keys, blob, "/api/tags") and not granted(keys, blob, "/api/chat")


def test_draft_default_name_wildcard_is_full_access_under_that_name():
    keys, _ = parse("* * somename")
    [grant] = keys.grants_for(BLOB_C)
    assert grant.name == "somename" and grant.allows("/api/chat")


@pytest.mark.parametrize(
    "line, why",
    [
        ("ssh-rsa AAAAB3Nza...", "unsupported key type"),  # the draft's own case
        ("ssh-ed25519 invalid@@@", "not valid base64"),  # the draft's own case
        ("*", "expected"),  # the draft's "just an asterix"
        (f"ssh-rsa {RSA} carol", "unsupported key type"),  # a real RSA public key line
        (f"ecdsa-sha2-nistp256 {ECDSA} dave", "unsupported key type"),
        (f"ssh-ed25519 {RSA} mallory", "not an Ed25519 key"),  # type says ed25519, blob is RSA
        (f"ssh-ed25519 {ECDSA} mallory", "not an Ed25519 key"),
        (f"ssh-ed25519 {A[:-3]} short", "not valid base64"),
        (f"ssh-ed25519 {A[:-4]} short", "not an Ed25519 key"),  # valid base64 of 48 bytes
        (f"ssh-ed25519 {base64.b64encode(BLOB_A + b'x').decode()} long", "not an Ed25519 key"),
        (f"ssh-ed25519 {base64.b64encode(BLOB_A[:-1]).decode()} short", "not an Ed25519 key"),
        (f"ssh-ed25519 {A}= padded", "not valid base64"),
        (f"* {A} x *", "needs public key '*'"),
        (f'from="10.0.0.1" ssh-ed25519 {A} x', "unsupported key type"),  # sshd options are not part of the format
    ],
)
def test_an_invalid_key_line_is_skipped_with_its_line_number(line, why):
    keys, warnings = parse(f"# first\nssh-ed25519 {B} bob /api/tags\n{line}\n")
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("line 3: skipped: ") and why in warnings[0], warnings
    assert keys.grants_for(BLOB_A) == []
    assert [g.line for g in keys.grants_for(BLOB_B)] == [2]  # the good line is kept


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
@given(st.lists(st.sampled_from(list(" \t\r\n#*,/;%.\\\x00\x1b\u00e9") + ["ssh-ed25519", A, "/api/tags", "alice"]), max_size=60).map("".join))
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
        capture_output=True, text=True, check=True,
    ).stdout.split()[1]
    keys, _ = parse(asset(f"keys/{name}.pub").read_text())
    [grant] = keys.grants_for(base64.b64decode(pub(name)))
    assert grant.fingerprint == printed
    assert fingerprint(base64.b64decode(pub(name))) == printed


def test_default_path_is_under_dot_ollama(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_path() == str(tmp_path / ".ollama" / "authorized_keys")


# --- the file on disk -----------------------------------------------------------------------


@pytest.fixture
def key_dir(tmp_path):
    directory = tmp_path / "dot-ollama"
    directory.mkdir(mode=0o700)
    return directory


def write(path, text: str, mode: int = 0o600) -> None:
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


class Warnings(list):
    def __call__(self, message: str) -> None:
        assert "\n" not in message
        self.append(message)


def test_a_missing_file_refuses_to_start_with_exit_3(key_dir):
    with pytest.raises(IdentityError) as caught:
        KeyFile(str(key_dir / "authorized_keys"), Warnings())
    assert caught.value.exit_code == EXIT_IDENTITY and "no authorized_keys file" in str(caught.value)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o777])
def test_a_group_or_world_writable_file_refuses_to_start(key_dir, mode):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice\n", mode)
    with pytest.raises(IdentityError, match="writable by group or others"):
        KeyFile(str(path), Warnings())


def test_a_readable_file_is_fine(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice\n", 0o644)
    assert granted(KeyFile(str(path), Warnings()).current(), BLOB_A, "/api/chat")


@pytest.mark.skipif(not hasattr(os, "chown") or os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_file_owned_by_someone_else_refuses_to_start(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice\n")
    os.chown(path, 65534, -1)
    with pytest.raises(IdentityError, match="belongs to another user"):
        KeyFile(str(path), Warnings())


def test_a_directory_others_can_write_refuses_to_start(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice\n")
    os.chmod(key_dir, 0o777)
    with pytest.raises(IdentityError, match="writable by group or others"):
        KeyFile(str(path), Warnings())


def test_a_fifo_or_directory_is_refused_without_hanging(key_dir):
    os.mkfifo(key_dir / "fifo", 0o600)
    with pytest.raises(IdentityError, match="not a regular file"):
        KeyFile(str(key_dir / "fifo"), Warnings())
    (key_dir / "dir").mkdir(mode=0o700)
    with pytest.raises(IdentityError):
        KeyFile(str(key_dir / "dir"), Warnings())


def test_warnings_at_start_name_the_file_and_line(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice\nssh-rsa {RSA} carol\n")
    warnings = Warnings()
    KeyFile(str(path), warnings)
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: line 2: skipped: unsupported key type")


def test_revocation_takes_effect_on_the_next_call(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\nssh-ed25519 {B} bob *\n")
    keyfile = KeyFile(str(path), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/api/chat")
    write(path, f"ssh-ed25519 {B} bob *\n")
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")
    assert granted(keyfile.current(), BLOB_B, "/api/chat")


def test_an_editors_rename_over_the_file_is_seen(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\n")
    keyfile = KeyFile(str(path), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/")
    write(key_dir / "new", f"ssh-ed25519 {A} alice /api/tags\n")
    old = os.stat(path)
    os.utime(key_dir / "new", ns=(old.st_atime_ns, old.st_mtime_ns))  # as cp -p or rsync -t would
    os.rename(key_dir / "new", path)
    assert not granted(keyfile.current(), BLOB_A, "/api/chat") and granted(keyfile.current(), BLOB_A, "/api/tags")


def same_size_revocation(path):
    """Swap alice's key for bob's in place: same size, mtime put back exactly."""
    before = os.stat(path)
    with open(path, "r+") as handle:
        text = handle.read()
        handle.seek(0)
        handle.write(text.replace(A, B))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size


def test_a_same_size_edit_in_the_same_tick_is_seen(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\n")
    keyfile = KeyFile(str(path), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/api/chat")
    same_size_revocation(path)
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")
    assert granted(keyfile.current(), BLOB_B, "/api/chat")


def test_a_same_size_edit_is_seen_on_a_coarse_clock_file_system(key_dir, monkeypatch):
    # A file system that stamps whole seconds and no ctime (FAT, some network
    # mounts): the stat before and after the edit are identical, so only the
    # racy-window byte comparison can see the revocation.
    monkeypatch.setattr(authorized_keys, "_signature", lambda info: (info.st_ino, info.st_size, info.st_mtime_ns // 10**9))
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\n")
    keyfile = KeyFile(str(path), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/api/chat")
    same_size_revocation(path)
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")


def test_a_line_still_being_written_grants_nothing_yet(key_dir):
    # Read in the middle of "ssh-ed25519 AAAA... bob /api/tags\n": without its
    # endpoint list the line would mean full access.
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {B} bob *\nssh-ed25519 {A} alice")
    keyfile = KeyFile(str(path), Warnings())
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")
    assert granted(keyfile.current(), BLOB_B, "/api/chat")
    with open(path, "a") as handle:
        handle.write(" /api/tags\n")
    assert granted(keyfile.current(), BLOB_A, "/api/tags") and not granted(keyfile.current(), BLOB_A, "/api/chat")


def test_a_last_line_without_newline_counts_once_the_file_is_settled(key_dir, monkeypatch):
    monkeypatch.setattr(authorized_keys, "RACY_NS", 200_000_000)
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice /api/tags")
    keyfile = KeyFile(str(path), Warnings())
    assert not granted(keyfile.current(), BLOB_A, "/api/tags")
    time.sleep(0.3)
    assert granted(keyfile.current(), BLOB_A, "/api/tags")
    # settled: the fast path now serves it without reading the file again.
    assert keyfile._racy is False and granted(keyfile.current(), BLOB_A, "/api/tags")


@pytest.mark.parametrize("breakage", ["chmod", "chown", "delete", "directory"])
def test_an_unsafe_file_at_reload_keeps_the_last_good_set_and_warns_once(key_dir, breakage):
    if breakage == "chown" and os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice /api/tags\n")
    warnings = Warnings()
    keyfile = KeyFile(str(path), warnings)
    if breakage == "chmod":
        write(path, f"ssh-ed25519 {A} alice *\n", 0o666)  # widened by someone else
    elif breakage == "chown":
        write(path, f"ssh-ed25519 {A} alice *\n")
        os.chown(path, 65534, -1)
    elif breakage == "delete":
        os.unlink(path)
    else:
        os.unlink(path)
        os.mkdir(path)
    for _ in range(3):
        keys = keyfile.current()
        assert granted(keys, BLOB_A, "/api/tags") and not granted(keys, BLOB_A, "/api/chat")
    assert len(warnings) == 1 and "keeping the last good set" in warnings[0], warnings


def test_a_fixed_file_is_taken_up_after_an_unsafe_spell(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice /api/tags\n")
    warnings = Warnings()
    keyfile = KeyFile(str(path), warnings)
    os.chmod(path, 0o666)
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")
    write(path, f"ssh-ed25519 {A} alice /api/chat\n", 0o600)
    assert granted(keyfile.current(), BLOB_A, "/api/chat") and not granted(keyfile.current(), BLOB_A, "/api/tags")


def test_forced_reload_rereads_and_warns_again(key_dir, monkeypatch):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice /api/tags\n")
    warnings = Warnings()
    keyfile = KeyFile(str(path), warnings)
    os.chmod(path, 0o622)
    keyfile.current()
    keyfile.reload()
    assert len(warnings) == 2
    # a forced reload of a good file with an unchanged stat still reads it
    # (the stat check is bypassed: make it blind, then reload).
    os.chmod(path, 0o600)
    keyfile.current()
    monkeypatch.setattr(authorized_keys, "_signature", lambda info: ())
    keyfile._seen, keyfile._racy = (), False
    write(path, f"ssh-ed25519 {A} alice /api/chat\n")
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")  # blind stat: not seen
    keyfile.reload()
    assert granted(keyfile.current(), BLOB_A, "/api/chat")


def test_a_symlink_to_an_own_file_is_followed(key_dir):
    write(key_dir / "real", f"ssh-ed25519 {A} alice /api/tags\n")
    os.symlink(key_dir / "real", key_dir / "authorized_keys")
    keyfile = KeyFile(str(key_dir / "authorized_keys"), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/api/tags")


def test_an_oversized_file_is_refused(key_dir):
    path = key_dir / "authorized_keys"
    write(path, "#" * (authorized_keys.MAX_FILE_BYTES + 10) + "\n")
    with pytest.raises(IdentityError, match="larger than"):
        KeyFile(str(path), Warnings())


def test_current_is_cheap_when_nothing_changed(key_dir, monkeypatch):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice /api/tags\n")
    old = time.time() - 60
    os.utime(path, (old, old))
    keyfile = KeyFile(str(path), Warnings())
    reads = []
    real = authorized_keys.read_key_file
    monkeypatch.setattr(authorized_keys, "read_key_file", lambda p: reads.append(p) or real(p))
    for _ in range(100):
        keyfile.current()
    assert reads == []

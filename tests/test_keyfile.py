"""The gate's authorized_keys file on disk (serve/keyfile.py and safe_path.py, issue 19 items 3, 4,
5, 13 and the BOM of 14): a safe path as OpenSSH's StrictModes checks it
(``misc.c`` ``safe_path``, formerly ``auth.c`` ``auth_secure_path``), an unusable
file that admits nobody and says so, and reloads that never take a write in
progress for the file.

Time is the file's mtime against the KeyFile's clock: a test that needs a write
to have settled moves that clock on by ``RACY_NS`` (or sets the mtime back, as an
edit made a while ago has it), rather than sleeping.
"""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization

from conftest import asset
from credential_helper.errors import EXIT_IDENTITY, IdentityError
from credential_helper.serve import keyfile as keyfile_module, safe_path
from credential_helper.serve.authorized_keys import KeyFile
from credential_helper.serve.keyfile import RACY_NS
from credential_helper.serve.verify import Admitted, Refused, verify

A, B, C = (asset(f"keys/{name}.pub").read_text().split()[1] for name in ("ed25519-a", "ed25519-b", "ed25519-encrypted"))
BLOB_A, BLOB_B, BLOB_C = (base64.b64decode(k) for k in (A, B, C))
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to give a file to another user")
OTHER_UID = 65534  # nobody


def granted(keys, blob: bytes, path: str) -> bool:
    return any(grant.allows(path) for grant in keys.grants_for(blob))


class Clock:
    """The KeyFile's clock: real time plus an offset the test moves on."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset

    def settle(self) -> None:
        self.offset += RACY_NS + 1


@pytest.fixture
def key_dir(tmp_path):
    directory = tmp_path / "dot-ollama"
    directory.mkdir(mode=0o700)
    return directory


def write(path, text: str, mode: int = 0o600) -> None:
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)


def age(path, seconds: float = 60) -> None:
    """Set the mtime back, as on a file edited a while ago."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=True)


class Warnings(list):
    def __call__(self, message: str) -> None:
        assert "\n" not in message
        self.append(message)


def opened(path, text: str, clock: Clock | None = None, warnings: Warnings | None = None, settled: bool = True) -> KeyFile:
    write(path, text)
    if settled:
        age(path)
    return KeyFile(str(path), warnings if warnings is not None else Warnings(), clock=clock or Clock())


# --- at start -------------------------------------------------------------------------------


def test_a_missing_file_refuses_to_start_with_exit_3(key_dir):
    with pytest.raises(IdentityError) as caught:
        KeyFile(str(key_dir / "authorized_keys"), Warnings())
    assert caught.value.exit_code == EXIT_IDENTITY and "no authorized_keys file" in str(caught.value)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o777])
def test_a_group_or_world_writable_file_refuses_to_start(key_dir, mode):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\n", mode)
    with pytest.raises(IdentityError, match="writable by group or others"):
        KeyFile(str(path), Warnings())


def test_a_readable_file_is_fine(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\n", 0o644)
    assert granted(KeyFile(str(path), Warnings()).current(), BLOB_A, "/api/chat")


@needs_root
def test_a_file_owned_by_someone_else_refuses_to_start(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {A} alice *\n")
    os.chown(path, OTHER_UID, -1)
    with pytest.raises(IdentityError, match="belongs to another user"):
        KeyFile(str(path), Warnings())


def test_a_fifo_or_directory_is_refused_without_hanging(key_dir):
    os.mkfifo(key_dir / "fifo", 0o600)
    with pytest.raises(IdentityError, match="not a regular file"):
        KeyFile(str(key_dir / "fifo"), Warnings())
    (key_dir / "dir").mkdir(mode=0o700)
    with pytest.raises(IdentityError):
        KeyFile(str(key_dir / "dir"), Warnings())


def test_an_oversized_file_is_refused(key_dir):
    path = key_dir / "authorized_keys"
    write(path, "#" * (keyfile_module.MAX_FILE_BYTES + 10) + "\n")
    with pytest.raises(IdentityError, match="larger than"):
        KeyFile(str(path), Warnings())


def test_warnings_at_start_name_the_file_and_line(key_dir):
    path = key_dir / "authorized_keys"
    warnings = Warnings()
    opened(path, f"ssh-ed25519 {A} alice *\nssh-rsa AAAAB3Nza carol\n", warnings=warnings)
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: line 2: skipped: unsupported key type")


def test_a_byte_order_mark_on_disk_is_named_not_an_unsupported_key_type(key_dir):
    path = key_dir / "authorized_keys"
    path.write_bytes(b"\xef\xbb\xbf" + f"ssh-ed25519 {A} alice *\nssh-ed25519 {B} bob *\n".encode())
    os.chmod(path, 0o600)
    warnings = Warnings()
    keys = KeyFile(str(path), warnings).current()
    assert not granted(keys, BLOB_A, "/api/tags") and granted(keys, BLOB_B, "/api/tags")
    assert len(warnings) == 1 and "byte order mark" in warnings[0] and "unsupported key type" not in warnings[0]


# --- item 4: the real path and every directory above it pass StrictModes ----------------------


def test_the_walk_passes_through_tmp_a_root_owned_sticky_directory(key_dir):
    # Every test here lives under /tmp (mode 1777, root's): sshd's safe_path would refuse
    # it (mode & 022), the gate accepts it: others cannot rename or remove our entries there.
    assert str(key_dir).startswith("/tmp/") or pytest.skip("tmp_path is not under /tmp")
    info = os.stat("/tmp")
    assert info.st_mode & 0o1777 == 0o1777 and info.st_uid == 0
    keyfile = opened(key_dir / "authorized_keys", f"ssh-ed25519 {A} alice *\n")
    assert granted(keyfile.current(), BLOB_A, "/api/chat")


def test_a_file_right_in_a_sticky_world_writable_directory_is_accepted(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    keyfile = opened(shared / "authorized_keys", f"ssh-ed25519 {A} alice *\n")
    assert granted(keyfile.current(), BLOB_A, "/api/chat")


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_directory_others_can_write_refuses_to_start(key_dir, mode):
    write(key_dir / "authorized_keys", f"ssh-ed25519 {A} alice *\n")
    os.chmod(key_dir, mode)
    with pytest.raises(IdentityError, match="writable by group or others"):
        KeyFile(str(key_dir / "authorized_keys"), Warnings())


def test_every_directory_up_to_the_root_is_checked_not_only_the_files_own(tmp_path):
    # tmp/open (0777, not sticky) / keys (0700) / authorized_keys: anyone can rename
    # keys/ away and put their own directory in its place.
    inner = tmp_path / "open" / "keys"
    inner.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "open", 0o777)
    write(inner / "authorized_keys", f"ssh-ed25519 {A} alice *\n")
    with pytest.raises(IdentityError, match=f"the directory {tmp_path / 'open'} is writable by group or others"):
        KeyFile(str(inner / "authorized_keys"), Warnings())


@needs_root
def test_a_directory_above_owned_by_someone_else_is_refused(tmp_path):
    inner = tmp_path / "theirs" / "keys"
    inner.mkdir(parents=True, mode=0o700)
    os.chown(tmp_path / "theirs", OTHER_UID, -1)
    write(inner / "authorized_keys", f"ssh-ed25519 {A} alice *\n")
    with pytest.raises(IdentityError, match="belongs to another user"):
        KeyFile(str(inner / "authorized_keys"), Warnings())


@needs_root
def test_a_sticky_directory_owned_by_someone_else_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    os.chown(shared, OTHER_UID, -1)  # its owner may rename anything in it
    write(shared / "authorized_keys", f"ssh-ed25519 {A} alice *\n")
    with pytest.raises(IdentityError, match="belongs to another user"):
        KeyFile(str(shared / "authorized_keys"), Warnings())


def test_a_symlink_to_an_own_file_in_a_safe_directory_is_followed(key_dir):
    write(key_dir / "real", f"ssh-ed25519 {A} alice /api/tags\n")
    os.symlink(key_dir / "real", key_dir / "authorized_keys")
    keyfile = KeyFile(str(key_dir / "authorized_keys"), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/api/tags")


def test_a_relative_symlink_with_dot_dot_is_resolved_where_it_points(key_dir):
    (key_dir / "etc").mkdir(mode=0o700)
    write(key_dir / "etc" / "keys", f"ssh-ed25519 {A} alice /api/tags\n")
    (key_dir / "links").mkdir(mode=0o700)
    os.symlink("../etc/keys", key_dir / "links" / "authorized_keys")
    keyfile = KeyFile(str(key_dir / "links" / "authorized_keys"), Warnings())
    assert granted(keyfile.current(), BLOB_A, "/api/tags")


def test_a_symlink_into_a_directory_others_can_write_is_refused(key_dir, tmp_path):
    # Issue 19 item 4: only the link's own directory was checked; anyone who can write
    # the target's directory can rename an older copy over the file.
    shared = tmp_path / "shared"
    shared.mkdir()
    write(shared / "authorized_keys", f"ssh-ed25519 {A} alice /api/tags\n")
    os.chmod(shared, 0o777)
    os.symlink(shared / "authorized_keys", key_dir / "authorized_keys")
    with pytest.raises(IdentityError, match=f"the directory {shared} is writable by group or others"):
        KeyFile(str(key_dir / "authorized_keys"), Warnings())


def test_a_symlink_kept_in_a_directory_others_can_write_is_refused(key_dir, tmp_path):
    # Beyond sshd (which checks realpath only): whoever can replace the link can point
    # it at an older copy of the operator's own, safe file.
    write(key_dir / "authorized_keys", f"ssh-ed25519 {A} alice /api/tags\n")
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(key_dir / "authorized_keys", links / "authorized_keys")
    os.chmod(links, 0o777)
    with pytest.raises(IdentityError, match=f"the directory {links} is writable by group or others"):
        KeyFile(str(links / "authorized_keys"), Warnings())


@needs_root
def test_a_symlink_owned_by_someone_else_is_refused(key_dir):
    write(key_dir / "real", f"ssh-ed25519 {A} alice /api/tags\n")
    os.symlink(key_dir / "real", key_dir / "authorized_keys")
    os.lchown(key_dir / "authorized_keys", OTHER_UID, -1)
    with pytest.raises(IdentityError, match="the symlink .* belongs to another user"):
        KeyFile(str(key_dir / "authorized_keys"), Warnings())


def test_a_symlink_loop_is_refused_without_hanging(key_dir):
    os.symlink("b", key_dir / "a")
    os.symlink("a", key_dir / "b")
    with pytest.raises(IdentityError, match="too many levels of symbolic links"):
        KeyFile(str(key_dir / "a"), Warnings())


def test_a_link_swung_into_an_unsafe_directory_after_start_admits_nobody(key_dir, tmp_path):
    write(key_dir / "real", f"ssh-ed25519 {A} alice /api/tags\n")
    os.symlink(key_dir / "real", key_dir / "authorized_keys")
    keyfile = KeyFile(str(key_dir / "authorized_keys"), Warnings())
    shared = tmp_path / "shared"
    shared.mkdir()
    write(shared / "old", f"ssh-ed25519 {A} alice *\n")
    age(shared / "old")
    os.chmod(shared, 0o777)
    os.unlink(key_dir / "authorized_keys")
    os.symlink(shared / "old", key_dir / "authorized_keys")
    keys = keyfile.current()
    assert keys.problem is not None and f"{shared} is writable by group or others" in keys.problem
    assert not granted(keys, BLOB_A, "/api/tags")


def test_a_directory_made_group_writable_after_start_admits_nobody_from_the_next_walk(key_dir):
    clock = Clock()
    keyfile = opened(key_dir / "authorized_keys", f"ssh-ed25519 {A} alice *\n", clock=clock)
    os.chmod(key_dir.parent, 0o775)  # the file's stat does not change at all
    clock.offset += keyfile_module.WALK_EVERY_NS
    keys = keyfile.current()
    assert keys.problem is not None and not granted(keys, BLOB_A, "/api/tags")
    os.chmod(key_dir.parent, 0o700)
    assert granted(keyfile.current(), BLOB_A, "/api/tags")


def test_a_file_swapped_in_through_a_directory_made_unsafe_is_refused_at_once(key_dir):
    # Between walks only the file's stat is compared: whatever the now-writable
    # directory lets someone swap in is a new file, and is walked to at once.
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n")
    os.chmod(key_dir, 0o777)
    write(key_dir / "theirs", f"ssh-ed25519 {A} alice *\n")
    age(key_dir / "theirs")
    os.rename(key_dir / "theirs", path)
    keys = keyfile.current()
    assert keys.problem is not None and "writable by group or others" in keys.problem
    assert not granted(keys, BLOB_A, "/api/chat")


# --- item 5: an unusable file admits nobody, says so, and recovers ----------------------------


PRIVATE_A = serialization.load_ssh_private_key(asset("keys/ed25519-a").read_bytes(), password=None)


def signed_verify(keys, path: str = "/api/tags", now: float | None = None):
    now = time.time() if now is None else now
    target = f"{path}?ts={int(now)}"
    authorization = f"{A}:{base64.b64encode(PRIVATE_A.sign(f'GET,{target}'.encode())).decode()}"
    return verify("GET", target, authorization, keys, now)


@pytest.mark.parametrize("breakage", ["chmod", "chown", "delete", "directory", "unreadable"])
def test_a_reload_that_finds_the_file_unusable_admits_no_signed_request(key_dir, breakage, monkeypatch):
    if breakage == "chown" and not ROOT:
        pytest.skip("needs root")
    path = key_dir / "authorized_keys"
    warnings = Warnings()
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n", warnings=warnings)
    assert isinstance(signed_verify(keyfile.current()), Admitted)
    if breakage == "chmod":
        os.chmod(path, 0o664)  # an edit under umask 002
        problem = "writable by group or others"
    elif breakage == "chown":
        os.chown(path, OTHER_UID, -1)
        problem = "belongs to another user"
    elif breakage == "delete":
        os.unlink(path)
        problem = "no authorized_keys file"
    elif breakage == "directory":
        os.unlink(path)
        os.mkdir(path)
        problem = "not a regular file"
    else:
        # root reads anything: make the read itself fail as EACCES would.
        def refuse(seen):
            raise keyfile_module._Unusable(f"cannot read {path}: Permission denied")

        monkeypatch.setattr(keyfile_module, "_read", refuse)
        age(path, 30)  # a change, so that the file is read again
        problem = "Permission denied"
    for _ in range(3):
        keys = keyfile.current()
        assert not granted(keys, BLOB_A, "/api/tags")
        refused = signed_verify(keys)
        assert isinstance(refused, Refused) and (refused.status, refused.reason) == (503, "keyfile-unusable")
        assert problem in refused.message and "authorized_keys" in refused.message
    assert len(warnings) == 1 and problem in warnings[0] and "no signed request is admitted" in warnings[0], warnings


def test_a_stranger_learns_only_that_the_file_is_unusable_not_why(key_dir):
    # Any freshly made key signs validly: the path and the problem are for members.
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {B} bob /api/tags\n")  # key A is not listed
    os.chmod(path, 0o620)
    refused = signed_verify(keyfile.current())
    assert (refused.status, refused.reason) == (503, "keyfile-unusable")
    assert str(key_dir) not in refused.message and "writable" not in refused.message
    assert "the operator has been told" in refused.message
    os.unlink(path)  # a second problem: still a stranger to the last usable file
    assert str(key_dir) not in signed_verify(keyfile.current()).message


def test_the_refusal_names_the_fix(key_dir):
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n")
    os.chmod(path, 0o620)
    refused = signed_verify(keyfile.current())
    assert f"run: chmod go-w {path}" in refused.message
    os.unlink(path)  # a second problem: still a member of the last usable file
    assert "no authorized_keys file" in signed_verify(keyfile.current()).message


def test_an_unsigned_or_badly_signed_request_learns_nothing_about_the_file(key_dir):
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n")
    os.chmod(path, 0o666)
    keys = keyfile.current()
    now = time.time()
    unsigned = verify("GET", f"/api/tags?ts={int(now)}", None, keys, now)
    target = f"/api/tags?ts={int(now) - 3600}"
    stale = verify("GET", target, f"{A}:{base64.b64encode(PRIVATE_A.sign(f'GET,{target}'.encode())).decode()}", keys, now)
    for refused in (unsigned, stale):
        assert refused.status == 401 and "authorized_keys file" not in refused.message


def test_it_recovers_by_itself_when_the_mode_is_fixed(key_dir):
    path = key_dir / "authorized_keys"
    changes = []
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n")
    keyfile._on_change = changes.append
    os.chmod(path, 0o666)
    assert keyfile.current().problem is not None
    os.chmod(path, 0o600)  # chmod leaves the mtime alone: the content has long settled
    keys = keyfile.current()
    assert keys.problem is None and granted(keys, BLOB_A, "/api/tags") and len(changes) == 1


def test_it_recovers_from_a_deletion_once_the_new_file_has_settled(key_dir):
    path = key_dir / "authorized_keys"
    clock = Clock()
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n", clock=clock)
    os.unlink(path)
    assert "no authorized_keys file" in keyfile.current().problem
    write(path, f"ssh-ed25519 {A} alice /api/chat\n")
    keys = keyfile.current()  # just written: it may still be being written
    assert keys.problem is not None and "settled" in keys.problem and not granted(keys, BLOB_A, "/api/chat")
    clock.settle()
    keys = keyfile.current()
    assert keys.problem is None and granted(keys, BLOB_A, "/api/chat") and not granted(keys, BLOB_A, "/api/tags")


def test_a_forced_reload_warns_again_and_reads_at_once(key_dir):
    path = key_dir / "authorized_keys"
    warnings = Warnings()
    keyfile = opened(path, f"ssh-ed25519 {A} alice /api/tags\n", warnings=warnings)
    os.chmod(path, 0o622)
    keyfile.current()
    keyfile.reload()
    assert len(warnings) == 2
    write(path, f"ssh-ed25519 {A} alice /api/chat\n")  # fixed and rewritten just now
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")  # not settled yet
    keyfile.reload()  # SIGHUP: the operator says the edit is done
    assert granted(keyfile.current(), BLOB_A, "/api/chat")


# --- items 3 and 13: a write in progress takes no effect until the file settles --------------


def test_a_settled_revocation_takes_effect_on_the_next_call(key_dir):
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\nssh-ed25519 {B} bob *\n")
    assert granted(keyfile.current(), BLOB_A, "/api/chat")
    write(path, f"ssh-ed25519 {B} bob *\n")
    age(path, 3)  # written three seconds ago
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")
    assert granted(keyfile.current(), BLOB_B, "/api/chat")


def test_an_in_place_rewrite_never_installs_the_empty_file_between_truncate_and_write(key_dir):
    # Issue 19 item 13: cp, '>' and editors that do not rename truncate, then write.
    path = key_dir / "authorized_keys"
    clock = Clock()
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\nssh-ed25519 {B} bob /api/tags\n", clock=clock)
    with open(path, "r+") as handle:
        handle.truncate(0)
        handle.flush()
        keys = keyfile.current()  # between the truncate and the write
        assert granted(keys, BLOB_A, "/api/chat") and granted(keys, BLOB_B, "/api/tags")
        handle.write(f"ssh-ed25519 {A} alice *\n")  # cut short: bob's line is still to come
        handle.flush()
        keys = keyfile.current()
        assert granted(keys, BLOB_B, "/api/tags")  # neither narrower...
        handle.write(f"ssh-ed25519 {B} bob")
        handle.flush()
        assert not granted(keyfile.current(), BLOB_B, "/api/chat")  # ...nor wider
        handle.write(" /api/show\n")
    assert granted(keyfile.current(), BLOB_B, "/api/tags")  # complete, not yet settled
    clock.settle()
    keys = keyfile.current()  # settled: the next request has it
    assert granted(keys, BLOB_B, "/api/show") and not granted(keys, BLOB_B, "/api/tags")


def test_a_truncate_seen_with_its_old_mtime_is_looked_at_twice(key_dir, monkeypatch):
    # Linux (6.18, ext4) makes a truncate's new size visible before its new mtime: for
    # ~100 us a stat shows an empty file last changed long ago. The second look, a
    # moment later, sees the mtime move (done here inside that moment, deterministically).
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\n")
    with open(path, "r+") as handle:
        handle.truncate(0)
    age(path)  # the torn stat: size 0, the old mtime
    monkeypatch.setattr(keyfile_module.time, "sleep", lambda seconds: os.utime(path))
    assert granted(keyfile.current(), BLOB_A, "/api/chat")


def test_an_empty_file_that_has_settled_is_put_in_force_revoking_everyone(key_dir):
    path = key_dir / "authorized_keys"
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\n")
    write(path, "")
    age(path, 3)
    keys = keyfile.current()
    assert keys.problem is None and keys.grants_for(BLOB_A) == []


def test_an_editors_rename_over_the_file_is_seen_once_settled(key_dir):
    path = key_dir / "authorized_keys"
    clock = Clock()
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\n", clock=clock)
    write(key_dir / "new", f"ssh-ed25519 {A} alice /api/tags\n")
    old = os.stat(path)
    os.utime(key_dir / "new", ns=(old.st_atime_ns, old.st_mtime_ns))  # as cp -p or rsync -t would
    os.rename(key_dir / "new", path)
    keys = keyfile.current()
    assert not granted(keys, BLOB_A, "/api/chat") and granted(keys, BLOB_A, "/api/tags")


def same_size_revocation(path):
    """Swap alice's key for bob's in place: same size, mtime put back exactly."""
    before = os.stat(path)
    with open(path, "r+") as handle:
        text = handle.read()
        handle.seek(0)
        handle.write(text.replace(A, B))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_size == before.st_size


@pytest.mark.parametrize("coarse", [False, True])
def test_a_same_size_edit_in_the_same_tick_as_the_first_read_is_seen_once_settled(key_dir, monkeypatch, coarse):
    if coarse:
        # FAT and some network mounts: whole seconds, no ctime; the stats are identical.
        def coarse(info):
            return (info.st_ino, info.st_size, info.st_mtime_ns // 10**9)

        monkeypatch.setattr(keyfile_module, "_mark", coarse)
        monkeypatch.setattr(safe_path, "_mark", coarse)
    path = key_dir / "authorized_keys"
    clock = Clock()
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\n", clock=clock, settled=False)
    assert granted(keyfile.current(), BLOB_A, "/api/chat")
    same_size_revocation(path)
    clock.settle()  # the first read was racy: it is read again once the file settles
    assert not granted(keyfile.current(), BLOB_A, "/api/chat")
    assert granted(keyfile.current(), BLOB_B, "/api/chat")


def test_a_line_cut_mid_write_never_grants_even_after_the_writer_stalls(key_dir):
    # Issue 19 item 3: "ssh-ed25519 AAAA... alice" without its list, for longer than any window.
    path = key_dir / "authorized_keys"
    clock = Clock()
    warnings = Warnings()
    keyfile = opened(path, f"ssh-ed25519 {B} bob *\n", clock=clock, warnings=warnings)
    with open(path, "a") as handle:
        handle.write(f"ssh-ed25519 {A} alice")
    for _ in range(3):
        clock.settle()  # stalled: a full disk, a killed copy
        keys = keyfile.current()
        assert keys.grants_for(BLOB_A) == [] and granted(keys, BLOB_B, "/api/chat")
    assert [w for w in warnings if "line 2: skipped: it does not end with a newline" in w], warnings
    with open(path, "a") as handle:
        handle.write(" /api/tags\n")
    clock.settle()
    keys = keyfile.current()
    assert granted(keys, BLOB_A, "/api/tags") and not granted(keys, BLOB_A, "/api/chat")


def test_a_first_read_while_the_file_is_being_written_uses_complete_lines_only(key_dir):
    path = key_dir / "authorized_keys"
    write(path, f"ssh-ed25519 {B} bob *\nssh-ed25519 {A} alice")
    keyfile = KeyFile(str(path), Warnings())
    assert keyfile.current().grants_for(BLOB_A) == [] and granted(keyfile.current(), BLOB_B, "/api/chat")


def test_a_file_stamped_in_the_future_settles_after_the_window_of_its_own(key_dir):
    # A network file system whose server clock is ahead: the mtime never looks old.
    path = key_dir / "authorized_keys"
    clock = Clock()
    keyfile = opened(path, f"ssh-ed25519 {A} alice *\n", clock=clock)
    write(path, f"ssh-ed25519 {A} alice /api/tags\n")
    future = time.time() + 3600
    os.utime(path, (future, future))
    assert granted(keyfile.current(), BLOB_A, "/api/chat")  # seen, not yet trusted
    clock.settle()
    assert not granted(keyfile.current(), BLOB_A, "/api/chat") and granted(keyfile.current(), BLOB_A, "/api/tags")


def test_current_reads_nothing_when_nothing_changed_and_walks_only_when_due(key_dir, monkeypatch):
    clock = Clock()
    keyfile = opened(key_dir / "authorized_keys", f"ssh-ed25519 {A} alice /api/tags\n", clock=clock)
    reads, walks = [], []
    real_read, real_marks = keyfile_module._read, keyfile_module.marks
    monkeypatch.setattr(keyfile_module, "_read", lambda seen: reads.append(seen) or real_read(seen))
    monkeypatch.setattr(keyfile_module, "marks", lambda plan: walks.append(plan) or real_marks(plan))
    for _ in range(100):
        keyfile.current()
    assert reads == [] and walks == []
    clock.offset += keyfile_module.WALK_EVERY_NS
    for _ in range(100):
        keyfile.current()
    assert reads == [] and len(walks) == 1


def test_rewritten_in_place_twenty_times_a_second_no_granted_key_is_refused_and_no_revoked_key_admitted(key_dir):
    """Issue 19 item 13's load test: a writer rewrites the file in place (truncate, then
    the lines in pieces, cut between the name and the list) while requests are verified
    as fast as they come. Alice is granted in every version; Carol was revoked before
    the load started; Bob is only ever granted /api/tags."""
    path = key_dir / "authorized_keys"
    versions = [
        f"ssh-ed25519 {A} alice *\nssh-ed25519 {B} bob /api/tags\n",
        f"# reordered\nssh-ed25519 {B} bob /api/tags\nssh-ed25519 {A} alice /api/tags,/api/chat\n",
    ]
    write(path, f"ssh-ed25519 {A} alice *\nssh-ed25519 {C} carol *\n")
    keyfile = KeyFile(str(path), Warnings())
    write(path, versions[0])  # Carol revoked...
    age(path, 5)  # ...a while ago
    assert keyfile.current().grants_for(BLOB_C) == []
    stop = threading.Event()
    rewrites = [0]

    def writer() -> None:
        while not stop.is_set():
            text = versions[rewrites[0] % 2]
            with open(path, "r+b") as handle:
                handle.truncate(0)
                for line in text.splitlines(keepends=True):
                    cut = line.rfind(" ")
                    for piece in (line[:cut], line[cut:]):
                        handle.write(piece.encode())
                        handle.flush()
                        time.sleep(0.002)
            rewrites[0] += 1
            time.sleep(0.04)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    refusals = admissions_of_revoked = wider = checks = 0
    deadline = time.monotonic() + 10.0  # 40 rewrites take about 2.5 s on an idle machine
    try:
        while rewrites[0] < 40 and time.monotonic() < deadline:
            keys = keyfile.current()
            checks += 1
            refusals += not granted(keys, BLOB_A, "/api/tags")
            admissions_of_revoked += bool(keys.grants_for(BLOB_C))
            wider += granted(keys, BLOB_B, "/api/chat")
            if checks % 50 == 0:
                refusals += not isinstance(signed_verify(keys), Admitted)
    finally:
        stop.set()
        thread.join(5)
    assert rewrites[0] >= 40 and checks > 1000, (rewrites, checks)
    assert (refusals, admissions_of_revoked, wider) == (0, 0, 0), (refusals, admissions_of_revoked, wider)


def test_a_quoted_tilde_is_named_as_the_shell_expanding_it_never_as_a_directory_to_create(tmp_path):
    # A new user wrote --authorized-keys '~/.ollama/authorized_keys': the shell leaves a
    # quoted '~' alone, and the advice was to create a directory literally named '~'.
    seen = safe_path.look(str(tmp_path / "~" / ".ollama" / "authorized_keys"))
    assert seen.problem is not None and "quoted" in seen.problem and "$HOME" in seen.problem, seen.problem
    assert "mkdir" not in seen.problem
    # Any other missing directory keeps its advice.
    other = safe_path.look(str(tmp_path / "keys" / "authorized_keys"))
    assert other.problem is not None and f"mkdir -m 700 {tmp_path / 'keys'}" in other.problem, other.problem

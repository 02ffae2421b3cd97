"""The file seam's rules as each caller relies on them (system.py, system_common.py;
issue 21, found by mutation), and the exact words of the intermediary's head
refusals (serve/messages.py head_problem: the 400 body a client reads).

Expectations: open(2) and errno (EISDIR for a directory, EACCES for a file not
private, EFBIG past a limit, ELOOP for a refused link), ssh's StrictModes rule
for private files, and RFC 9112 for the head rules."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from credential_helper import system, system_common
from credential_helper.serve.messages import Head, head_problem


def private_file(path, data: bytes = b"data", mode: int = 0o600):
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- reading ---------------------------------------------------------------------------------


def test_read_file_follows_a_link_unless_told_not_to(tmp_path):
    target = private_file(tmp_path / "target", b"through the link")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert system.read_file(str(link), 100)[0] == b"through the link"  # follow=True by default
    with pytest.raises(OSError) as refused:
        system.read_file(str(link), 100, follow=False)
    assert refused.value.errno == errno.ELOOP


def test_open_file_follows_a_link_by_default(tmp_path):
    target = private_file(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target)
    fd, info = system.open_file(str(link))
    os.close(fd)
    assert stat.S_ISREG(info.st_mode)


def test_a_directory_is_refused_as_not_a_regular_file(tmp_path, monkeypatch):
    with pytest.raises(system.RefusedFile) as refused:
        system.read_file(str(tmp_path), 100)  # opened, then refused by fstat
    assert (refused.value.errno, refused.value.strerror, refused.value.filename) == (
        errno.EINVAL,
        "not a regular file",
        str(tmp_path),
    )

    def windows_open(path, flags, mode=0o777):
        raise PermissionError(errno.EACCES, "Access is denied", path)  # Windows cannot open a directory

    monkeypatch.setattr(system_common.os, "open", windows_open)
    with pytest.raises(system.RefusedFile) as refused:
        system.read_file(str(tmp_path), 100)
    assert (refused.value.errno, refused.value.strerror) == (errno.EISDIR, "not a regular file")
    with pytest.raises(PermissionError):
        system.read_file(str(tmp_path / "a-file"), 100)  # not a directory: the open's own error


def test_private_means_not_open_to_group_or_others(tmp_path):
    loose = private_file(tmp_path / "loose", mode=0o640)
    assert system.read_file(str(loose), 100)[0] == b"data"  # private=False by default
    with pytest.raises(system.RefusedFile) as refused:
        system.read_file(str(loose), 100, private=True)
    assert (refused.value.errno, refused.value.strerror, refused.value.filename) == (
        errno.EACCES,
        "not a private file of yours",
        str(loose),
    )
    with pytest.raises(system.RefusedFile):
        system.open_file(str(loose), private=True)
    fd, _ = system.open_file(str(private_file(tmp_path / "tight")), private=True)
    os.close(fd)


def test_a_file_past_the_limit_is_too_large(tmp_path):
    path = private_file(tmp_path / "big", b"x" * 11)
    assert system.read_file(str(path), 11)[0] == b"x" * 11
    with pytest.raises(system.FileTooLarge) as refused:
        system.read_file(str(path), 10)
    assert (refused.value.errno, refused.value.strerror) == (errno.EFBIG, "larger than 10 bytes")


def test_open_file_creates_with_the_mode_asked_for(tmp_path):
    path = tmp_path / "made"
    fd, info = system_common.open_file(system.current, str(path), flags=os.O_RDWR | os.O_CREAT, mode=0o600)
    os.close(fd)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# --- directories -------------------------------------------------------------------------------


def test_a_missing_directory_is_reported_not_made(tmp_path):
    missing = tmp_path / "missing"
    assert system.private_directory_problem(str(missing)) == f"{missing} does not exist"
    assert not missing.exists()
    assert system.private_directory_problem(str(missing), create=True) is None
    assert stat.S_IMODE(os.stat(missing).st_mode) == 0o700


def test_a_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert system.private_directory_problem(str(link)) == f"{link} is a symlink"


def test_a_file_where_a_directory_should_be(tmp_path):
    path = private_file(tmp_path / "file")
    assert system.private_directory_problem(str(path)).startswith(f"{path} ")


# --- an all-or-nothing write -------------------------------------------------------------------


def test_write_new_file_gives_up_when_no_temporary_name_is_free(tmp_path, monkeypatch):
    def taken(path, mode):
        raise FileExistsError(errno.EEXIST, "exists", path)

    monkeypatch.setattr(system.current, "create_new", taken)
    with pytest.raises(FileExistsError) as refused:
        system.write_new_file(str(tmp_path / "key"), b"data", 0o600)
    assert (refused.value.errno, refused.value.strerror) == (errno.EEXIST, "no free temporary name")
    assert os.listdir(tmp_path) == []


# --- the words of a head refusal ----------------------------------------------------------------


def head(version: str = "1.1", **fields) -> Head:
    return Head("GET", "/", version, tuple((name.replace("_", "-"), value) for name, value in fields.items()))


@pytest.mark.parametrize(
    "raw, parsed, message",
    [
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n", head(), "the request head is too large"),
        (b"GET / HTTP/1.1\nHost: x\n\n", head(), "a line of the request head ends in a bare LF"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            head("1.0", Transfer_Encoding="chunked"),
            "Transfer-Encoding in an HTTP/1.0 request",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            head(Content_Length="1", Transfer_Encoding="chunked"),
            "both Content-Length and Transfer-Encoding",
        ),
    ],
)
def test_head_problem_words(raw, parsed, message):
    assert head_problem(raw, parsed) == message

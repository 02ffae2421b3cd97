"""system_sockets: reads and writes that cannot block and keep the GIL (issue 21).

Each behaviour is checked on both paths: libc's send/recv through ctypes with
MSG_DONTWAIT, and the os.write/os.readv fallback used where libc cannot be loaded.
"""

import ctypes
import errno
import socket
import ssl
import sys
import threading

import pytest

pytestmark = [pytest.mark.process, pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")]

if sys.platform != "win32":
    from credential_helper import system_sockets


@pytest.fixture(params=["libc", "os"])
def calls(request, monkeypatch):
    if request.param == "os":
        monkeypatch.setattr(system_sockets, "_LIBC", None)
    elif system_sockets._LIBC is None:
        pytest.skip("libc could not be loaded here")
    return request.param


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_what_is_written_is_read_and_nothing_more(calls, pair):
    a, b = pair
    assert system_sockets.write_now(b, b"hello") == 5
    buffer = memoryview(bytearray(64))
    assert system_sockets.read_now(a, buffer) == 5
    assert bytes(buffer[:5]) == b"hello"
    assert system_sockets.read_now(a, buffer) is None  # nothing there: not 0, which is the end


def test_the_end_of_the_stream_reads_as_zero(calls, pair):
    a, b = pair
    b.close()
    assert system_sockets.read_now(a, memoryview(bytearray(8))) == 0


def test_a_read_never_takes_more_than_the_buffer(calls, pair):
    a, b = pair
    b.sendall(b"0123456789")
    buffer = memoryview(bytearray(10))
    assert system_sockets.read_now(a, buffer[:4]) == 4
    assert bytes(buffer[4:]) == b"\0" * 6
    assert system_sockets.read_now(a, buffer) == 6
    assert bytes(buffer[:6]) == b"456789"


def test_an_empty_buffer_is_not_read(calls, pair):
    a, b = pair
    b.sendall(b"x")
    assert system_sockets.read_now(a, memoryview(bytearray(0))) is None


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_a_full_socket_is_never_waited_for(calls, pair, timeout):
    """Written until the peer's buffer is full: the last write takes 0 bytes and
    returns at once, even on a blocking socket (the libc path passes MSG_DONTWAIT;
    the os path declines a blocking socket, as os.write would wait on it)."""
    a, b = pair
    b.settimeout(timeout)
    if calls == "os" and timeout is None:
        assert system_sockets.write_now(b, b"x") is None
        assert system_sockets.read_now(b, memoryview(bytearray(8))) is None
        return
    results: list[int | None] = []

    def fill() -> None:
        chunk = b"x" * 65536
        for _ in range(10_000):
            written = system_sockets.write_now(b, chunk)
            results.append(written)
            if written == 0:
                return

    writer = threading.Thread(target=fill, daemon=True)
    writer.start()
    writer.join(10)
    assert not writer.is_alive(), "a write waited for a peer that reads nothing"
    assert results[-1] == 0
    assert sum(r or 0 for r in results) > 0


def test_a_blocking_socket_with_nothing_to_read_is_not_waited_for(calls, pair):
    a, b = pair
    a.settimeout(None)  # as the server leaves an accepted socket
    outcome: list[int | None] = []
    reader = threading.Thread(target=lambda: outcome.append(system_sockets.read_now(a, memoryview(bytearray(8)))), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "a read waited on a blocking socket"
    assert outcome == [None]


def test_a_read_fills_the_buffer_by_bytes_not_items(calls, pair):
    a, b = pair
    a.settimeout(5)
    b.sendall(bytes(range(16)))
    words = memoryview(bytearray(16)).cast("I")  # 4 items of 4 bytes
    got = system_sockets.read_now(a, words)
    assert got == 16 and bytes(words) == bytes(range(16))


def test_without_ctypes_the_os_versions_are_used(monkeypatch):
    """A Python built without libffi has no _ctypes: the module still loads, and serves."""
    monkeypatch.setitem(sys.modules, "ctypes", None)  # import ctypes now raises ImportError
    assert system_sockets._load() is None


def test_a_write_to_a_closed_peer_raises(calls, pair):
    a, b = pair
    a.close()
    with pytest.raises(OSError) as raised:
        for _ in range(100):  # the first write may still be taken by the kernel
            system_sockets.write_now(b, b"x" * 4096)
    assert raised.value.errno in (errno.EPIPE, errno.ECONNRESET)


def test_readable_now_peeks_without_taking(calls, pair):
    a, b = pair
    assert system_sockets.readable_now(a) is False
    b.sendall(b"z")
    assert system_sockets.readable_now(a) is True
    assert system_sockets.readable_now(a) is True  # still there: a peek
    assert a.recv(8) == b"z"
    assert system_sockets.readable_now(a) is False
    b.close()
    assert system_sockets.readable_now(a) is True  # a close is readable: the pool must drop the connection


def test_tls_sockets_and_memoryviews_take_the_timed_path(pair):
    a, b = pair
    context = ssl.create_default_context()
    wrapped = context.wrap_socket(socket.socket(), do_handshake_on_connect=False, server_hostname="x")
    try:
        assert system_sockets.write_now(wrapped, b"x") is None
        assert system_sockets.read_now(wrapped, memoryview(bytearray(4))) is None
    finally:
        wrapped.close()
    assert system_sockets.write_now(b, memoryview(b"x")) is None


def test_libc_calls_keep_the_gil():
    """PyDLL functions are called without releasing the GIL (ctypes: FUNCFLAG_PYTHONAPI);
    a CDLL's would let go of it on every call, which is what this module avoids."""
    if system_sockets._LIBC is None:
        pytest.skip("libc could not be loaded here")
    for call in (system_sockets._LIBC.send, system_sockets._LIBC.recv):
        assert call._flags_ & ctypes._FUNCFLAG_PYTHONAPI

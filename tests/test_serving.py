"""tests/serving.py, the one helper that starts a proxy or a gate: its failures are
quick and say what the process printed. Stand-in processes (``python -c``) play a
server that never starts, one that starts late, one that ignores SIGTERM."""

from __future__ import annotations

import signal
import sys
import time

import pytest

import serving

pytestmark = pytest.mark.process  # it starts processes


def fake(script: str) -> list[str]:
    """An executable that runs ``script`` (its arguments land in sys.argv[1:])."""
    return [sys.executable, "-c", "import sys, time, signal\n" + script]


def test_a_refused_start_is_a_failure_with_its_lines_and_exit_code(tmp_path, env):
    # The real gate, with an authorized_keys file others may write: exit 3, one line.
    path = tmp_path / "authorized_keys"
    path.write_text("")
    path.chmod(0o666)
    started = time.monotonic()
    with pytest.raises(serving.DidNotListen) as failed:
        serving.start("gate", "--authorized-keys", str(path), env=env)
    assert failed.value.returncode == 3 and len(failed.value.lines) == 1, failed.value
    assert "writable by group or others" in str(failed.value) and time.monotonic() - started < 15


def test_silence_past_the_deadline_fails_quickly_and_the_process_is_killed():
    started = time.monotonic()
    with pytest.raises(serving.DidNotListen, match=r"printed nothing within 0.5s") as failed:
        serving.start(executable=fake("time.sleep(60)"), listen=None, deadline=0.5)
    assert failed.value.returncode is None and time.monotonic() - started < 5


def test_a_first_line_that_is_not_the_listening_line_is_quoted():
    script = "print('warning: something', file=sys.stderr, flush=True); print('more', file=sys.stderr); sys.exit(7)"
    with pytest.raises(serving.DidNotListen) as failed:
        serving.start(executable=fake(script), listen=None)
    assert failed.value.lines == ["warning: something", "more"] and failed.value.returncode == 7
    assert "warning: something\nmore" in str(failed.value)


def test_the_listening_line_text_or_json_gives_url_port_and_what_follows():
    text = (
        "print('listening on http://127.0.0.1:4321 (upstream x)', file=sys.stderr, flush=True)\n"
        "print('GET /api/tags 200', file=sys.stderr, flush=True)\n"
        "print('out', flush=True)\n"
        "time.sleep(60)"
    )
    with serving.running(executable=fake(text), listen=None) as started:
        assert (started.base, started.port, started.host) == ("http://127.0.0.1:4321", 4321, "127.0.0.1:4321")
        assert started.next_line() == "GET /api/tags 200"
        with pytest.raises(AssertionError, match="waiting for 'never'"):
            started.wait_for("never", timeout=0.3)
        started.stop()
    assert started.log == ["GET /api/tags 200"] and started.out == ["out"] and started.returncode == -signal.SIGTERM
    json_line = 'print(\'{"time": 1, "message": "listening on https://[::1]:99 (forward auth)"}\', file=sys.stderr, flush=True)'
    with serving.running(executable=fake(json_line + "\ntime.sleep(60)"), listen=None) as started:
        assert (started.base, started.port, started.host) == ("https://[::1]:99", 99, "[::1]:99")


def test_a_process_that_ignores_sigterm_is_killed_and_that_fails():
    script = (
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('listening on http://127.0.0.1:1 (x)', file=sys.stderr, flush=True)\n"
        "time.sleep(60)"
    )
    started = serving.start(executable=fake(script), listen=None)
    with pytest.raises(AssertionError, match="still running 0.5s after signal"):
        started.stop(timeout=0.5)
    assert started.returncode == -signal.SIGKILL

"""Command-line arguments are UTF-8 bytes, whatever the locale (issue 14, item 16).

Under ``LC_ALL=C PYTHONUTF8=0`` Python hands the program lone surrogates for
every non-ASCII byte (PEP 383); the helper must read the bytes as UTF-8, as
Ollama's Go client does, and refuse only bytes that are not UTF-8.
"""

from __future__ import annotations

import os

import pytest

from conftest import assert_one_line_error


@pytest.fixture
def c_locale(env):
    environment = {
        k: v
        for k, v in env.items()
        if not k.startswith("LC_") and k not in ("LANG", "LANGUAGE", "PYTHONUTF8", "PYTHONIOENCODING")
    }
    return dict(environment, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")


@pytest.mark.parametrize("locale", ["c", "utf8"])
def test_sign_reads_a_non_ascii_argument_as_utf8_in_any_locale(run, env, c_locale, locale):
    environment = c_locale if locale == "c" else dict(env, LC_ALL="C.UTF-8")
    result = run(["sign", "GET", "https://127.0.0.1/é?q=ü"], environment=environment)
    assert result.code == 0, result
    assert result.json()["url"].startswith("https://127.0.0.1/%C3%A9?q=%C3%BC&ts=")


@pytest.mark.process
def test_the_c_locale_really_gives_surrogates(c_locale):
    """The control: the environment above does make Python decode arguments as ASCII."""
    import subprocess
    import sys

    probe = "import sys; print(ascii(sys.argv[1]), sys.getfilesystemencoding())"
    done = subprocess.run([sys.executable, "-c", probe, "é"], env=c_locale, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["'\\udcc3\\udca9'", "ascii"]


@pytest.mark.parametrize("raw", [b"https://127.0.0.1/\xff", b"https://127.0.0.1/\xc3", b"https://127.0.0.1/\xed\xa0\x80"])
@pytest.mark.parametrize("locale", ["c", "utf8"])
def test_an_argument_that_is_not_utf8_is_bad_input(run, env, c_locale, raw, locale):
    environment = c_locale if locale == "c" else dict(env, LC_ALL="C.UTF-8")
    result = run(["sign", "GET", os.fsdecode(raw)], environment=environment)
    assert_one_line_error(result, 2)
    assert "argument 3 is not valid UTF-8" in result.err

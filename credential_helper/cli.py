"""The command line's process edge: ``main``, standard input, standard output, exit.

``main`` decodes the arguments, parses them (``cli_commands.py``), runs the
subcommand's handler, and turns every failure into one stderr line starting
``ollama-credential-helper: `` and the exit status of its error class. Standard
input is read here, once; every byte of a command's output goes through
``write_stdout``. This module is all that ``get``'s cache-hit fast path loads of
the command line, so it imports no argparse, cryptography or urllib3: keep it lean.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .errors import EXIT_INTERNAL, EXIT_OK, HelperError, InputError, OutputError

PROG = "ollama-credential-helper"
MAX_STDIN_BYTES = 64 * 1024

# typing.TYPE_CHECKING without importing typing (a cache hit never needs it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Log = Callable[[str], None]


class _Verbose:
    """Step-by-step log on stderr; callers pass already-redacted text."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        if self.enabled:
            message = _redact(message)
            sys.stderr.write(f"{PROG}: [{time.monotonic() - self.started:6.3f}s] {message}\n")


def _redact(text: str) -> str:
    """Last line of defence on stderr: no API key in any form, one printable line."""
    from .sanitize import server_text

    return server_text(text, limit=None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv
    _stdin_read.clear()  # main() may run more than once in one process (tests)
    try:
        argv = decode_arguments(argv)
        if argv[:1] == ["get"] and _serve_cache_hit(argv[1:]):
            return EXIT_OK
        from .cli_commands import build_parser

        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        log = _Verbose(args.verbose)
        if args.verbose:
            from . import system

            for line in system.limitations():  # what cannot hold here, said once
                log(f"note: {line}")
        return args.func(args, log)
    except HelperError as exc:
        _fail(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:  # a bug: one line, the traceback only on request
        if verbose:
            import traceback

            for line in traceback.format_exc().splitlines():
                sys.stderr.write(_redact(line) + "\n")
        _fail(f"internal error ({type(exc).__name__}); rerun with --verbose for details and report it")
        return EXIT_INTERNAL


def decode_arguments(argv: list[str]) -> list[str]:
    """Arguments as UTF-8, whatever the locale; anything not UTF-8 is bad input (exit 2).

    Arguments are bytes. Python decodes them with the locale's encoding and
    ``surrogateescape`` (PEP 383), so under ``LC_ALL=C PYTHONUTF8=0`` an ``é``
    arrives as two lone surrogates; ``os.fsencode`` gives the bytes back
    exactly, and Ollama (Go) treats strings as UTF-8 bytes, so that is how
    they are read.
    """
    decoded = []
    for position, arg in enumerate(argv, 1):
        try:
            decoded.append(os.fsencode(arg).decode("utf-8"))
        except (UnicodeEncodeError, UnicodeDecodeError):
            raise InputError(f"argument {position} is not valid UTF-8") from None
    return decoded


def _fail(message: str) -> None:
    sys.stderr.write(f"{PROG}: {_redact(message)}\n")


def print_json(obj: dict) -> None:
    write_stdout(json.dumps(obj) + "\n")


def write_stdout(text: str) -> None:
    """Every byte of output goes through here: a closed, full or broken stdout
    is an OutputError (exit 6, one stderr line), never a crash or a false 0."""
    try:
        if sys.stdout is None:  # started with stdout closed (>&-)
            raise OSError("standard output is closed")
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError) as exc:
        _discard_stdout()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OutputError(f"cannot write the result to standard output: {reason}") from None


def _discard_stdout() -> None:
    # Python flushes stdout again at exit; pointed at /dev/null that flush cannot
    # fail and print a second stderr line (the advice of Python's signal docs).
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


_FAST_GET_OPTIONS = {"--host": "host", "--identity": "identity", "--timeout": "timeout"}


def _serve_cache_hit(args: list[str]) -> bool:
    """The cache-hit fast path of ``get``: no argparse, cryptography or urllib3.

    Handles only plain invocations (--host, --identity, --timeout) of input forms
    1 and 2. Anything else, any error and any miss returns False, and the full
    path runs with the same standard input (read once, remembered).
    """
    options: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name not in _FAST_GET_OPTIONS:
            return False
        if not eq:
            if i + 1 >= len(args):
                return False
            value = args[i + 1]
            i += 1
        options[_FAST_GET_OPTIONS[name]] = value
        i += 1
    if "timeout" in options:
        try:
            if not 0 < float(options["timeout"]) <= 600:
                return False
        except ValueError:
            return False
    from . import client, protocol
    from .cache import TokenCache

    try:
        parsed = protocol.parse_challenge_input(read_stdin())
        host = options.get("host")
        if parsed.challenge is None or (host is not None and parsed.host not in (None, host)):
            return False  # a URL to fetch its challenge from, or a --host conflict
        token = client.cached_token(
            parsed.challenge, host=host or parsed.host, identity=options.get("identity"), cache=TokenCache()
        )
    except HelperError:
        return False
    if token is None:
        return False
    print_json(token.as_dict())
    return True


_stdin_read: list = []


def read_stdin() -> str:
    """At most 64 KiB of UTF-8; anything else is bad input. Read once per process."""
    if not _stdin_read:
        try:
            _stdin_read.append(_read_stdin_once())
        except InputError as exc:
            _stdin_read.append(exc)
    if isinstance(_stdin_read[0], InputError):
        raise _stdin_read[0]
    return _stdin_read[0]


def _read_stdin_once() -> str:
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return ""
    data = stream.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise InputError(f"standard input is larger than {MAX_STDIN_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"standard input is not valid UTF-8 (byte {exc.start})") from None

"""The subcommands of the command line: the full argument parser and one handler each.

``get``, ``sign``, ``erase``, ``key``, ``whoami`` and ``doctor`` are here; ``proxy``
and ``gate`` add themselves from ``serve/arguments.py``. Each handler takes the
parsed arguments and the ``--verbose`` log, and prints only through
``cli.write_stdout``. A module of its own because ``get``'s cache hit never
loads it: ``cli.main`` imports it only on the full path, and with it argparse
(about 10 ms) and, handler by handler, the rest of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING

from . import __version__
from .cli import PROG, print_json, read_stdin, write_stdout
from .errors import EXIT_OK, InputError

DEFAULT_TIMEOUT = 10.0

if TYPE_CHECKING:
    from typing import NoReturn

    from .cache import TokenCache
    from .cli import Log


# The argument types of every subcommand (serve/arguments.py's too).
def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {value!r}: give seconds, e.g. 10") from None
    if not 0 < seconds <= 600 or seconds != seconds:
        raise argparse.ArgumentTypeError("the timeout must be more than 0 and at most 600 seconds")
    return seconds


def _positive_int(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) <= 10000:
        raise argparse.ArgumentTypeError(f"invalid count {value!r}: give a whole number from 1 to 10000")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The full parser, ``proxy`` and ``gate`` included."""

    class _Parser(argparse.ArgumentParser):
        """Usage errors as one line and exit status 2."""

        def error(self, message: str) -> NoReturn:
            raise InputError(f"{message} (see '{self.prog} --help')")

    common = _Parser(add_help=False)
    common.add_argument("--identity", metavar="FILE", help="the Ed25519 private key (default: ~/.ollama/id_ed25519)")
    common.add_argument("--verbose", action="store_true", help="log each step to stderr, secrets shown as [redacted]")
    network = _Parser(add_help=False)
    network.add_argument(
        "--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS", help="bound on the whole exchange (default: 10)"
    )
    budget = _Parser(add_help=False)  # doctor: several exchanges, one --timeout for them all
    budget.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="the budget all network checks share, not one per check (default: 10, at most 600)",
    )
    challenged = _Parser(add_help=False)
    challenged.add_argument("--host", metavar="HOST", help="host[:port] of the request that got the challenge")

    parser = _Parser(
        prog=PROG,
        description="Keyless Ed25519 credentials for Ollama (ollama.com and its registry), "
        "computed exactly as Ollama's own client does.",
        epilog="Exit status: 0 success, 1 the server refused, 2 bad input or a refused realm, "
        "3 identity problem, 4 network or server failure, 5 internal error, "
        "6 standard output closed, full or a broken pipe.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    get = commands.add_parser(
        "get",
        parents=[common, network, challenged],
        help="exchange a Bearer challenge on stdin for a token (registry pulls and pushes)",
        description="Read a challenge on stdin (a JSON object, a WWW-Authenticate value, or a URL "
        "that answers 401) and print {token, token_type, expires_at, source} as JSON.",
    )
    get.add_argument("--dry-run", action="store_true", help="print the signed request that would be sent; send nothing")
    get.add_argument("--no-cache", action="store_true", help="neither read nor write the token cache")
    get.add_argument("--refresh", action="store_true", help="ignore a cached token, exchange, and cache the new one")
    get.set_defaults(func=cmd_get)

    sign = commands.add_parser(
        "sign",
        parents=[common],
        help="sign one ollama.com API request (scheme 2)",
        description='Sign METHOD URL (or stdin {"method": ..., "url": ...}) and print '
        "{method, url, authorization, ts, source} as JSON. METHOD is upper-cased before it is signed "
        "(post signs and prints POST): send the printed method, the one the signature covers.",
    )
    sign.add_argument("method", nargs="?", metavar="METHOD", help="HTTP method, e.g. POST (upper-cased: send the printed method)")
    sign.add_argument("url", nargs="?", metavar="URL", help="the full request URL")
    sign.set_defaults(func=cmd_sign)

    erase = commands.add_parser(
        "erase",
        parents=[common, network, challenged],
        help="forget the cached token for the challenge on stdin, or every token",
        description="With a challenge on stdin (as for get) forget that cache entry; "
        "with empty stdin forget every entry. Exits 0 even when nothing was cached.",
    )
    erase.set_defaults(func=cmd_erase)

    key = commands.add_parser(
        "key",
        parents=[common],
        help="print or create the identity's public key",
        description="Print the public key line (ssh-ed25519 AAAA...), its fingerprint, or the "
        "ollama.com page that links it to an account; or create a new identity.",
    )
    shown = key.add_mutually_exclusive_group()
    shown.add_argument("--fingerprint", action="store_true", help="print the fingerprint as ssh-keygen -l does")
    shown.add_argument("--connect-url", action="store_true", help="print the ollama.com page that links this key to an account")
    shown.add_argument("--generate", action="store_true", help="create a new key (never overwrites an existing one)")
    key.set_defaults(func=cmd_key)

    whoami = commands.add_parser(
        "whoami",
        parents=[common, network],
        help="ask ollama.com which account this key is linked to",
        description="Send a signed POST /api/me to $OLLAMA_CLOUD_BASE_URL (default https://ollama.com) and print the account.",
    )
    whoami.add_argument("--json", action="store_true", help="print the account as a JSON object")
    whoami.set_defaults(func=cmd_whoami)

    doctor = commands.add_parser(
        "doctor",
        parents=[common, budget],
        help="check identity, API key, network, clock, link, registry and cache, and say what to fix",
        description="Run every check in order and print one line each (ok, warn or FAIL) with the fix for "
        "anything not ok. Exit 0 when nothing failed, 1 when a check failed. Never prints a secret.",
    )
    doctor.add_argument("--json", action="store_true", help="print {checks: [{name, status, detail, fix}], ok} as JSON")
    doctor.add_argument("--registry", metavar="URL", help="the registry to check (default: https://registry.ollama.ai)")
    doctor.add_argument(
        "--host",
        metavar="URL",
        help="check a shared server (a gate) instead: TLS trust, clock, "
        "whether each of your keys is admitted, and which key Ollama's CLI signs with "
        "(without a scheme, URL means https://URL; http:// only for loopback)",
    )
    doctor.set_defaults(func=cmd_doctor)

    from .serve.arguments import add_serve_commands

    add_serve_commands(commands, common, _Parser)
    return parser


def _cache_for(args: argparse.Namespace) -> TokenCache | None:
    if getattr(args, "no_cache", False) or getattr(args, "dry_run", False):
        return None
    from .cache import TokenCache

    return TokenCache()


def cmd_get(args: argparse.Namespace, log: Log) -> int:
    from . import client

    if args.no_cache and args.refresh:
        raise InputError("--refresh and --no-cache contradict each other")
    text = read_stdin()
    log(f"read {len(text)} characters on stdin")
    deadline = time.monotonic() + args.timeout  # --timeout bounds the whole command
    parsed = client.resolve_input(text, host=args.host, timeout=args.timeout)
    assert parsed.challenge is not None  # resolve_input fetched a URL's
    result = client.get_token(
        parsed.challenge,
        host=parsed.host,
        identity=args.identity,
        timeout=max(deadline - time.monotonic(), 0.05),
        nonce=parsed.nonce,
        cache=_cache_for(args),
        refresh=args.refresh,
        dry_run=args.dry_run,
        log=log,
    )
    print_json(result.as_dict())
    return EXIT_OK


def cmd_sign(args: argparse.Namespace, log: Log) -> int:
    from . import client

    if args.method is not None and args.url is None:
        raise InputError("sign needs METHOD and URL, or neither and a JSON object on stdin")
    if args.method is None:
        text = read_stdin()
        try:
            data = json.loads(text)
        except RecursionError:
            raise InputError("the JSON on standard input is nested too deeply") from None
        except ValueError:
            raise InputError('sign reads METHOD URL arguments, or stdin {"method": ..., "url": ...}') from None
        if not isinstance(data, dict) or not isinstance(data.get("method"), str) or not isinstance(data.get("url"), str):
            raise InputError('stdin must be a JSON object with string "method" and "url"')
        method, url = data["method"], data["url"]
    else:
        method, url = args.method, args.url
    signed = client.sign_request(method, url, identity=args.identity)
    log(f"signed {signed.method} {signed.url} (Authorization: [redacted], source {signed.source})")
    print_json(signed.as_dict())
    return EXIT_OK


def cmd_erase(args: argparse.Namespace, log: Log) -> int:
    from . import client
    from .cache import TokenCache
    from .errors import KeyNotFoundError
    from .identity import default_identity_path, read_key_file

    cache = TokenCache()
    text = read_stdin()
    if not text.strip():
        removed = cache.erase_all()
        log(f"erased {removed} cache entries from {cache.directory}")
        return EXIT_OK
    parsed = client.resolve_input(text, host=args.host, timeout=args.timeout)
    path = args.identity or default_identity_path()
    try:
        key_bytes = read_key_file(path)
    except KeyNotFoundError:
        log("no identity, so nothing can be cached for it")
        return EXIT_OK
    assert parsed.challenge is not None  # resolve_input fetched a URL's
    cache.erase(client.cache_key_for(parsed.challenge, key_bytes))
    log("erased the entry for this challenge and identity")
    return EXIT_OK


def cmd_key(args: argparse.Namespace, log: Log) -> int:
    from . import account
    from .identity import default_identity_path

    if args.generate:
        identity = account.generate_identity(args.identity)
        log(f"created {identity.path} and {identity.path}.pub")
        write_stdout(f"{identity.public_key_line}\n")
        if args.identity is None or os.path.abspath(args.identity) == os.path.abspath(default_identity_path()):
            write_stdout(f"created {identity.path} (and .pub); link it to your ollama.com account at:\n")
            write_stdout(f"{account.connect_url(identity)}\n")
        else:
            # A second key is for a shared server (a gate): linking it to ollama.com would undo its point,
            # since whoever runs that server can replay its signatures at ollama.com.
            write_stdout(
                f"created {identity.path} (and .pub). For a shared server, send its operator the line above; "
                "leave this key unlinked: apart from your ollama.com account, its signatures are worth nothing there "
                f"(to link it anyway: ollama-credential-helper key --connect-url --identity {identity.path})\n"
            )
        return EXIT_OK
    from .identity import load_identity

    identity = load_identity(args.identity)
    log(f"loaded {identity.path} ({identity.fingerprint})")
    if args.fingerprint:
        write_stdout(f"256 {identity.fingerprint} (ED25519)\n")
    elif args.connect_url:
        write_stdout(f"{account.connect_url(identity)}\n")
    else:
        write_stdout(f"{identity.public_key_line}\n")
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace, log: Log) -> int:
    from . import account

    who = account.whoami(os.environ.get("OLLAMA_CLOUD_BASE_URL"), identity=args.identity, timeout=args.timeout, log=log)
    if args.json:
        print_json(who)
    else:
        plan = f", plan {who['plan']}" if who.get("plan") else ""
        email = f" <{who['email']}>" if who.get("email") else ""
        write_stdout(f"{who['name']}{email}{plan}\n")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, log: Log) -> int:
    from . import doctor

    if args.host is not None:
        from . import doctor_host

        if args.registry is not None:
            raise InputError("--host checks a shared server and --registry ollama.com's registry: give one of them")
        checks = doctor_host.run(host=args.host, identity_path=args.identity, timeout=args.timeout)
    else:
        checks = doctor.run(identity_path=args.identity, registry=args.registry, timeout=args.timeout)
    failed = any(check.status == "fail" for check in checks)
    if args.json:
        print_json({"checks": [check.as_dict() for check in checks], "ok": not failed})
    else:
        write_stdout(doctor.render(checks))
    return 1 if failed else EXIT_OK

"""The ``proxy`` and ``gate`` commands' arguments and entry points (the rest of
the command line is ``cli.py`` and ``cli_commands.py``, whose parser adds these)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..cli import write_stdout
from ..cli_commands import _positive_int, _timeout
from ..errors import EXIT_OK, InputError
from .limits import Limits

if TYPE_CHECKING:
    import argparse

    from ..cli import Log


def add_serve_commands(commands: Any, common: argparse.ArgumentParser, parser_class: type[argparse.ArgumentParser]) -> None:
    """Add ``proxy`` and ``gate`` to the CLI's subcommands."""
    proxy = commands.add_parser(
        "proxy",
        parents=[common],
        help="a loopback signing proxy: any OpenAI- or Ollama-compatible tool reaches Ollama Cloud keylessly",
        description="Listen on loopback and forward every request to the upstream (default "
        "$OLLAMA_CLOUD_BASE_URL, else https://ollama.com), signed as Ollama signs it, streaming both ways. "
        "Clients authenticate with the local access token (see --print-env).",
    )
    proxy.add_argument(
        "--listen",
        default="127.0.0.1:11470",
        metavar="HOST:PORT",
        help="loopback address to listen on; port 0 picks one (default: 127.0.0.1:11470)",
    )
    proxy.add_argument("--upstream", metavar="URL", help="where to forward (scheme and host; https unless loopback)")
    proxy.add_argument(
        "--no-local-token", action="store_true", help="accept requests without the local access token (single-user machines only)"
    )
    proxy.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="admit requests from this web page origin (scheme://host:port); repeatable; default: none",
    )
    proxy.add_argument("--print-env", action="store_true", help="print shell lines that point clients at the proxy, then exit")
    _add_serving_options(proxy, "on SIGINT/SIGTERM")
    proxy.set_defaults(func=cmd_proxy)

    verbose_only = parser_class(add_help=False)
    verbose_only.add_argument("--verbose", action="store_true", help="log each step to stderr, secrets shown as [redacted]")
    gate = commands.add_parser(
        "gate",
        parents=[verbose_only],
        help="admit people to a self-hosted Ollama by their own keys (verifies Ollama's OLLAMA_AUTH=1 signatures)",
        description="Verify each request's Ollama key signature against authorized_keys (the format of Ollama's "
        "draft: '[options] <type> <key> [name] [endpoint,...]') and forward what is admitted to the upstream Ollama; "
        "or, with --auth-only, answer 204/401/403 for nginx auth_request, ingress-nginx, Caddy forward_auth or Traefik ForwardAuth (200/401/403 for Envoy ext_authz with --path-prefix). "
        "The file is reloaded once a change has settled (its mtime 2 s old; a revocation takes about 2 s), "
        "and at once on SIGHUP.",
    )
    gate.add_argument(
        "--listen",
        default="127.0.0.1:11435",
        metavar="HOST:PORT",
        help="address to listen on; a non-loopback one needs TLS (default: 127.0.0.1:11435)",
    )
    gate.add_argument(
        "--upstream", metavar="URL", help="the Ollama server to forward to, scheme and host (default: http://127.0.0.1:11434)"
    )
    gate.add_argument("--auth-only", action="store_true", help="forward nothing: answer the front server's auth requests")
    gate.add_argument(
        "--trusted-front",
        metavar="CIDR[,CIDR]",
        help="with --auth-only: front servers whose X-Forwarded-For (its last entry) gives the client's address for from= lines",
    )
    gate.add_argument(
        "--path-prefix",
        metavar="PREFIX",
        help="with --auth-only: the request to check is the auth request's own method and "
        "target after PREFIX (Envoy ext_authz http_service path_prefix, Gateway API ExternalAuth); admits with 200",
    )
    gate.add_argument("--authorized-keys", metavar="FILE", help="who may call what (default: ~/.ollama/authorized_keys)")
    gate.add_argument(
        "--max-skew",
        type=_timeout,
        default=300.0,
        metavar="SECONDS",
        help="how far a signature's ts may be from this clock (default: 300)",
    )
    gate.add_argument("--tls-cert", metavar="FILE", help="serve https with this certificate chain (PEM)")
    gate.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    _add_serving_options(gate, "on a stop signal")
    gate.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics; loopback only unless --metrics-public (default: off)",
    )
    gate.add_argument(
        "--metrics-public",
        action="store_true",
        help="allow --metrics-listen on a non-loopback address (the metrics name every key's user)",
    )
    gate.set_defaults(func=cmd_gate)


def _add_serving_options(parser: argparse.ArgumentParser, stop: str) -> None:
    """What the proxy and the gate share: the engine's bounds (serve/limits.py gives the
    defaults) and the log's format."""
    limits = Limits()
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=limits.upstream,
        metavar="SECONDS",
        help=f"bound on the upstream's whole answer head, then on each wait for more of its body (default: {limits.upstream:g})",
    )
    parser.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=limits.in_flight,
        metavar="N",
        help=f"requests in flight at once; more get 503 (default: {limits.in_flight})",
    )
    parser.add_argument(
        "--grace",
        type=_timeout,
        default=10.0,
        metavar="SECONDS",
        help=f"{stop}, how long requests in flight may finish (default: 10)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="one line per request as text, or one JSON object per line for log shippers (default: text)",
    )


def cmd_proxy(args: argparse.Namespace, log: Log) -> int:
    from ..identity import default_identity_path
    from . import commands, sign

    if args.print_env:
        host, port = commands.parse_listen(
            args.listen,
            commands.DEFAULT_PROXY_PORT,
            loopback_only=True,
            why="the proxy listens on loopback only (127.0.0.0/8 in dotted decimal, ::1 or localhost)",
        )
        if port == 0:
            raise InputError(
                "--print-env needs the port the proxy listens on, not 0: pass --listen the address and port "
                "from the proxy's 'listening on' line"
            )
        token = None if args.no_local_token else sign.local_token()
        write_stdout("".join(f"{line}\n" for line in sign.env_lines(commands.shown_base(host, port), token)))
        return EXIT_OK
    return commands.serve_proxy(
        listen=args.listen,
        upstream_text=args.upstream if args.upstream is not None else os.environ.get("OLLAMA_CLOUD_BASE_URL"),
        upstream_source="--upstream" if args.upstream is not None else "OLLAMA_CLOUD_BASE_URL",
        identity_path=args.identity or default_identity_path(),
        default_identity=args.identity is None,
        require_token=not args.no_local_token,
        allow_origins=args.allow_origin,
        timeout=args.timeout,
        max_in_flight=args.max_concurrency,
        grace=args.grace,
        verbose=args.verbose,
        log_format=args.log_format,
    )


def cmd_gate(args: argparse.Namespace, log: Log) -> int:
    from . import commands

    return commands.serve_gate(
        listen=args.listen,
        upstream_text=args.upstream,
        auth_only=args.auth_only,
        path_prefix=args.path_prefix,
        authorized_keys=args.authorized_keys,
        trusted_fronts=args.trusted_front,
        max_skew=args.max_skew,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        timeout=args.timeout,
        max_in_flight=args.max_concurrency,
        grace=args.grace,
        verbose=args.verbose,
        log_format=args.log_format,
        metrics_listen=args.metrics_listen,
        metrics_public=args.metrics_public,
    )

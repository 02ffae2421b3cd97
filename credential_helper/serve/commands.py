"""Starting ``proxy`` and ``gate``: parse what the command line gave, build the
policy and the engine, serve until a stop signal. The CLI calls only these."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .. import policy, system
from ..errors import InputError
from .limits import Limits

if TYPE_CHECKING:
    import ssl

    from ..protocol import URL
    from .server import Server

DEFAULT_PROXY_PORT = 11470  # not Ollama's 11434
DEFAULT_GATE_PORT = 11435


def parse_listen(
    text: str, default_port: int, *, loopback_only: bool, why: str = "", option: str = "--listen"
) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as the address to bind. A loopback host is
    bound under its printed name (``policy.loopback_names``: ``localhost`` is
    127.0.0.1, any spelling of ::1 is ::1), so ``--print-env`` prints a URL the
    proxy answers to."""
    if text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise InputError(f"{option} {text!r} is not host:port (e.g. 127.0.0.1:{default_port})")
    names = policy.loopback_names(host)
    if loopback_only and not names:
        raise InputError(f"{option} {host}: {why}")
    return (names[0].strip("[]") if names else host), int(port_text)


def shown_base(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def make_log(log_format: str = "text") -> tuple[Callable[[str], None], Callable[[str], None]]:
    """(log, write): ``log`` for the server's own messages, ``write`` for a formatted
    request line. With ``--log-format json`` every line on stderr is one JSON
    object: messages become ``{"time", "message"}``. Both go through one
    LineWriter, so their lines stay in order."""
    from .log_lines import LineWriter

    write = LineWriter()

    if log_format != "json":
        return write, write

    def log(line: str) -> None:
        import json
        import time

        from .record import _rfc3339

        write(json.dumps({"time": _rfc3339(time.time()), "message": line}, ensure_ascii=True))

    return log, write


def serve_proxy(
    *,
    listen: str,
    upstream_text: str | None,
    identity_path: str,
    default_identity: bool,
    require_token: bool,
    allow_origins: Iterable[str] | None,
    timeout: float,
    max_in_flight: int,
    grace: float,
    verbose: bool,
    ready: Callable[[Server], None] | None = None,
    log_format: str = "text",
    upstream_source: str = "OLLAMA_CLOUD_BASE_URL",
) -> int:
    from . import record, server as server_module, sign
    from .upstream import Upstream

    address = parse_listen(
        listen,
        DEFAULT_PROXY_PORT,
        loopback_only=True,
        why="the proxy listens on loopback only (127.0.0.0/8 in dotted decimal, ::1 or localhost)",
    )
    upstream_url = policy.cloud_base_url(upstream_text, upstream_source)
    allowed = sign.parse_origins(allow_origins)
    token = sign.local_token() if require_token else None
    signer = sign.Signer(upstream_url, identity_path)  # exit 3 now, not 503 on every request
    log, write = make_log(log_format)
    upstream = Upstream(upstream_url, timeout)
    server = server_module.Server(
        address,
        None,
        upstream=upstream,
        log=log,
        limits=Limits(upstream=timeout, in_flight=max_in_flight),
        verbose=verbose,
        prepare_socket=system.prepare_listening_socket,
        observe=record.Logger(write, log_format),
        count_usage=log_format == "json",
    )
    server.policy = sign.SigningPolicy(signer, token, server.address, allowed)
    log(f"listening on {shown_base(*server.address)} (upstream {upstream_url}, signing with {signer.description})")
    if token is None:
        log("warning: --no-local-token: any program on this machine can use your ollama.com account through this proxy")
    shared = policy.shared_server_warning(upstream_url, default_identity and signer.identity is not None)
    if shared is not None:
        log(f"warning: {shared}")
    if upstream.via is not None and verbose:
        log(f"upstream through the proxy {upstream.via} ({upstream.via.variable})")
    return server_module.run(server, grace=grace, log=log, stop_signals=system.stop_signals(), ready=ready)


def serve_gate(
    *,
    listen: str,
    upstream_text: str | None,
    auth_only: bool,
    authorized_keys: str | None,
    path_prefix: str | None = None,
    max_skew: float,
    tls_cert: str | None,
    tls_key: str | None,
    timeout: float,
    max_in_flight: int,
    grace: float,
    verbose: bool,
    ready: Callable[[Server], None] | None = None,
    log_format: str = "text",
    metrics_listen: str | None = None,
    metrics_public: bool = False,
    trusted_fronts: str | None = None,
) -> int:
    from . import gate, record, restrict
    from . import server as server_module
    from .authorized_keys import AuthorizedKeys, KeyFile, default_path

    address = parse_listen(listen, DEFAULT_GATE_PORT, loopback_only=False)
    if (tls_cert is None) != (tls_key is None):
        raise InputError("--tls-cert and --tls-key go together")
    if not policy.is_loopback(address[0]) and tls_cert is None:
        # A signature is replayable (at ollama.com too) while its ts is fresh: never in clear text on a network.
        raise InputError(
            f"--listen {address[0]}: a gate on a non-loopback address needs --tls-cert and --tls-key "
            "(signatures must not cross a network in clear text)"
        )
    if auth_only and upstream_text is not None:
        raise InputError("--auth-only answers the front server and forwards nothing: drop --upstream")
    if path_prefix is not None:
        from .forwarded import path_prefix_problem

        if not auth_only:
            raise InputError("--path-prefix goes with --auth-only (Envoy's ext_authz asks; the gate forwards nothing)")
        problem = path_prefix_problem(path_prefix)
        if problem is not None:
            raise InputError(f"--path-prefix {path_prefix!r}: {problem}")
    if trusted_fronts is not None and not auth_only:
        raise InputError("--trusted-front is for --auth-only; a reverse-proxy gate matches from= against the address it accepted")
    fronts = gate.parse_trusted_fronts(trusted_fronts) if trusted_fronts is not None else ()
    upstream = upstream_url = None
    if not auth_only:
        upstream_url = _gate_upstream(upstream_text or "http://127.0.0.1:11434")
    metrics_address = None
    if metrics_listen is not None:
        metrics_address = parse_listen(
            metrics_listen,
            0,
            loopback_only=not metrics_public,
            option="--metrics-listen",
            why="metrics name every user: listen on loopback, or add --metrics-public and restrict who can reach it",
        )
    context = _server_tls(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    log, write = make_log(log_format)
    path = authorized_keys or default_path()
    early: list[str] | None = []  # warnings of the first read, shown after the listening line
    early_lock = threading.Lock()  # the serve loop may reload before the listening line is out

    def warn(text: str) -> None:
        with early_lock:
            if early is not None:
                early.append(text)
                return
        log(f"warning: {text}")

    def reloaded(new: AuthorizedKeys) -> None:
        log(f"reloaded {path}: {len(new)} key line(s)")
        if auth_only:  # a line this mode cannot enforce grants nothing (AuthOnlyPolicy.enforceable)
            for problem in restrict.auth_only_problems(restrict.line_options(new), bool(fronts)):
                log(f"warning: {path}: {problem}; the line grants nothing")

    keys = KeyFile(path, warn, reloaded)  # IdentityError (exit 3) when unusable
    if auth_only:
        problems = restrict.auth_only_problems(restrict.line_options(keys.current()), bool(fronts))
        if problems:
            from ..errors import IdentityError

            raise IdentityError(f"refusing {path} with --auth-only: {restrict.auth_only_refusal(problems)}")
        decider: gate.AuthOnlyPolicy | gate.GatePolicy = gate.AuthOnlyPolicy(
            keys, max_skew, path_prefix=path_prefix, trusted_fronts=fronts
        )
    else:
        from .upstream import Upstream

        assert upstream_url is not None  # parsed above unless --auth-only
        upstream = Upstream(upstream_url, timeout)
        decider = gate.GatePolicy(keys, max_skew, upstream_url.host)
    metrics = None
    if metrics_address is not None:
        from . import metrics as metrics_module

        metrics = metrics_module.Metrics()
    server = server_module.Server(
        address,
        decider,
        upstream=upstream,
        log=log,
        limits=Limits(upstream=timeout, in_flight=max_in_flight),
        verbose=verbose,
        tls_context=context,
        prepare_socket=system.prepare_listening_socket,
        observe=record.fan_out(record.Logger(write, log_format), metrics),
        count_usage=log_format == "json" or metrics is not None,
    )
    exporter = None
    if metrics is not None and metrics_address is not None:  # metrics only with an address
        server.flight = metrics.flight
        try:
            exporter = metrics.serve(metrics_address)
        except BaseException:
            server.close()
            raise
    mode = f"upstream {upstream_url}"
    if auth_only:
        mode = "forward auth" if path_prefix is None else f"forward auth under {path_prefix}/"

    def announce(serving: Server) -> None:
        # Called by run() once its SIGHUP and stop handlers are in place: a supervisor that
        # sends SIGHUP as soon as it reads the listening line must find the handler, not the
        # default action (which ends the process).
        nonlocal early
        host, port = serving.address
        log(
            f"listening on {shown_base(host, port, 'https' if context else 'http')} ({mode}, "
            f"{len(keys.current())} key line(s) from {path}, max skew {max_skew:g}s)"
        )
        if exporter is not None:
            log(f"metrics at {shown_base(*exporter.address)}/metrics")
        with early_lock:
            shown, early = early or [], None
        for text in shown:
            log(f"warning: {text}")
        if ready is not None:
            ready(serving)

    def reload() -> None:
        keys.reload()
        if tls_cert is not None and tls_key is not None:  # they go together (checked above)
            # certbot renews in place and runs a deploy hook (e.g. kill -HUP): new connections get the
            # new certificate, those already open keep theirs (the engine wraps each at accept).
            try:
                server.tls_context = _server_tls(tls_cert, tls_key)
            except InputError as exc:
                log(f"warning: {exc}; new connections still get the previous certificate")
            except Exception as exc:  # a reload must never end the server (a file swapped mid-read, a signal)
                log(
                    f"warning: reloading {tls_cert} failed ({type(exc).__name__}); new connections still get the previous certificate"
                )
            else:
                log(f"reloaded {tls_cert}: new connections get this certificate")

    try:
        return server_module.run(
            server, grace=grace, log=log, stop_signals=system.stop_signals(), ready=announce, on_reload=reload
        )
    finally:
        if exporter is not None:
            exporter.close()


def _gate_upstream(text: str) -> URL:
    """Ollama's address: a scheme and host. Ollama's client signs paths without any
    base path of OLLAMA_HOST (api/client.go), so a gate cannot sit under one."""
    from .. import protocol

    url = protocol.parse_url(text.rstrip("/"), what="--upstream")
    if url.scheme not in ("http", "https") or url.path not in ("", "/") or url.raw_query:
        raise InputError(
            "--upstream must be a scheme and host only (e.g. http://127.0.0.1:11434): "
            "Ollama's client signs paths from the root, so the gate serves at the root too"
        )
    return protocol.URL(url.scheme, url.host, "", "")


def _server_tls(cert: str, key: str) -> ssl.SSLContext:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        _regular_or_missing(option, path)  # OpenSSL opens them blocking: a FIFO would hang a start or a SIGHUP
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(_tls_problem(cert, key, exc)) from None
    return context


def _regular_or_missing(option: str, path: str) -> None:
    try:
        fd, _ = system.open_file(path)
    except system.RefusedFile as exc:
        raise InputError(f"cannot use {option} {path}: {exc.strerror or exc}; give a PEM file") from None
    except OSError:
        return  # missing or unreadable: load_cert_chain fails and _tls_problem says which
    os.close(fd)


def _tls_problem(cert: str, key: str, exc: Exception) -> str:
    """Which of the two files is wrong, and how: OpenSSL's own text for a file it
    cannot parse is ``[SSL] PEM lib`` with no file name (Modules/_ssl.c load_cert_chain)."""
    import ssl

    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        try:
            fd, _ = system.open_file(path)
        except OSError as error:
            return f"cannot read {option} {path}: {error.strerror or error}"
        os.close(fd)
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return f"--tls-key {key} is not the private key of --tls-cert {cert}; give the key the certificate was issued for"
    try:  # a file holding at least one PEM certificate loads as trust anchors; a key or garbage does not
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except OSError as error:  # it changed since load_cert_chain read it (ssl.SSLError is an OSError too)
        if not isinstance(error, ssl.SSLError):
            return f"cannot read --tls-cert {cert}: {error.strerror or error}"
        return f"cannot use --tls-cert {cert}: it holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the certificate chain file (e.g. fullchain.pem)"
    return (
        f"cannot use --tls-key {key}: it holds no unencrypted PEM private key for --tls-cert {cert} "
        "(-----BEGIN PRIVATE KEY-----; an encrypted key is not supported); give the key file (e.g. privkey.pem)"
    )

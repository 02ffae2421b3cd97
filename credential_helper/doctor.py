"""``ollama-credential-helper doctor``: why keyless auth does not work here, and the fix.

Each check returns one :class:`Check` (ok, warn or fail, what it found, and for
anything but ok the command or page that fixes it). The checks run in order,
share one time budget for the network, and reuse the package's own functions,
so what doctor reports is what ``get``, ``sign`` and ``whoami`` would meet.
Nothing here prints a token, a signature or an API key: the sanitiser cleans
every detail built from server text, and the API key is reported by presence.
"""

import os
import time
from collections.abc import Mapping

from . import account, client, identity, policy, protocol, tokens
from .cache import TokenCache
from .errors import HelperError, IdentityError, KeyNotFoundError, NetworkError, ServerRefusedError

DEFAULT_REGISTRY = "https://registry.ollama.ai"
PUBLIC_MODEL = "library/gemma3"
CLOCK_TOLERANCE = 30.0
# For a failure that names no fix of its own (a 5xx, a redirect, an oversized answer).
_NETWORK_FIX = "check the network or firewall; behind a proxy set HTTPS_PROXY"


class Check:
    __slots__ = ("name", "status", "detail", "fix")

    def __init__(self, name: str, status: str, detail: str, fix: str | None = None) -> None:
        from .sanitize import server_text

        # One printable line, and no OLLAMA_API_KEY or proxy credential in any form:
        # the last filter before doctor's output, whatever a check put in its text.
        self.name, self.status = name, status
        self.detail = server_text(detail, limit=None)
        self.fix = server_text(fix, limit=None) if fix else None

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


MARKS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        lines.append(f"{MARKS[check.status]} {check.name}: {check.detail}")
        if check.fix:
            lines.append(f"       fix: {check.fix}")
    failed = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    lines.append(f"{failed} failed, {warned} warning{'' if warned == 1 else 's'}, {len(checks) - failed - warned} ok")
    return "\n".join(lines) + "\n"


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run(
    *, identity_path: str | None, registry: str | None, timeout: float, environ: Mapping[str, str] | None = None
) -> list[Check]:
    environ = os.environ if environ is None else environ
    key_path = identity_path or identity.default_identity_path()
    budget = _Budget(timeout)
    checks = [check_identity(key_path), check_api_key(key_path, environ)]
    try:
        base = policy.cloud_base_url(environ.get("OLLAMA_CLOUD_BASE_URL"))
    except HelperError as exc:
        checks.append(
            Check("network", "fail", str(exc), "unset OLLAMA_CLOUD_BASE_URL, or give a scheme and host (https unless loopback)")
        )
        base = None
    registry_url = protocol.parse_url(registry or DEFAULT_REGISTRY, what="--registry")
    if base is not None:
        api_check, date = check_network("network (API)", base, budget)
        checks.append(api_check)
    else:
        api_check, date = checks[-1], None
    registry_check, _ = check_network("network (registry)", registry_url, budget)
    checks.append(registry_check)
    checks.append(check_clock(date) if api_check.status == "ok" else _skipped("clock", "the API host could not be reached"))
    checks.append(
        check_link(base, key_path, budget)
        if api_check.status == "ok" and base is not None
        else _skipped("link", "the API host could not be reached")
    )
    checks.append(
        check_registry(registry_url, key_path, budget)
        if registry_check.status == "ok"
        else _skipped("registry", "the registry could not be reached")
    )
    checks.append(check_cache())
    checks.append(check_platform())
    return checks


def _skipped(name: str, why: str) -> Check:
    return Check(name, "warn", f"not checked: {why}")


# --- 1. identity ----------------------------------------------------------------------------


def check_identity(key_path: str) -> Check:
    generate = f"ollama-credential-helper key --generate{'' if key_path == identity.default_identity_path() else ' --identity ' + key_path} (then open the printed page), or run 'ollama signin'"
    chosen = key_path != identity.default_identity_path()
    try:
        loaded = identity.load_identity(key_path)
    except KeyNotFoundError as exc:
        if chosen:  # a typed path: a typo, not a key to make (see identity._missing_key_message)
            return Check("identity", "fail", str(exc), "give --identity the path of an existing private key")
        return Check("identity", "fail", f"no key at {key_path}", generate)
    except IdentityError as exc:  # the error carries its fix where identity.py diagnosed it
        return Check("identity", "fail", str(exc), exc.fix or f"move {key_path} aside, then {generate}")
    detail = f"{key_path}: Ed25519, unencrypted, private; {loaded.public_key_line} ({loaded.fingerprint})"
    service = _service_key()
    if service is not None and service != loaded.public_key_line:
        return Check(
            "identity",
            "warn",
            f"{detail}; Ollama's system service uses another key ({identity.SYSTEM_SERVICE_PUBKEY}), and linking one does not link the other",
            "link this key too (ollama-credential-helper key --connect-url), or use the service's key for the service",
        )
    return Check("identity", "ok", detail)


def _service_key() -> str | None:
    from . import system

    # The service's key directory is writable by the service account: a FIFO
    # planted there would block a plain open() forever (system.read_file refuses it).
    try:
        data, _ = system.read_file(identity.SYSTEM_SERVICE_PUBKEY, 4096)
    except OSError:
        return None
    fields = data.decode("ascii", "replace").split()
    return " ".join(fields[:2]) if len(fields) >= 2 else None


# --- 2. API key -----------------------------------------------------------------------------


def check_api_key(key_path: str, environ: Mapping[str, str]) -> Check:
    value = environ.get("OLLAMA_API_KEY", "").strip()
    if not value:
        return Check("api key", "ok", "OLLAMA_API_KEY is not set; the key file is the only credential")
    if os.path.lexists(key_path):
        return Check(
            "api key", "ok", f"OLLAMA_API_KEY is set ({len(value)} characters) but not used: the key file takes precedence"
        )
    return Check(
        "api key",
        "warn",
        f"OLLAMA_API_KEY is set ({len(value)} characters) and used, for ollama.com hosts only, because there is no key file",
        "for keyless auth, create a key: ollama-credential-helper key --generate",
    )


# --- 3. network -------------------------------------------------------------------------------


def check_network(name: str, base: protocol.URL, budget: _Budget) -> tuple[Check, str | None]:
    from . import transport
    from .proxy_env import proxy_for

    if budget.left() <= 0:
        return Check(name, "fail", "not checked: the --timeout budget was spent", "rerun with a larger --timeout"), None
    url = protocol.URL(base.scheme, base.host, "/", "")
    try:
        via = proxy_for(url, os.environ)
        response = transport.send("GET", url, timeout=max(budget.left(), 0.05), max_body=64 * 1024)
    except NetworkError as exc:
        return Check(name, "fail", str(exc), exc.fix or _NETWORK_FIX), None
    route = f"through the proxy {via} ({via.variable})" if via is not None else "directly"
    tls = ", TLS verified" if url.scheme == "https" else ""
    return Check(name, "ok", f"{base.scheme}://{base.host} answered HTTP {response.status}, {route}{tls}"), response.header(
        "date"
    )


# --- 4. clock ---------------------------------------------------------------------------------


def check_clock(date_header: str | None) -> Check:
    skew = tokens.clock_skew(date_header, time.time())
    if skew is None:
        return Check("clock", "warn", "the server sent no usable Date header; the clock could not be compared")
    direction = "behind" if skew > 0 else "ahead of"
    if abs(skew) > CLOCK_TOLERANCE:
        return Check(
            "clock",
            "fail",
            f"the local clock is {abs(skew):.0f}s {direction} the server's; signatures carry ts and are refused when stale",
            "sync the clock: timedatectl set-ntp true (or your system's time service)",
        )
    return Check("clock", "ok", f"within {max(abs(skew), 0.5):.0f}s of the server's")


# --- 5. link ----------------------------------------------------------------------------------


def check_link(base: protocol.URL, key_path: str, budget: _Budget) -> Check:
    try:
        who = account.whoami(str(base), identity=key_path, timeout=max(budget.left(), 0.05))
    except ServerRefusedError as exc:
        return Check("link", "fail", str(exc), _connect_fix(key_path))
    except IdentityError as exc:
        return Check("link", "fail", f"no usable credential to sign with ({exc})", "fix the identity check first")
    except HelperError as exc:
        return Check("link", "fail", str(exc), exc.fix or _NETWORK_FIX)
    plan = f", plan {who['plan']}" if who.get("plan") else ""
    return Check("link", "ok", f"a signed POST /api/me names the account {who['name']}{plan}")


def _connect_fix(key_path: str) -> str:
    try:
        return f"open {account.connect_url(identity.load_identity(key_path))} and confirm"
    except IdentityError:
        return "check OLLAMA_API_KEY"


# --- 6. registry ------------------------------------------------------------------------------


def check_registry(registry: protocol.URL, key_path: str, budget: _Budget) -> Check:
    url = protocol.URL(registry.scheme, registry.host, f"/v2/{PUBLIC_MODEL}/manifests/latest", "")
    try:
        challenge, host = client.fetch_challenge(url, timeout=max(budget.left(), 0.05))
        token = client.get_token(challenge, host=host, identity=key_path, timeout=max(budget.left(), 0.05))
    except ServerRefusedError as exc:
        return Check("registry", "fail", str(exc), _connect_fix(key_path))
    except HelperError as exc:
        return Check(
            "registry",
            "fail",
            str(exc),
            "fix the checks above first" if isinstance(exc, IdentityError) else exc.fix or _NETWORK_FIX,
        )
    assert isinstance(token, client.Token)  # no dry_run: a token, not a DryRun
    if token.expires_at is None:
        return Check("registry", "ok", f"{registry.host} challenged for {challenge.scope}; OLLAMA_API_KEY answers it")
    lifetime = max(token.expires_at - time.time(), 0)
    return Check(
        "registry", "ok", f"{registry.host} challenged for {challenge.scope}; token exchanged, valid for {lifetime:.0f}s"
    )


# --- 7. cache ---------------------------------------------------------------------------------


def check_cache() -> Check:
    import re
    import stat

    cache = TokenCache()
    directory = cache.directory
    if not os.path.lexists(directory):
        return Check("cache", "ok", f"{directory} does not exist yet; it is created on the first token")
    problem = cache.problem()
    if problem is not None:
        if "symlink" in problem:
            fix = f"rm {directory} (the cache must be a real directory of yours; it is recreated)"
        elif "another user" in problem:
            fix = f"set XDG_CACHE_HOME to a directory of yours, or remove {directory}"
        else:
            fix = f"remove {directory}; it is recreated"
        return Check("cache", "warn", f"not used: {problem}", fix)
    info = os.lstat(directory)
    entries = sum(1 for name in os.listdir(directory) if re.fullmatch(r"[0-9a-f]{64}\.json", name))
    return Check("cache", "ok", f"{directory}: yours, mode {stat.S_IMODE(info.st_mode):04o}, {entries} cached token(s)")


# --- 8. platform ------------------------------------------------------------------------------


def check_platform() -> Check:
    """Where this system keeps things, which trust store verifies TLS, and any
    guarantee that cannot hold here (system.limitations), each said plainly."""
    from . import system

    trust = "SSL_CERT_FILE (OpenSSL)" if os.environ.get("SSL_CERT_FILE") else "the system trust store (truststore)"
    detail = f"{system.platform_name()}: cache {system.cache_dir()}, config {system.config_dir()}, TLS trust from {trust}"
    limits = system.limitations()
    if limits:
        return Check(
            "platform",
            "warn",
            f"{detail}; " + "; ".join(limits),
            "nothing to fix: this is what this system allows (see the README's macOS and Windows section)",
        )
    return Check("platform", "ok", detail)

"""Keyless Ed25519 authentication for Ollama, byte for byte as Ollama's own client.

Public API (imported lazily, so that ``import credential_helper`` stays cheap)::

    get_token(challenge, host=..., identity=..., timeout=...)   # scheme 1
    sign_request(method, url, identity=...)                    # scheme 2
    load_identity(path=None)
    parse_www_authenticate(value) -> Challenge
    fetch_challenge(url) -> (Challenge, host)
    TokenCache(directory=None)
    tls_context()                      # the command line's TLS trust, for verify= in httpx clients

Every error is a subclass of :class:`HelperError`; ``exc.exit_code`` is the
status the command line would exit with.
"""


__version__ = "0.1.0"

_EXPORTS = {
    "get_token": "client",
    "sign_request": "client",
    "fetch_challenge": "client",
    "resolve_input": "client",
    "Token": "client",
    "SignedRequest": "client",
    "load_identity": "identity",
    "Identity": "identity",
    "parse_www_authenticate": "protocol",
    "Challenge": "protocol",
    "TokenCache": "cache",
    "tls_context": "transport",
    "HelperError": "errors",
    "ServerRefusedError": "errors",
    "InputError": "errors",
    "RealmRefusedError": "errors",
    "IdentityError": "errors",
    "KeyNotFoundError": "errors",
    "NetworkError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'credential_helper' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # what __getattr__ gives, as the type checker should see it
    from .cache import TokenCache as TokenCache
    from .client import (
        SignedRequest as SignedRequest,
        Token as Token,
        fetch_challenge as fetch_challenge,
        get_token as get_token,
        resolve_input as resolve_input,
        sign_request as sign_request,
    )
    from .errors import (
        HelperError as HelperError,
        IdentityError as IdentityError,
        InputError as InputError,
        KeyNotFoundError as KeyNotFoundError,
        NetworkError as NetworkError,
        RealmRefusedError as RealmRefusedError,
        ServerRefusedError as ServerRefusedError,
    )
    from .identity import Identity as Identity, load_identity as load_identity
    from .protocol import Challenge as Challenge, parse_www_authenticate as parse_www_authenticate


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'credential_helper' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

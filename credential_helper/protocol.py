"""Ollama's two Ed25519 schemes as pure functions: strings in, strings out.

No I/O, no clock, no randomness, no crypto: callers pass ``ts`` and ``nonce`` and
sign the returned ``signed_data`` themselves. That keeps every byte testable
against the reference vectors.

URL handling follows Go's ``net/url`` (Parse, EscapedPath, RequestURI, String,
Values.Encode, QueryEscape), because Ollama builds and signs its URLs with it;
Python's ``urllib.parse`` normalises differently and would sign other bytes.
"""

from __future__ import annotations

from .errors import InputError
from .sanitize import quoted
from .urls import (  # noqa: F401  (re-exported: callers name them protocol.URL, protocol.parse_url, and so on)
    URL,
    _check_host,
    check_text,
    encode_query,
    parse_query,
    parse_url,
    query_escape,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing on the hit path
if TYPE_CHECKING:
    from typing import TypeGuard

# server/auth.go signs "GET,<url>,<digest>" where <digest> is the standard base64 of
# the lower-case hex SHA-256 of the empty request body. A literal, so that the
# cache-hit path need not import hashlib; tests derive it independently.
EMPTY_BODY_DIGEST = "ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="


# --- Text a caller or server hands us ----------------------------------------------


def is_header_token(token: object) -> TypeGuard[str]:
    """A credential that can go into ``Authorization: Bearer <token>`` as is:
    non-empty, visible ASCII only (RFC 9110 field-value, no space or control)."""
    return isinstance(token, str) and bool(token) and all(0x21 <= ord(ch) <= 0x7E for ch in token)


# --- Challenges ------------------------------------------------------------------


class Challenge:
    """A Bearer challenge: where to get a token and for what."""

    __slots__ = ("realm", "service", "scope")

    def __init__(self, realm: str, service: str = "", scope: str = "") -> None:
        self.realm = realm
        self.service = service
        self.scope = scope

    def __repr__(self) -> str:
        return f"Challenge(realm={self.realm!r}, service={self.service!r}, scope={self.scope!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Challenge) and (self.realm, self.service, self.scope) == (
            other.realm,
            other.service,
            other.scope,
        )

    @property
    def scopes(self) -> list[str]:
        # server/auth.go: strings.Split(scope, " ") -- an empty scope gives [""].
        return self.scope.split(" ")


def bearer(token: str) -> str:
    """The ``Authorization`` value for a token (RFC 6750 section 2.1)."""
    return f"Bearer {token}"


def bearer_credential(value: str) -> str | None:
    """The credential after ``Bearer`` in an ``Authorization`` value, else None.

    The scheme is case-insensitive (RFC 9110 section 11.1) and separated from
    the credential by spaces; surrounding white space is not part of either.
    """
    text = value.strip(" \t")
    if text[:7].lower() != "bearer ":
        return None
    return text[7:].strip(" \t")


def is_bearer_challenge(value: str) -> bool:
    """True for a ``WWW-Authenticate`` value whose (first) scheme is Bearer."""
    return bearer_credential(value) is not None


def parse_www_authenticate(value: str) -> Challenge:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (RFC 7235 auth-params).

    A leading ``WWW-Authenticate:`` is accepted. Unbalanced quotes, a scheme
    other than Bearer, duplicate parameters or a missing realm are errors.
    """
    check_text(value.strip(), "the challenge", allow_tab=True)
    text = value.strip()
    if text[:17].lower() == "www-authenticate:":
        text = text[17:].strip()
    scheme, _, params_text = text.partition(" ")
    if scheme.lower() != "bearer":
        raise InputError(f"expected a Bearer challenge, got scheme {quoted(scheme, 20)}")
    params = _parse_auth_params(params_text)
    if "realm" not in params or not params["realm"]:
        raise InputError("the Bearer challenge has no realm")
    return Challenge(params["realm"], params.get("service", ""), params.get("scope", ""))


def _parse_auth_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t,":
            i += 1
        if i >= n:
            return params
        start = i
        while i < n and text[i] not in '= \t,"':
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in " \t":
            i += 1
        if not name or i >= n or text[i] != "=":
            raise InputError(f"malformed challenge parameter near {quoted(text[start:], 30)}")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise InputError("the challenge has an unbalanced quote")
                ch = text[i]
                if ch == "\\" and i + 1 < n:
                    chars.append(text[i + 1])
                    i += 2
                    continue
                if ch == '"':
                    i += 1
                    break
                chars.append(ch)
                i += 1
            param = "".join(chars)
        else:
            start = i
            while i < n and text[i] not in ", \t":
                i += 1
            param = text[start:i]
            if '"' in param:
                raise InputError("the challenge has an unbalanced quote")
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] != ",":
            raise InputError(f"malformed challenge near {quoted(text[i:], 30)}")
        if name in params:
            raise InputError(f"the challenge repeats the parameter {name!r}")
        params[name] = param


# --- Caller-supplied values ------------------------------------------------------


def check_host_value(host: str) -> str:
    """Validate a caller-supplied host[:port] (--host or JSON "host")."""
    if not isinstance(host, str):
        raise InputError('"host" must be a string')
    _check_host(host, "host")
    return host


# --- Scheme 1: the token exchange -----------------------------------------------


class TokenRequest:
    """The signed GET that exchanges a challenge for a token."""

    __slots__ = ("url", "host_header", "signed_data")

    def __init__(self, url: URL, host_header: str, signed_data: str) -> None:
        self.url = url
        self.host_header = host_header
        self.signed_data = signed_data

    @property
    def token_url(self) -> str:
        return str(self.url)


def build_token_request(challenge: Challenge, realm: URL, ts: int, nonce: str) -> TokenRequest:
    """server/auth.go (registryChallenge.URL, getAuthorizationToken).

    The realm's own query is kept, then service, one scope per space-separated
    scope, ts and nonce are added, and the whole query is re-encoded.
    """
    values = parse_query(realm.raw_query)
    values.setdefault("service", []).append(challenge.service)
    for scope in challenge.scopes:
        values.setdefault("scope", []).append(scope)
    values.setdefault("ts", []).append(str(ts))
    values.setdefault("nonce", []).append(nonce)
    url = realm.with_query(encode_query(values))
    signed = f"GET,{url},{EMPTY_BODY_DIGEST}"
    # Go's client sends the URL's authority as written, explicit port included.
    return TokenRequest(url, realm.host, signed)


def make_nonce(random_bytes: bytes) -> str:
    """auth.NewNonce: base64url without padding of the random bytes."""
    import base64

    return base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode()


# --- Scheme 2: directly signed requests --------------------------------------------


class SignedRequestPlan:
    """A scheme-2 request: the URL to send and the string to sign."""

    __slots__ = ("method", "url", "signed_data", "ts")

    def __init__(self, method: str, url: URL, signed_data: str, ts: int) -> None:
        self.method = method
        self.url = url
        self.signed_data = signed_data
        self.ts = ts


def check_method(method: str) -> str:
    """An HTTP method of letters, upper-cased (what goes before the comma)."""
    if not method or not method.isascii() or not method.isalpha():
        raise InputError(f"the method {quoted(method, 20)} is not an HTTP method")
    return method.upper()


def build_signed_request(method: str, url: URL, ts: int) -> SignedRequestPlan:
    """api/client.go, server/cloud_proxy.go: set ts, re-encode, sign METHOD,target."""
    method = check_method(method)
    values = parse_query(url.raw_query)
    values["ts"] = [str(ts)]  # Values.Set replaces any ts already present
    signed_url = url.with_query(encode_query(values))
    return SignedRequestPlan(method, signed_url, f"{method},{signed_url.request_target}", ts)


# --- What `get` and `erase` read on standard input ------------------------------


class ChallengeInput:
    """One of the three input forms: a challenge (with maybe host and nonce), or a URL."""

    __slots__ = ("challenge", "host", "nonce", "url")

    def __init__(
        self,
        challenge: Challenge | None = None,
        host: str | None = None,
        nonce: str | None = None,
        url: URL | None = None,
    ) -> None:
        self.challenge = challenge
        self.host = host
        self.nonce = nonce
        self.url = url


def parse_challenge_input(text: str) -> ChallengeInput:
    """Recognise a JSON object, a URL, or a WWW-Authenticate value."""
    stripped = text.strip()
    if not stripped:
        raise InputError("no challenge on standard input: pass a JSON object, a 'Bearer realm=...' header value, or a URL")
    if stripped.startswith("{"):
        return _parse_json_input(stripped)
    if stripped[:8].lower().startswith(("http://", "https://")):
        if any(ch.isspace() for ch in stripped):
            raise InputError("the URL on standard input contains white space")
        return ChallengeInput(url=parse_url(stripped, what="URL"))
    if "\n" in stripped:
        raise InputError("the challenge must be a single line")
    return ChallengeInput(challenge=parse_www_authenticate(stripped))


def _parse_json_input(text: str) -> ChallengeInput:
    import json

    try:
        data = json.loads(text)
    except RecursionError:
        raise InputError("the JSON on standard input is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"standard input is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except ValueError:  # not a JSONDecodeError: an integer past sys.get_int_max_str_digits() (3.11+)
        raise InputError("standard input holds a number too long to read") from None
    if not isinstance(data, dict):
        raise InputError("the JSON on standard input must be an object")
    fields = {}
    for name, required in (("realm", True), ("service", False), ("scope", False), ("nonce", False), ("host", False)):
        value = data.get(name)
        if value is None:
            if required:
                raise InputError(f'the JSON challenge has no "{name}"')
            continue
        if not isinstance(value, str):
            raise InputError(f'"{name}" must be a string, not {type(value).__name__}')
        check_text(value, f'"{name}"')
        fields[name] = value
    if not fields["realm"]:
        raise InputError('"realm" is empty')
    if "nonce" in fields and not fields["nonce"]:
        raise InputError('"nonce" is empty; omit it to have one generated')
    host = check_host_value(fields["host"]) if "host" in fields else None
    challenge = Challenge(fields["realm"], fields.get("service", ""), fields.get("scope", ""))
    return ChallengeInput(challenge=challenge, host=host, nonce=fields.get("nonce"))

"""Ollama's two Ed25519 schemes as pure functions: strings in, strings out.

No I/O, no clock, no randomness, no crypto: callers pass ``ts`` and ``nonce`` and
sign the returned ``signed_data`` themselves. That keeps every byte testable
against the reference vectors.

URL handling follows Go's ``net/url`` (Parse, EscapedPath, RequestURI, String,
Values.Encode, QueryEscape), because Ollama builds and signs its URLs with it;
Python's ``urllib.parse`` normalises differently and would sign other bytes.
"""


from .errors import InputError

# server/auth.go signs "GET,<url>,<digest>" where <digest> is the standard base64 of
# the lower-case hex SHA-256 of the empty request body. A literal, so that the
# cache-hit path need not import hashlib; tests derive it independently.
EMPTY_BODY_DIGEST = (
    "ZTNiMGM0NDI5OGZjMWMxNDlhZmJmNGM4OTk2ZmI5MjQyN2FlNDFlNDY0OWI5MzRjYTQ5NTk5MWI3ODUyYjg1NQ=="
)

_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_UNRESERVED = _ALNUM | frozenset(b"-_.~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_HOST_CHARS = _UNRESERVED
_SCHEME_CHARS = _ALNUM | frozenset(b"+-.")


# --- Text a caller or server hands us ----------------------------------------------


def check_text(value: str, what: str, *, allow_tab: bool = False) -> str:
    """Refuse control characters (C0, DEL, C1) and lone surrogates in ``value``.

    A control character could split a header or forge a log line; a lone
    surrogate (JSON's "\\ud800") has no UTF-8 form to sign or send.
    """
    if value.isprintable():  # no Cc or Cs character: the common case, kept fast
        return value
    for ch in value:
        code = ord(ch)
        if (code < 0x20 and not (allow_tab and ch == "\t")) or 0x7F <= code <= 0x9F:
            raise InputError(f"{what} contains a control character")
        if 0xD800 <= code <= 0xDFFF:
            raise InputError(f"{what} contains a lone surrogate (not valid Unicode)")
    return value


def is_header_token(token: object) -> bool:
    """A credential that can go into ``Authorization: Bearer <token>`` as is:
    non-empty, visible ASCII only (RFC 9110 field-value, no space or control)."""
    return isinstance(token, str) and bool(token) and all(0x21 <= ord(ch) <= 0x7E for ch in token)


# --- Go net/url, the parts Ollama's signing depends on -------------------------


_UNRESERVED_TEXT = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"


def query_escape(text: str) -> str:
    """Go's url.QueryEscape: space as '+', all but A-Z a-z 0-9 - _ . ~ as %XX."""
    if not text.strip(_UNRESERVED_TEXT):
        return text  # only unreserved characters: nothing to escape, kept fast
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append("%%%02X" % byte)
    return "".join(out)


def _path_should_escape(byte: int) -> bool:
    # Go's shouldEscape(c, encodePath): only '?' of the reserved set is escaped.
    if byte in _UNRESERVED:
        return False
    if byte in b"$&+,/:;=@":
        return False
    return True


def _path_escape(text: str) -> str:
    out = []
    for byte in text.encode("utf-8", "surrogateescape"):
        out.append("%%%02X" % byte if _path_should_escape(byte) else chr(byte))
    return "".join(out)


def _unescape(text: str, *, plus_is_space: bool) -> str | None:
    """Go's unescape for path (plus kept) or query component (plus is space).

    Returns None where Go returns an error (a '%' not followed by two hex digits).
    """
    if "%" not in text and not (plus_is_space and "+" in text):
        return text  # nothing to decode: the common case, kept fast
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # '%'
            hi, lo = raw[i + 1 : i + 2], raw[i + 2 : i + 3]
            if not hi or not lo or hi[0] not in _HEX or lo[0] not in _HEX:
                return None
            out.append(int((hi + lo).decode(), 16))
            i += 3
            continue
        out.append(0x20 if (byte == 0x2B and plus_is_space) else byte)
        i += 1
    return out.decode("utf-8", "surrogateescape")


def _valid_encoded_path(text: str) -> bool:
    # Go's validEncoded(s, encodePath): sub-delims, ':', '@', '[', ']' and '%' are
    # allowed as written; anything shouldEscape would escape is not.
    for byte in text.encode("utf-8", "surrogateescape"):
        if byte in b"!$&'()*+,;=:@[]%":
            continue
        if _path_should_escape(byte):
            return False
    return True


def parse_query(raw_query: str) -> dict[str, list[str]]:
    """Go's url.ParseQuery, as URL.Query() uses it: bad pairs are dropped."""
    values: dict[str, list[str]] = {}
    for pair in raw_query.split("&"):
        if ";" in pair or not pair:
            continue  # Go 1.17+: a semicolon separator makes the pair invalid
        key, _, value = pair.partition("=")
        key_text = _unescape(key, plus_is_space=True)
        value_text = _unescape(value, plus_is_space=True)
        if key_text is None or value_text is None:
            continue
        values.setdefault(key_text, []).append(value_text)
    return values


def encode_query(values: dict[str, list[str]]) -> str:
    """Go's url.Values.Encode: keys sorted by bytes, values in insertion order."""
    parts = []
    for key in sorted(values, key=lambda k: k.encode("utf-8", "surrogateescape")):
        escaped_key = query_escape(key)
        for value in values[key]:
            parts.append(escaped_key + "=" + query_escape(value))
    return "&".join(parts)


class URL:
    """An absolute http(s) URL split the way Go's url.Parse splits it."""

    __slots__ = ("scheme", "host", "path", "raw_query")

    def __init__(self, scheme: str, host: str, path: str, raw_query: str) -> None:
        self.scheme = scheme  # lower-cased, as Go does
        self.host = host  # host[:port] exactly as written
        self.path = path  # the path as written (may be escaped)
        self.raw_query = raw_query

    def __repr__(self) -> str:
        return f"URL({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, URL) and str(self) == str(other)

    @property
    def hostname(self) -> str:
        host = self.host
        if host.startswith("["):
            return host[1 : host.index("]")]
        return host.rsplit(":", 1)[0] if ":" in host else host

    @property
    def port(self) -> int:
        host = self.host
        tail = host[host.index("]") + 1 :] if host.startswith("[") else host
        if ":" in tail:
            return int(tail.rsplit(":", 1)[1])
        return 443 if self.scheme == "https" else 80

    @property
    def escaped_path(self) -> str:
        """Go's URL.EscapedPath: the path as written when it is validly escaped."""
        if _valid_encoded_path(self.path):
            return self.path
        decoded = _unescape(self.path, plus_is_space=False)
        return _path_escape(decoded if decoded is not None else self.path)

    @property
    def request_target(self) -> str:
        """Go's URL.RequestURI: what goes on the request line."""
        target = self.escaped_path or "/"
        return target + "?" + self.raw_query if self.raw_query else target

    def with_query(self, raw_query: str) -> "URL":
        return URL(self.scheme, self.host, self.path, raw_query)

    def __str__(self) -> str:
        """Go's URL.String for the URLs this module accepts."""
        path = self.escaped_path
        if path and not path.startswith("/"):
            path = "/" + path
        text = f"{self.scheme}://{self.host}{path}"
        return text + "?" + self.raw_query if self.raw_query else text


def parse_url(text: str, *, what: str = "URL") -> URL:
    """Parse an absolute http(s) URL, refusing what a credential must not go to.

    Refused: control characters (Go refuses them too), other schemes, user info
    (a password in a URL), a fragment (Go would sign it but never send it), an
    invalid host or port, and '%' escapes that Go's parser rejects.
    """
    if not isinstance(text, str) or not text:
        raise InputError(f"the {what} is empty")
    check_text(text, f"the {what}")
    scheme, sep, rest = text.partition(":")
    if (
        not sep
        or not scheme
        or not scheme[0].isascii()
        or not scheme[0].isalpha()
        or any(ord(ch) > 0x7F or ord(ch) not in _SCHEME_CHARS for ch in scheme)
    ):
        raise InputError(f"the {what} {_quote(text)} is not an absolute URL")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"the {what} must be an http or https URL, not {scheme}:")
    if not rest.startswith("//"):
        raise InputError(f"the {what} {_quote(text)} has no host")
    if "#" in rest:
        raise InputError(f"the {what} must not contain a #fragment")
    rest = rest[2:]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:end], rest[end:]
    path, _, raw_query = rest.partition("?")
    if "@" in authority:
        raise InputError(f"the {what} must not contain user info (user@host)")
    _check_host(authority, what)
    if _unescape(path, plus_is_space=False) is None:
        raise InputError(f"the {what} has an invalid %-escape in its path")
    return URL(scheme, authority, path, raw_query)


def _check_host(authority: str, what: str) -> None:
    if not authority:
        raise InputError(f"the {what} has no host")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise InputError(f"the {what} has an unclosed '[' in its host")
        literal, tail = authority[1:close], authority[close + 1 :]
        if not literal or any(ch not in "0123456789abcdefABCDEF:." for ch in literal):
            raise InputError(f"the {what} has an invalid IPv6 host")
        port = tail[1:] if tail.startswith(":") else (None if not tail else "")
        if tail and not tail.startswith(":"):
            raise InputError(f"the {what} has an invalid host")
    else:
        name, colon, port_text = authority.partition(":")
        port = port_text if colon else None
        if not name or any(ord(ch) > 0x7F or ord(ch) not in _HOST_CHARS for ch in name):
            raise InputError(f"the {what} has an invalid host {_quote(authority)}")
    if port is not None:
        if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"the {what} has an invalid port {_quote(authority)}")


def _quote(text: str, limit: int = 80) -> str:
    """A short, printable rendering of untrusted input for an error message."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


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
        raise InputError(
            f"expected a Bearer challenge, got scheme {_quote(scheme, 20)}"
        )
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
        while i < n and text[i] not in "= \t,\"":
            i += 1
        name = text[start:i].lower()
        while i < n and text[i] in " \t":
            i += 1
        if not name or i >= n or text[i] != "=":
            raise InputError(f"malformed challenge parameter near {_quote(text[start:], 30)}")
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
            raise InputError(f"malformed challenge near {_quote(text[i:], 30)}")
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
        raise InputError(f"the method {_quote(method, 20)} is not an HTTP method")
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
        raise InputError(
            "no challenge on standard input: pass a JSON object, a "
            "'Bearer realm=...' header value, or a URL"
        )
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
    except ValueError as exc:
        raise InputError(f"standard input is not valid JSON ({exc.msg} at position {exc.pos})") from None
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

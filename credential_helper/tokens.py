"""The token exchange (scheme 1, Ollama's server/auth.go), free of I/O.

:func:`exchange` is the one flow every caller drives: the Python API and the CLI
(``client.get_token``, which sends with ``transport.send``) and the HTTP-library
adapters (``integrations/_core.py``, which send with their own library). It is a
generator in the manner of httpx's ``auth_flow``: it yields each signed token
request as a :class:`Call`, is sent back the :class:`~credential_helper.response.Response`,
and returns the :class:`Exchanged` token. When the driver's send fails, it
throws the error into the flow, which re-raises it with what the flow knows (a
clock correction already tried). A ``401`` whose ``Date`` shows the local clock
off by more than CLOCK_SKEW_TOLERANCE is retried once with a corrected ``ts``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from typing import NamedTuple

from . import protocol
from .cache import lifetime_from_response
from .errors import NetworkError, ServerRefusedError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at run time
if TYPE_CHECKING:
    from .identity import Identity
    from .response import Response

# Ollama servers explain refusals in the body; show this much of it.
BODY_EXCERPT_CHARS = 200
# A Date header further off than this makes a 401 worth one retry with corrected ts.
CLOCK_SKEW_TOLERANCE = 30.0
# A Date outside these years is nonsense, not a clock to correct to.
PLAUSIBLE_DATE_RANGE = (1577836800.0, 7258118400.0)  # 2020-01-01 .. 2200-01-01 UTC


class Exchanged(NamedTuple):
    token: str
    expires_at: float
    lifetime: float
    note: str  # "" or why a corrected timestamp was used (for one warning line)


class Call(NamedTuple):
    """One signed token request to send as built: ``GET request.url`` with
    ``Host: request.host_header`` and ``Authorization: authorization``."""

    request: protocol.TokenRequest
    authorization: str


def exchange(
    challenge: protocol.Challenge, realm: protocol.URL, identity: Identity, nonce: str | None = None
) -> Generator[Call, Response | None, Exchanged]:
    """Yield each :class:`Call`; send back its Response, or throw the send's error in."""
    clock_offset, note = 0.0, ""
    for attempt in (1, 2):
        call = prepare(challenge, realm, identity, clock_offset, nonce)
        try:
            response = yield call
        except (NetworkError, ServerRefusedError) as exc:
            raise with_note(exc, note) from None
        assert response is not None  # None only starts the flow (the first send)
        # A fixed nonce (a caller's replay of a challenge) is never re-signed with another ts.
        skew = skew_to_correct(response) if attempt == 1 and nonce is None else None
        if skew is not None:
            clock_offset, note = skew, skew_note(skew, realm.host)
            continue
        try:
            token, expires_at, lifetime = read_token_response(response, realm.host, call.authorization)
        except (NetworkError, ServerRefusedError) as exc:
            raise with_note(exc, note) from None
        return Exchanged(token, expires_at, lifetime, note)
    raise AssertionError("unreachable")  # pragma: no cover


def prepare(
    challenge: protocol.Challenge, realm: protocol.URL, identity: Identity, clock_offset: float = 0.0, nonce: str | None = None
) -> Call:
    """The signed token request (server/auth.go)."""
    ts = int(time.time() + clock_offset)
    request = protocol.build_token_request(challenge, realm, ts, nonce or new_nonce())
    return Call(request, identity.sign(request.signed_data))


def new_nonce() -> str:
    return protocol.make_nonce(os.urandom(16))


def skew_to_correct(response: Response) -> float | None:
    """A 401 whose plausible Date is more than the tolerance off: the offset to retry with."""
    if response.status != 401:
        return None
    skew = clock_skew(response.header("date"), time.time())
    return skew if skew is not None and abs(skew) > CLOCK_SKEW_TOLERANCE else None


def skew_note(skew: float, host: str) -> str:
    return (
        f" (retried once with a timestamp corrected for the local clock being "
        f"{abs(skew):.0f}s {'behind' if skew > 0 else 'ahead of'} {host}: sync your clock)"
    )


def with_note(exc: NetworkError | ServerRefusedError, note: str) -> NetworkError | ServerRefusedError:
    """The same error with ``note`` appended: one stderr line, never two."""
    if not note:
        return exc
    return type(exc)(f"{exc}{note}", getattr(exc, "status", None), fix=exc.fix)


def clock_skew(date_header: str | None, now: float) -> float | None:
    """Server clock minus local clock from a Date header (RFC 9110 IMF-fixdate);
    None when absent, unparsable or outside a plausible range of years."""
    if not date_header:
        return None
    from email.utils import parsedate_to_datetime

    try:
        server = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    if not PLAUSIBLE_DATE_RANGE[0] <= server <= PLAUSIBLE_DATE_RANGE[1]:
        return None
    return server - now


def raise_for_status(response: Response, where: str, what: str, hint: str = "") -> None:
    """5xx and other non-2xx answers: NetworkError (exit 4); 4xx: ServerRefusedError (exit 1).

    The message quotes the status, the reason phrase and a short excerpt of the
    body (Ollama's servers explain refusals there), all through the one sanitiser.
    """
    status = response.status
    if 200 <= status < 300:
        return
    from .sanitize import server_text

    reason = server_text(response.reason, response.secrets, limit=60)
    excerpt = server_text(response.body, response.secrets, limit=BODY_EXCERPT_CHARS)
    excerpt = f": {excerpt}" if excerpt else ""
    if 400 <= status < 500:
        raise ServerRefusedError(f"{where} refused {what}: {status} {reason}{excerpt}{hint}", status)
    if status >= 500:
        raise NetworkError(f"{where} failed with {status} {reason}{excerpt}", status)
    raise NetworkError(f"{where} answered {status} {reason} to {what}", status)


def read_token_response(response: Response, where: str, authorization: str | None = None) -> tuple[str, float, float]:
    """(token, expires_at, lifetime) from a token endpoint's answer; the
    Authorization that was sent is redacted from any message about it."""
    if authorization is not None:
        response.secrets = (*response.secrets, authorization)
    status = response.status
    raise_for_status(response, where, "the token request", _refusal_hint(status))
    body = response.json_object(where)
    token = body.get("token")
    if not isinstance(token, str):
        raise NetworkError(f'{where} answered {status} without a string "token"')
    if not protocol.is_header_token(token):
        # It would break the caller's Authorization header (or inject into it).
        raise NetworkError(f"{where} answered {status} with an empty or unusable token (not visible ASCII)")
    expires_at, lifetime = lifetime_from_response(body, token, time.time())
    return token, expires_at, lifetime


def _refusal_hint(status: int) -> str:
    if status == 401:
        return " (is this key linked to your ollama.com account? see 'ollama-credential-helper key --connect-url')"
    return ""

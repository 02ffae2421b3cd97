"""The auth flow for httpx and httpx2, which share their ``Auth`` protocol.

``build(module)`` returns an ``OllamaAuth`` class for that module. Its flow
yields the token request to the client like the libraries' own digest auth
does, so the exchange travels through the caller's client, transport, proxies
and timeouts, and in an ``AsyncClient`` never blocks the event loop.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncGenerator, Generator, Iterable
from typing import Any

from ..cache import TokenCache
from ..errors import NetworkError
from ..response import Response
from ._core import MAX_TOKEN_RESPONSE_BYTES, KeylessCore, TokenCall, bearer_retries, oversized

# httpx or httpx2, and their objects: the same flow serves both, chosen at run time,
# so their types are Any here (each library checks its own).
Module = Any


def build(httpx: Module) -> type:
    class OllamaAuth(httpx.Auth):
        __doc__ = f"""Keyless Ollama auth for ``{httpx.__name__}.Client`` and ``{httpx.__name__}.AsyncClient``.

        Requests to the API host (``api_base``: default ``$OLLAMA_CLOUD_BASE_URL``
        under Ollama's rules, else https://ollama.com; more with ``api_hosts=``)
        are signed (scheme 2), overwriting any ``Authorization``. Any other
        request goes out unchanged; a ``401`` with a Bearer challenge gets a token
        (scheme 1, the CLI's rules and cache) and one retry.
        """

        def __init__(
            self,
            *,
            identity: str | os.PathLike[str] | None = None,
            api_base: str | None = None,
            api_hosts: Iterable[str] = (),
            timeout: float = 10.0,
            cache: TokenCache | bool | None = True,
        ) -> None:
            self._core = KeylessCore(identity=identity, api_base=api_base, api_hosts=api_hosts, timeout=timeout, cache=cache)
            self._core.environment_proxy = functools.partial(_environment_proxy, httpx)

        def __repr__(self) -> str:
            return f"OllamaAuth({self._core.describe()})"

        def _sign_if_api(self, request: Any) -> bool:
            url = request.url
            if not self._core.is_api(url.scheme, url.host, url.port):
                return False
            _, target, authorization = self._core.sign(request.method, str(url))
            if target is not None:
                # The exact bytes that were signed go on the request line.
                request.url = url.copy_with(raw_path=target.encode("ascii"))
            request.headers["Authorization"] = authorization
            return True

        def _token_request(self, call: TokenCall) -> Any:
            request = httpx.Request(
                "GET",
                call.url,
                headers={"Authorization": call.authorization, "Host": call.host_header, "Accept": "application/json"},
                extensions={"timeout": httpx.Timeout(self._core.timeout).as_dict()},
            )
            request.url = request.url.copy_with(raw_path=call.target.encode("ascii"))
            return request

        @staticmethod
        def _answer(sent: Any, response: Any, body: bytes) -> Response:
            if response.request.url != sent.url:  # a client that follows redirects followed one
                raise NetworkError(
                    f"{sent.url.netloc.decode()} answered the token request with a "
                    "redirect; redirects are never followed with credentials"
                )
            # httpx reads each response again before the next request; hand it the body.
            response._content = body
            headers: dict[str, list[str]] = {}
            for name, value in response.headers.multi_items():
                headers.setdefault(name.lower(), []).append(value)
            return Response(response.status_code, response.reason_phrase or "", headers, body)

        def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
            flow, closing = self._sync_flow(request), False
            try:
                sent = next(flow)
                while True:
                    sent = flow.send((yield sent))
            except StopIteration:
                return
            except GeneratorExit:
                closing = True
            if closing:  # out of the except block: sys.exc_info() is the client's error again (see _raise_if_tls)
                flow.close()
                _raise_if_tls(request, httpx.__name__)

        async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
            flow, closing = self._async_flow(request), False
            try:
                sent = await flow.__anext__()
                while True:
                    sent = await flow.asend((yield sent))
            except StopAsyncIteration:
                return
            except GeneratorExit:
                closing = True
            if closing:
                await flow.aclose()
                _raise_if_tls(request, httpx.__name__)

        def _sync_flow(self, request: Any) -> Generator[Any, Any, None]:
            if self._sign_if_api(request):
                yield request
                return
            request.read()  # a retry resends the body
            response = yield request
            if _origin(response.request.url) != _origin(request.url):
                return  # a redirect led elsewhere: never authenticate there
            flow = bearer_retries(
                self._core, str(request.url), response.status_code, response.headers.get_list("www-authenticate")
            )
            try:
                result = None
                while True:
                    try:
                        kind, argument = flow.send(result)
                    except StopIteration:
                        return
                    if kind == "wait":
                        self._core.wait(argument)
                        result = None
                    elif kind == "exchange":
                        sent = self._token_request(argument)
                        answer = yield sent
                        result = self._answer(sent, answer, _read_sync(answer))
                    else:  # retry
                        request.headers["Authorization"] = argument
                        response = yield request
                        result = response.status_code
            finally:
                flow.close()  # an exception from the library: release the exchange's claim now

        async def _async_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
            if self._sign_if_api(request):
                yield request
                return
            await request.aread()  # a retry resends the body
            response = yield request
            if _origin(response.request.url) != _origin(request.url):
                return  # a redirect led elsewhere: never authenticate there
            flow = bearer_retries(
                self._core, str(request.url), response.status_code, response.headers.get_list("www-authenticate")
            )
            try:
                result = None
                while True:
                    try:
                        kind, argument = flow.send(result)
                    except StopIteration:
                        return
                    if kind == "wait":
                        await self._core.wait_async(argument)
                        result = None
                    elif kind == "exchange":
                        sent = self._token_request(argument)
                        answer = yield sent
                        result = self._answer(sent, answer, await _read_async(answer))
                    else:  # retry
                        request.headers["Authorization"] = argument
                        response = yield request
                        result = response.status_code
            finally:
                flow.close()  # an exception from the library: release the exchange's claim now

    OllamaAuth.__module__ = f"credential_helper.integrations.{httpx.__name__}"
    OllamaAuth.__qualname__ = "OllamaAuth"
    return OllamaAuth


# What each library trusts by default (httpx 0.28 _config.create_ssl_context: certifi; httpcore2 _ssl.default_ssl_context:
# the system's store), and so the fix for a certificate it refused.
TLS_HINTS = {
    "httpx": "httpx clients trust certifi's bundle unless given verify=; "
    "verify=credential_helper.tls_context() trusts this system's store, as the command line does",
    "httpx2": "httpx2 clients trust this system's store, as the command line does: install the server's CA there "
    "(or point SSL_CERT_FILE at it)",
}


def _raise_if_tls(request: Any, library: str) -> None:
    """Say TLS when a TLS failure ended the request.

    httpx and httpx2 close the auth flow in a ``finally`` (``_send_handling_auth``)
    while the transport's error propagates: once the flow has left its ``except
    GeneratorExit`` block, ``sys.exc_info()`` is that error (the exception state
    of the frame that closes it; so on Python 3.10 to 3.13, sync and async), and
    an exception raised here replaces it. ollama-python turns every
    httpx.ConnectError into "Failed to connect to Ollama ... download" (its
    ``_client.py`` ``_request_raw``), which hid a certificate the client does not trust.
    """
    import sys

    cause = sys.exc_info()[1]
    if cause is None or isinstance(cause, (GeneratorExit, NetworkError)):
        return
    from ..sanitize import server_text
    from ..transport import tls_failure

    message = tls_failure(cause, request.url.netloc.decode("ascii", "replace"))
    if message is not None:
        raise NetworkError(f"{server_text(message, limit=300)}; {TLS_HINTS.get(library, TLS_HINTS['httpx'])}") from cause


def _environment_proxy(httpx: Module, url_text: str) -> str | None:
    """The proxy a default client (trust_env=True) takes from the environment for
    ``url_text``, found with the library's own rules (Client._transport_for_url)."""
    url = httpx.URL(url_text)
    utils = httpx._utils  # pinned versions; the same module in httpx and httpx2
    mounts = sorted(
        ((utils.URLPattern(key), value) for key, value in utils.get_environment_proxies().items()), key=lambda item: item[0]
    )
    for pattern, proxy in mounts:
        if pattern.matches(url):
            return proxy
    return None


def _origin(url: Any) -> tuple:
    return url.scheme, url.host, url.port


def _declared_too_large(response: Any) -> bool:
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) > MAX_TOKEN_RESPONSE_BYTES


def _read_sync(response: Any) -> bytes:
    where = response.request.url.netloc.decode()
    if _declared_too_large(response):
        response.close()
        raise oversized(where)
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_TOKEN_RESPONSE_BYTES:
            response.close()
            raise oversized(where)
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_async(response: Any) -> bytes:
    where = response.request.url.netloc.decode()
    if _declared_too_large(response):
        await response.aclose()
        raise oversized(where)
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_TOKEN_RESPONSE_BYTES:
            await response.aclose()
            raise oversized(where)
        chunks.append(chunk)
    return b"".join(chunks)

"""``OllamaAuth`` for ``requests`` (from a clone, with its extra: ``pip install '/path/to/clone[requests]'``).

    import requests
    from credential_helper.integrations.requests import OllamaAuth

    session = requests.Session()
    session.auth = OllamaAuth()

Requests to the API host are signed (scheme 2) as they are prepared. For any
other host a response hook answers a ``401`` Bearer challenge, the way
``requests``' own digest auth does: the token request and the retry go out
through the same connection adapter, with the caller's TLS, proxy and
certificate settings. A body given as a file, a pipe or a generator is read
into memory first, so that the retry sends the same bytes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from ..cache import TokenCache
from ..errors import InputError, NetworkError
from ..response import Response
from ._core import MAX_TOKEN_RESPONSE_BYTES, Flow, KeylessCore, TokenCall, bearer_retries, oversized


class OllamaAuth(AuthBase):
    """Keyless Ollama auth for ``requests``; see the module documentation."""

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
        self._core.environment_proxy = _environment_proxy

    def __repr__(self) -> str:
        return f"OllamaAuth({self._core.describe()})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        # Prepared: prepare_url and prepare_method ran before prepare_auth (requests/models.py).
        assert request.url is not None and request.method is not None
        parts = urlsplit(request.url)
        if self._core.is_api(parts.scheme, parts.hostname or "", parts.port):
            url, _, authorization = self._core.sign(request.method, request.url)
            request.url = url  # set after preparation: sent exactly as signed
            request.headers["Authorization"] = authorization
            return request
        _buffer_body(request)
        request.register_hook("response", functools.partial(self._on_response, request.url))
        return request

    def _on_response(self, original_url: str, response: requests.Response, **kwargs: Any) -> requests.Response:
        if _origin(response.request.url or "") != _origin(original_url):
            return response  # a redirect led elsewhere: never authenticate there
        flow = bearer_retries(self._core, original_url, response.status_code, _header_values(response, "www-authenticate"))
        try:
            return self._drive(flow, response, kwargs)
        finally:
            flow.close()  # an exception from requests: release the exchange's claim now

    def _drive(self, flow: Flow, response: requests.Response, kwargs: dict) -> requests.Response:
        result: Response | int | None = None
        while True:
            try:
                kind, argument = flow.send(result)
            except StopIteration:
                return response
            if kind == "wait":
                self._core.wait(argument)
                result = None
            elif kind == "exchange":
                result = self._exchange(response, argument, kwargs)
            else:  # retry with the same connection adapter, without this hook
                response.content  # noqa: B018 - release the connection, as digest auth does
                response.close()
                retry = response.request.copy()
                retry.hooks = {"response": [h for h in retry.hooks["response"] if getattr(h, "func", None) != self._on_response]}
                retry.headers["Authorization"] = argument
                new = response.connection.send(retry, **kwargs)
                new.history.append(response)
                new.request = retry
                response = new
                result = response.status_code

    def _exchange(self, response: requests.Response, call: TokenCall, kwargs: dict) -> Response:
        token_request = requests.Request("GET", call.url, headers={"Accept": "application/json"}).prepare()
        token_request.url = call.url  # exactly as signed
        token_request.headers["Host"] = call.host_header
        token_request.headers["Authorization"] = call.authorization
        options = {k: v for k, v in kwargs.items() if k in ("verify", "cert", "proxies")}
        answer = response.connection.send(token_request, stream=True, timeout=self._core.timeout, **options)
        try:
            where = urlsplit(call.url).netloc
            length = answer.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_TOKEN_RESPONSE_BYTES:
                raise oversized(where)
            body = answer.raw.read(MAX_TOKEN_RESPONSE_BYTES + 1, decode_content=True)
            if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                raise oversized(where)
        except NetworkError:
            raise
        except requests.RequestException as exc:
            raise NetworkError(
                f"reading the token response from {urlsplit(call.url).netloc} failed ({type(exc).__name__})"
            ) from None
        finally:
            answer.close()
        headers = {name.lower(): [value] for name, value in answer.headers.items()}
        return Response(answer.status_code, answer.reason or "", headers, body)


def _buffer_body(request: requests.PreparedRequest) -> None:
    """A file, pipe or generator body, read into memory: a 401 retry must send the
    same bytes, and a stream can be read once (a pipe cannot even ``tell()``)."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return
    data: bytes | str
    try:
        if isinstance(body, (bytearray, memoryview)):
            data = bytes(body)
        elif hasattr(body, "read"):
            data = body.read()
        else:
            data = b"".join(chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk) for chunk in body)
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(f"could not read the request body into memory for a possible 401 retry ({type(exc).__name__})") from None
    if isinstance(data, str):
        data = data.encode("utf-8")
    request.body = data
    request.headers.pop("Transfer-Encoding", None)
    request.headers["Content-Length"] = str(len(data))
    # requests would try to seek the old stream on a redirect (utils.rewind_body).
    request._body_position = None


def _environment_proxy(url_text: str) -> str | None:
    """The proxy requests takes from the environment for ``url_text`` (its own rules:
    utils.get_environ_proxies then select_proxy, as Session.send merges them)."""
    return requests.utils.select_proxy(url_text, requests.utils.get_environ_proxies(url_text))


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


def _header_values(response: requests.Response, name: str) -> list[str]:
    # requests joins repeated headers with ", "; the raw urllib3 headers keep them apart.
    raw = getattr(response.raw, "headers", None)
    if raw is not None and hasattr(raw, "getlist"):
        return raw.getlist(name)
    value = response.headers.get(name)
    return [value] if value is not None else []


__all__ = ["OllamaAuth"]

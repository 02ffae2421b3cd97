"""Issue 19 item 11: the adapters and TLS.

httpx (and so ollama-python, openai, langchain) verifies with certifi's bundle,
not the system store the command line uses: a box certificate from a private CA
installed system-wide failed as ollama-python's "Failed to connect to Ollama ...
download". ``credential_helper.tls_context()`` is the command line's context for
``verify=``, and a TLS failure inside an adapter says TLS. The private CA is
handed to OpenSSL's store with SSL_CERT_DIR, as tests/test_truststore.py does.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import credential_helper
from credential_helper.errors import NetworkError
from faults import CertificateAuthority
from test_truststore import hashed_directory, tls_standin

pytestmark = pytest.mark.interop  # the pinned ollama and openai clients against a TLS stand-in


@pytest.fixture
def box(tmp_path, public_line, monkeypatch):
    """A TLS stand-in whose CA is in the 'system store' (SSL_CERT_DIR), not in certifi."""
    (tmp_path / "ca").mkdir()
    ca = CertificateAuthority(tmp_path / "ca")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", hashed_directory(ca, tmp_path / "capath"))
    with tls_standin(ca, public_line) as server:
        yield server


# httpx reads SSL_CERT_DIR itself when trust_env is on (its create_ssl_context), so here it would see the
# test's stand-in for the system store; a CA installed in the real system store is not in certifi's bundle,
# which is all that httpx's default context holds without those variables.
CERTIFI_ONLY = {"trust_env": False}


def auth(module, keys, server):
    return module.OllamaAuth(identity=keys / "ed25519-a", api_base=server.base_url, cache=False)


def test_ollama_client_with_the_command_lines_context_trusts_the_system_store(box, keys):
    # Break caught: tls_context missing from the package (AttributeError), or a context without the system store.
    import ollama

    from credential_helper.integrations import httpx as adapter

    client = ollama.Client(host=box.base_url, auth=auth(adapter, keys, box), verify=credential_helper.tls_context(), timeout=30)
    assert [model.model for model in client.list().models]

    async def main():
        aclient = ollama.AsyncClient(
            host=box.base_url, auth=auth(adapter, keys, box), verify=credential_helper.tls_context(), timeout=30
        )
        return (await aclient.list()).models

    assert asyncio.run(main())


def _says_tls(error: BaseException, server, hint: str = "verify=credential_helper.tls_context()") -> None:
    text = str(error)
    assert text.startswith(f"TLS failure talking to {server.base_url.split('//')[1]}: certificate verification failed"), text
    assert hint in text and "Failed to connect to Ollama" not in text


def test_a_certificate_the_client_does_not_trust_is_reported_as_tls_by_ollama_python(box, keys):
    # Break caught: the flows without _raise_if_tls: ollama-python raised ConnectionError
    # ("Failed to connect to Ollama. Please check that Ollama is downloaded, running and accessible").
    import ollama

    from credential_helper.integrations import httpx as adapter

    client = ollama.Client(host=box.base_url, auth=auth(adapter, keys, box), timeout=30, **CERTIFI_ONLY)
    with pytest.raises(NetworkError) as caught:
        client.list()
    _says_tls(caught.value, box)
    with pytest.raises(NetworkError) as caught:  # the streaming path too
        list(client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=True))
    _says_tls(caught.value, box)

    async def main():
        await ollama.AsyncClient(host=box.base_url, auth=auth(adapter, keys, box), timeout=30, **CERTIFI_ONLY).list()

    with pytest.raises(NetworkError) as caught:
        asyncio.run(main())
    _says_tls(caught.value, box)
    assert box.exchanges == 0


def test_openai_says_tls_with_the_fix_for_httpx2(box, keys, tmp_path, monkeypatch):
    # httpx2 already trusts the system store (httpcore2 _ssl.default_ssl_context, truststore before 2.15);
    # its hint says so. The box's CA is taken out of the 'system store' for the refusal.
    import httpx2
    import openai

    from credential_helper.integrations import httpx2 as adapter

    def client(**verify):
        return openai.OpenAI(
            base_url=f"{box.base_url}/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx2.Client(auth=auth(adapter, keys, box), timeout=30, **verify),
        )

    store = os.environ["SSL_CERT_DIR"]
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", hashed_directory(CertificateAuthority(tmp_path / "other"), tmp_path / "other-capath"))
    with pytest.raises((NetworkError, openai.APIConnectionError)) as caught:
        client().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    error = caught.value if isinstance(caught.value, NetworkError) else caught.value.__cause__
    _says_tls(error, box, hint="install the server's CA there")
    monkeypatch.setenv("SSL_CERT_DIR", store)
    done = client(verify=credential_helper.tls_context()).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content


def test_a_ca_outside_the_system_store_is_refused_by_the_context_too(box, keys, tmp_path, monkeypatch):
    import httpx

    from credential_helper.integrations import httpx as adapter

    (tmp_path / "other").mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", hashed_directory(CertificateAuthority(tmp_path / "other"), tmp_path / "other-capath"))
    with httpx.Client(auth=auth(adapter, keys, box), verify=credential_helper.tls_context(), timeout=30) as client:
        with pytest.raises(NetworkError) as caught:
            client.get(f"{box.base_url}/api/tags")
    _says_tls(caught.value, box)


def test_a_failure_that_is_not_tls_stays_the_librarys_own(keys):
    import socket

    import httpx

    from credential_helper.integrations import httpx as adapter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    base = f"https://127.0.0.1:{port}"
    with httpx.Client(auth=adapter.OllamaAuth(identity=keys / "ed25519-a", api_base=base, cache=False), timeout=5) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(f"{base}/api/tags")

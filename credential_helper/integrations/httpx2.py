"""``OllamaAuth`` for ``httpx2.Client`` and ``httpx2.AsyncClient`` (``pip install 'ollama-credential-helper[httpx2]'``).

    import httpx2
    from credential_helper.integrations.httpx2 import OllamaAuth

    client = httpx2.Client(auth=OllamaAuth())
"""

import httpx2

from ._httpx_flow import build

OllamaAuth = build(httpx2)

__all__ = ["OllamaAuth"]

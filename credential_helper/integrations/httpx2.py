"""``OllamaAuth`` for ``httpx2.Client`` and ``httpx2.AsyncClient`` (from a clone, with its extra: ``pip install '/path/to/clone[httpx2]'``).

import httpx2
from credential_helper.integrations.httpx2 import OllamaAuth

client = httpx2.Client(auth=OllamaAuth())
"""

import httpx2

from ._httpx_flow import build

OllamaAuth = build(httpx2)

__all__ = ["OllamaAuth"]

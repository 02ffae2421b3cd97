"""``OllamaAuth`` for ``httpx.Client`` and ``httpx.AsyncClient`` (from a clone, with its extra: ``pip install '/path/to/clone[httpx]'``).

import httpx
from credential_helper.integrations.httpx import OllamaAuth

client = httpx.Client(auth=OllamaAuth())
"""

import httpx

from ._httpx_flow import build

OllamaAuth = build(httpx)

__all__ = ["OllamaAuth"]

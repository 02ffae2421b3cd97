"""Keyless Ollama auth inside the HTTP clients people already use.

One module per library, each imported only when used (the command line never
imports any of them):

- ``credential_helper.integrations.httpx.OllamaAuth``: ``httpx.Client`` and
  ``httpx.AsyncClient`` (and so the official ``ollama`` package);
- ``credential_helper.integrations.httpx2.OllamaAuth``: the same for ``httpx2``
  (and so the official ``openai`` package, 3.x);
- ``credential_helper.integrations.requests.OllamaAuth``: a ``requests`` auth.
"""

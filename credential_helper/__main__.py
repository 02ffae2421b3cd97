"""``python -m credential_helper``: the same as the ``ollama-credential-helper`` command."""

import sys

from .cli import main

sys.exit(main())

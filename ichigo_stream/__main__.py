"""`python -m ichigo_stream`: the ichigo-stream command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

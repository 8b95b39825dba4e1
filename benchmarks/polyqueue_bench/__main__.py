"""``python -m polyqueue_bench ARGS``: the same as ``polyqueue bench ARGS``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

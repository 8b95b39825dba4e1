"""Run the polyqueue benchmarks from a checkout: ``python benchmarks/run.py --help`` (same as ``polyqueue bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from polyqueue.bench import main

if __name__ == "__main__":
    sys.exit(main())

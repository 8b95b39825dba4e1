"""Run the polyqueue benchmarks from a checkout: ``python benchmarks/run.py --help`` (same as ``polyqueue bench``).

Works without installing the harness: this folder (``polyqueue_bench``) and
the checkout (``polyqueue``) go first on the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from polyqueue_bench import main

if __name__ == "__main__":
    sys.exit(main())

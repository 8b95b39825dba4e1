"""polyqueue's benchmark harness (``polyqueue bench``): polyqueue against the naive ``job_queue`` loop and its peers.

Installed apart from polyqueue (``pip install -e 'benchmarks[peers]'`` from a
checkout), so that the runtime package holds no peer adapters.
"""

from __future__ import annotations

from .harness import BACKENDS, SCENARIOS, BenchConfig, BenchError, Figure, main, run_bench

__all__ = ["BACKENDS", "SCENARIOS", "BenchConfig", "BenchError", "Figure", "main", "run_bench"]

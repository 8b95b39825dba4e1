"""polyqueue's benchmark harness (``polyqueue bench``): polyqueue against the naive ``job_queue`` loop and its peers.

Systems compared, each through its own public API (one module each under
:mod:`polyqueue_bench.systems`):

* ``polyqueue`` -- :class:`polyqueue.Worker` in each worker process, burst mode;
* ``naive`` -- the ``job_queue`` table and loop of the essay, as written minus
  its 0.1 s sleep (the sleep is kept for the idle scenario, where it is the point);
* ``pgqueuer`` (asyncpg, uvloop, batch size 100) and ``procrastinate`` on PostgreSQL;
* ``huey`` (``SqliteHuey`` and its consumer) on SQLite;
* ``SELECT 1`` round trips through the same driver, as the floor.

A project of its own (``polyqueue-bench``, in ``benchmarks/`` of a polyqueue
checkout), so that the runtime package holds no peer adapters. The peers are
optional (``pip install -e 'benchmarks[peers]'``); a peer whose package is
missing is skipped and said so. Results go to a rich table, a JSON file and,
when matplotlib is installed, a PNG chart.
"""

from __future__ import annotations

from .cli import main
from .config import BACKENDS, SCENARIOS, BenchConfig, BenchError
from .harness import Bench, run_bench
from .report import Figure

__all__ = ["BACKENDS", "SCENARIOS", "Bench", "BenchConfig", "BenchError", "Figure", "main", "run_bench"]

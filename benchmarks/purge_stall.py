"""How long a draining worker's claims stall while a large purge runs, and how long the purge takes, per backend.

    .venv/bin/python benchmarks/purge_stall.py [--rows 200000] [--repeat 3] [--backends sqlite,postgresql,mysql,...]
                                               [--unpaced] [--json FILE]

For each repetition, and for each backend in turn (interleaved, so a slow
moment of the machine hits every backend alike), it stores ``--rows`` jobs
that finished three days ago (imported with their old times, as a transfer
would; on a backend without the ``transfer`` capability they are enqueued,
claimed and completed, and the purge is told ``older_than`` a few seconds),
enqueues ``--pending`` jobs, and starts a worker that drains them: a loop of
``claim(limit=10)``, 2 ms of handler work (a sleep), then ``complete_many``, in its own process (a thread for
``memory://``, which lives in one process), timing every claim call. Once the
worker has run for a second, the main process runs ``purge("done", ...)`` with
the default batch size and times it.

Reported per backend, the median of the repetitions:

* ``stall_ms``: the longest claim call that overlapped the purge (the wait a
  worker sees before its next job);
* ``p99_ms``: the 99th percentile of those claim calls;
* ``idle_stall_ms``, ``idle_p99_ms``: the same in the second before the purge
  (the machine's own noise: on a loaded machine a claim is not instant);
* ``purge_s``: the purge's wall time; ``claims``: claim calls during it.

``--unpaced`` runs the purge as it was before batches were paced (batches of
the full batch size, back to back), for comparison. The purge must delete
exactly the old rows, and the worker's jobs must all be kept: a run checks both.

This is a script, not a test: its figures depend on the machine (see
``--help``); docs/operations.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polyqueue
from polyqueue import policy
from polyqueue.backends.base import Capability, ImportBatch
from polyqueue.job import JobRecord
from polyqueue.testing import drop_schema, reachable, server_url, unique_prefix

#: Claims the worker makes per call: a worker's usual batch.
CLAIM_LIMIT = 10
#: The handlers' work per claimed batch (a sleep, like I/O: it adds no load to the machine).
HANDLER_SECONDS = 0.002
#: How long the worker waits after a claim found nothing (a real worker waits for a wake-up).
IDLE_POLL = 0.05
#: How long the worker runs before the purge starts: the idle baseline.
BASELINE_SECONDS = 1.0

_WORKER = r"""
import json, os, sys, time
import polyqueue
url, prefix, go, stop, out = sys.argv[1:6]
q = polyqueue.connect(url, table_prefix=prefix)
q.backend.db_now()  # connected before the start signal
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
claims = []
while not os.path.exists(stop):
    started = time.monotonic()
    jobs = q.claim("work", limit=int(os.environ["BENCH_CLAIM_LIMIT"]), lease=60)
    claims.append((started, time.monotonic()))
    if not jobs:
        time.sleep(float(os.environ["BENCH_IDLE_POLL"]))
        continue
    time.sleep(float(os.environ["BENCH_HANDLER_SECONDS"]))
    q.complete_many([(job, None) for job in jobs])
with open(out, "w") as f:
    json.dump(claims, f)
q.close()
"""


def store_history(q: polyqueue.Queue, rows: int) -> float:
    """Store ``rows`` finished jobs; returns the ``older_than`` that selects exactly them."""
    if Capability.TRANSFER in q.capabilities:
        at = q.backend.db_now() - timedelta(days=3)
        for start in range(0, rows, 1000):
            batch = [
                JobRecord(None, "history", "t", "{}", 0, "done", 1, 5, at, at, at, import_key=f"h{n}")
                for n in range(start, min(rows, start + 1000))
            ]
            q.backend.import_jobs(ImportBatch(batch))
        return 86400.0
    for start in range(0, rows, 1000):
        q.enqueue_many([{"job_type": "t", "queue": "history"} for _ in range(min(1000, rows - start))])
        q.complete_many([(job, None) for job in q.claim("history", limit=1000)])
    time.sleep(3.0)  # every history row is now over 2 s old; the worker's will be younger
    return 2.0


class ThreadWorker:
    """The worker loop in a thread, for a store that lives in this process (``memory://``)."""

    def __init__(self, q: polyqueue.Queue) -> None:
        self.q = q
        self.claims: list[tuple[float, float]] = []
        self.go = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        """Claim and complete until stopped, timing each claim."""
        self.go.wait()
        while not self.stop.is_set():
            started = time.monotonic()
            jobs = self.q.claim("work", limit=CLAIM_LIMIT, lease=60)
            self.claims.append((started, time.monotonic()))
            if not jobs:
                time.sleep(IDLE_POLL)
                continue
            time.sleep(HANDLER_SECONDS)
            self.q.complete_many([(job, None) for job in jobs])

    def start(self) -> None:
        """Let the loop go."""
        self.go.set()

    def finish(self) -> list[tuple[float, float]]:
        """Stop the loop; the claim intervals."""
        self.stop.set()
        self.thread.join(60)
        return self.claims


class ProcessWorker:
    """The worker loop in its own process, as a deployed worker runs."""

    def __init__(self, url: str, prefix: str, tmp: Path) -> None:
        self.go, self.stop, self.out = tmp / "go", tmp / "stop", tmp / "claims.json"
        env = {
            **os.environ,
            "BENCH_CLAIM_LIMIT": str(CLAIM_LIMIT),
            "BENCH_HANDLER_SECONDS": str(HANDLER_SECONDS),
            "BENCH_IDLE_POLL": str(IDLE_POLL),
        }
        command = [sys.executable, "-c", _WORKER, url, prefix, str(self.go), str(self.stop), str(self.out)]
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def start(self) -> None:
        """Let the loop go."""
        self.go.touch()

    def finish(self) -> list[tuple[float, float]]:
        """Stop the loop; the claim intervals."""
        self.stop.touch()
        self.proc.wait(120)
        return [tuple(pair) for pair in json.loads(self.out.read_text())]  # type: ignore[misc]


def percentile(values: list[float], fraction: float) -> float:
    """The value ``fraction`` of the way up the sorted ``values`` (0.0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_once(url: str, args: argparse.Namespace) -> dict[str, float]:
    """One purge of ``args.rows`` old rows while a worker drains; the figures."""
    prefix = unique_prefix()
    q = polyqueue.connect(url, table_prefix=prefix)
    q.migrate()
    try:
        older_than = store_history(q, args.rows)
        for start in range(0, args.pending, 1000):
            q.enqueue_many([{"job_type": "t", "queue": "work"} for _ in range(min(1000, args.pending - start))])
        with tempfile.TemporaryDirectory() as tmp:
            worker = ThreadWorker(q) if url.startswith("memory:") else ProcessWorker(url, prefix, Path(tmp))
            worker.start()
            time.sleep(BASELINE_SECONDS)
            started = time.monotonic()
            deleted = q.purge("done", older_than=older_than)
            ended = time.monotonic()
            claims = worker.finish()
        if deleted != args.rows:
            raise RuntimeError(f"the purge deleted {deleted} rows, not the {args.rows} old ones")
        stats = q.stats()
        kept = stats["done"] + stats["pending"] + stats["processing"]
        if kept != args.pending:
            raise RuntimeError(f"the purge touched the worker's jobs: {stats}")
        if stats["pending"] == 0:
            print(f"warning: the worker ran out of jobs before the purge ended (raise --pending): {stats}")
        during = [b - a for a, b in claims if b > started and a < ended]
        before = [b - a for a, b in claims if b <= started and a >= started - BASELINE_SECONDS]
        return {
            "stall_ms": max(during, default=0.0) * 1000,
            "p99_ms": percentile(during, 0.99) * 1000,
            "idle_stall_ms": max(before, default=0.0) * 1000,
            "idle_p99_ms": percentile(before, 0.99) * 1000,
            "purge_s": ended - started,
            "claims": float(len(during)),
        }
    finally:
        drop_schema(q)
        q.close()


def unpaced() -> None:
    """Make every purge run as before pacing: full batches, back to back."""

    class Unpaced(policy.PurgePace):
        def rest(self, elapsed: float) -> float:
            return 0.0

        def next_size(self, size: int, elapsed: float) -> int:
            return self.limit

    policy.PurgePace = Unpaced  # type: ignore[misc]


def targets(names: list[str], tmp: Path) -> dict[str, str]:
    """The URL of each backend asked for that is reachable here."""
    urls: dict[str, str] = {}
    for name in names:
        if name == "sqlite":
            urls[name] = f"sqlite:///{tmp / 'purge.db'}"
        elif name == "memory":
            urls[name] = "memory://purge-bench"
        else:
            url = server_url(name)
            if reachable(url):
                urls[name] = url
            else:
                print(f"skipping {name}: {url} is unreachable", file=sys.stderr)
    return urls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="old finished jobs to purge")
    parser.add_argument("--pending", type=int, default=50_000, help="jobs the worker drains meanwhile")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql,mysql,memory,redis")
    parser.add_argument("--unpaced", action="store_true", help="purge as before pacing, for comparison")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    if args.unpaced:
        unpaced()
    with tempfile.TemporaryDirectory() as tmp:
        systems = targets(args.backends.split(","), Path(tmp))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in systems}
        for repetition in range(1, args.repeat + 1):
            for name, url in systems.items():
                if name == "sqlite":
                    Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
                figures = run_once(url, args)
                runs[name].append(figures)
                shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
                print(f"run {repetition} {name}: {shown}", flush=True)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items() if rs}
    print(f"\nmedian of {args.repeat}, {args.rows} rows, {'unpaced' if args.unpaced else 'paced'}:")
    print(f"{'backend':<12}{'stall ms':>10}{'p99 ms':>8}{'idle ms':>9}{'idle p99':>9}{'purge s':>9}{'claims':>8}")
    for name, m in medians.items():
        print(
            f"{name:<12}{m['stall_ms']:>10.0f}{m['p99_ms']:>8.0f}{m['idle_stall_ms']:>9.0f}{m['idle_p99_ms']:>9.0f}"
            f"{m['purge_s']:>9.2f}{m['claims']:>8.0f}"
        )
    if args.json is not None:
        load: Callable[[], Any] = getattr(os, "getloadavg", lambda: None)
        args.json.write_text(
            json.dumps(
                {
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": {"cpus": os.cpu_count(), "load": load(), "python": platform.python_version()},
                    "rows": args.rows,
                    "paced": not args.unpaced,
                    "runs": runs,
                    "median": medians,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the MySQL/MariaDB wake-up long poll costs while every worker is idle, measured on the server.

    python -m polyqueue_bench.mysql_wakeups --workers 4 --seconds 30

Starts ``--workers`` idle Workers in this process (they share one long poll),
lets them settle, then for ``--seconds`` counts:

* the CPU time of the server thread that runs the long poll (its OS thread id
  from ``information_schema.PROCESSLIST.TID``, its ``utime + stime`` from
  ``/proc/<server pid>/task/<tid>/stat``), as a percentage of one core;
* the ``CALL`` statements the long poll sent, and the statements the workers
  sent through SQLAlchemy (their due-time probes): the client statements;
* the statements run inside the server: each look is one ``SELECT`` that
  sleeps, then reads (a one-second call shows ``Com_select`` +52 in its
  session's status), so ``1 / STEP`` a second.

MariaDB only (``PROCESSLIST.TID``); the server must run on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import polyqueue
from polyqueue.backends import mysql_wakeups
from polyqueue.testing import drop_schema, recorded_statements, unique_prefix

from .connections import bench_database_url, default_url


def server_thread_seconds(pid: int, tid: int) -> float:
    """CPU seconds (user + system) the server's thread ``tid`` has used."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, workers: int, seconds: float, settle: float) -> dict[str, Any]:
    """Idle workers for ``seconds`` after ``settle``: the long poll's server CPU and the statements sent."""
    q = polyqueue.connect(url, table_prefix=unique_prefix(), mysql_wakeups="server")
    q.migrate()
    backend: Any = q.backend  # the MySQL backend's internals: fine for a benchmark, never for an application
    running = [polyqueue.Worker(q, concurrency=8) for _ in range(workers)]
    for worker in running:
        worker.register("noop", lambda job: None)
    threads = [threading.Thread(target=w.run, daemon=True) for w in running]
    try:
        for thread in threads:
            thread.start()
        time.sleep(settle)
        watches = list(mysql_wakeups._Watch._registry.values())
        polls = [w for w in watches if w.backend is backend]
        if len(polls) != 1 or polls[0]._connection_id is None:
            raise SystemExit(f"expected one long poll for the {workers} workers, found {len(polls)}")
        poll_id = polls[0]._connection_id

        def one(sql: str) -> Any:
            return backend._run_single(lambda conn: conn.exec_driver_sql(sql).first())

        tid = int(one(f"SELECT TID FROM information_schema.PROCESSLIST WHERE ID = {int(poll_id)}")[0])
        pid = int(subprocess.run(["pgrep", "-o", "-x", "mariadbd"], capture_output=True, text=True).stdout.split()[0])
        calls_before = polls[0].calls
        cpu_before, started = server_thread_seconds(pid, tid), time.monotonic()
        with recorded_statements(backend.jobs.name) as sent:
            time.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = server_thread_seconds(pid, tid) - cpu_before
        calls = polls[0].calls - calls_before
    finally:
        for worker in running:
            worker.stop()
        for thread in threads:
            thread.join(30)
        drop_schema(q)
        q.close()
    return {
        "workers": workers,
        "seconds": round(elapsed, 2),
        "long_poll_server_cpu_percent_of_a_core": round(100 * cpu / elapsed, 3),
        "call_statements_per_second": round(calls / elapsed, 3),
        "worker_statements_per_second": round(len(sent) / elapsed, 3),
        "looks_inside_the_server_per_second": round(1 / mysql_wakeups.STEP, 1),
        "statements_inside_the_server_per_second": round(1 / mysql_wakeups.STEP, 1),
        "step_seconds": mysql_wakeups.STEP,
        "long_poll_seconds": mysql_wakeups.LONG_POLL,
        "loadavg": Path("/proc/loadavg").read_text().strip(),
    }


def main(argv: list[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m polyqueue_bench.mysql_wakeups", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args(argv)
    url = bench_database_url(default_url("mysql", Path(".")))
    result = measure(url, args.workers, args.seconds, args.settle)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Worker processes the conformance suite starts: ``python -m polyqueue.conformance._proc MODE ...``.

The queue URL comes from ``POLYQUEUE_URL`` and the connect options (JSON, with
the test's ``table_prefix``) from ``POLYQUEUE_TEST_OPTIONS``.

Modes:
  drain OUT CONCURRENCY   run a burst worker; each handler run appends its job id to OUT
  hold READY LEASE        run a worker whose handler writes READY then sleeps until killed
  slow READY SECONDS      run a worker whose handler writes READY, sleeps SECONDS, returns "slept"
  crash                   run a worker whose handler kills the process (os._exit)
  run OUT CONCURRENCY HOLD READY
                          run a worker until SIGTERM (READY written once it runs); handler "work" appends
                          "id key start end" (wall clock) to OUT after sleeping HOLD seconds
  migrate                 run Queue.migrate()
  periodic SECONDS THREADS CRON NAME
                          run THREADS workers (threads) that declare schedule NAME (job type "tick") for SECONDS
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import polyqueue


def _queue() -> polyqueue.Queue:
    options = json.loads(os.environ.get("POLYQUEUE_TEST_OPTIONS", "{}"))
    return polyqueue.connect(os.environ["POLYQUEUE_URL"], **options)


def _touch(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    q = _queue()
    if mode == "migrate":
        q.migrate()
        return 0
    if mode == "drain":
        out, concurrency = args[0], int(args[1])
        worker = polyqueue.Worker(q, concurrency=concurrency, lease=30)
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def record(job: polyqueue.Job) -> None:
            os.write(fd, f"{job.id}\n".encode())

        worker.register("record", record)
        worker.run(burst=True)
        os.close(fd)
        return 0
    if mode == "hold":
        ready, lease = args[0], float(args[1])
        worker = polyqueue.Worker(q, concurrency=1, lease=lease)

        def hold(job: polyqueue.Job) -> None:
            _touch(ready, f"{job.id} {job.attempts}\n")
            while True:
                time.sleep(1)

        worker.register("hold", hold)
        worker.run()
        return 0
    if mode == "slow":
        ready, seconds = args[0], float(args[1])
        worker = polyqueue.Worker(q, concurrency=1, lease=30, shutdown_timeout=float(args[2]) if len(args) > 2 else 30)

        def slow(job: polyqueue.Job) -> Any:
            _touch(ready, f"{job.id} {job.attempts}\n")
            time.sleep(seconds)
            return "slept"

        worker.register("slow", slow)
        worker.run()
        return 0
    if mode == "run":
        out, concurrency, hold_for, ready = args[0], int(args[1]), float(args[2]), args[3]
        worker = polyqueue.Worker(q, concurrency=concurrency, lease=30, shutdown_timeout=30)
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def work(job: polyqueue.Job) -> None:
            started = time.time()
            time.sleep(hold_for)
            os.write(fd, f"{job.id} {job.concurrency_key or '-'} {started:.6f} {time.time():.6f}\n".encode())

        worker.register("work", work)
        threading.Timer(0.2, _touch, (ready, "up\n")).start()
        worker.run()
        os.close(fd)
        return 0
    if mode == "crash":
        worker = polyqueue.Worker(q, concurrency=1, lease=float(args[0]) if args else 1.0)

        def crash(job: polyqueue.Job) -> None:
            os._exit(17)

        worker.register("crash", crash)
        worker.run(burst=True)
        return 0
    if mode == "periodic":
        seconds, threads, cron, name = float(args[0]), int(args[1]), args[2], args[3]
        workers = [polyqueue.Worker(q) for _ in range(threads)]
        for worker in workers:
            worker.periodic(cron, "tick", name=name)
        runners = [threading.Thread(target=worker.run) for worker in workers]
        for runner in runners:
            runner.start()
        time.sleep(seconds)
        for worker in workers:
            worker.stop()
        for runner in runners:
            runner.join(60)
        return 0
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

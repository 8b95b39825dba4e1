"""A worker process for the failover test: ``python drain_worker.py OUT QUEUES`` (URL in ``POLYQUEUE_URL``).

It runs until SIGTERM, appending the id of every job whose handler ran to OUT
(one line per run, O_APPEND, so several processes share the file).
"""

from __future__ import annotations

import os
import sys

import polyqueue


def main(out: str, queues: str) -> int:
    q = polyqueue.connect(os.environ["POLYQUEUE_URL"])
    worker = polyqueue.Worker(q, queues=queues.split(","), concurrency=8, lease=30)
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @worker.handler("record")
    def record(job: polyqueue.Job) -> None:
        os.write(fd, f"{job.id}\n".encode())

    worker.run()
    os.close(fd)
    q.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

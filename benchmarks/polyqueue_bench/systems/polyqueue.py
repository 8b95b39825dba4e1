"""polyqueue itself, through its public API (connect, enqueue_many, Worker).

Emptying the table and tracing SQLite reach into backend internals (``engine``,
``_autocommit_engine``, ``_run_single``, ``jobs``): fine for a benchmark, never
for an application.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

import sqlalchemy as sa

from ..config import JOB_TYPE, Spec
from .base import System, WorkerSide

#: The fastest way to empty the jobs table, per backend.
EMPTY_TABLE = {
    "sqlite": 'DELETE FROM "{table}"',
    "postgresql": 'TRUNCATE TABLE "{table}"',
    "mysql": "TRUNCATE TABLE `{table}`",
}


class PolyqueueSystem(System):
    """polyqueue on one backend, its tables prefixed with the spec's name."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import polyqueue

        self.q = polyqueue.connect(spec.url, table_prefix=spec.name)

    @property
    def backend(self) -> Any:
        """The SQL backend, for the internals above."""
        return self.q.backend

    @property
    def jobs(self) -> sa.Table:
        """The backend's jobs table."""
        return self.backend.jobs  # type: ignore[no-any-return]

    def begin(self) -> AbstractContextManager[sa.Connection]:
        """A transaction on the backend's engine."""
        return self.backend.engine.begin()  # type: ignore[no-any-return]

    def setup(self) -> None:
        self.q.migrate()
        self.clear()

    def clear(self) -> None:
        self.empty_table()

    def empty_table(self) -> None:
        """Delete every row of the jobs table."""
        with self.begin() as conn:
            conn.exec_driver_sql(EMPTY_TABLE[self.spec.backend].format(table=self.jobs.name))

    def enqueue_bulk(self, n: int) -> None:
        self.q.enqueue_many([{"job_type": JOB_TYPE, "payload": {"i": i}} for i in range(n)])

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.q.enqueue(JOB_TYPE, payload)

    def drained(self, n: int) -> tuple[bool, str]:
        stats = self.q.stats()
        return stats["done"] == n and not stats["pending"] and not stats["processing"], f"{stats}"

    def drop(self) -> None:
        from polyqueue.testing import drop_schema

        drop_schema(self.q)

    def close(self) -> None:
        self.q.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return PolyqueueWorkerSide(self, params)


class PolyqueueWorkerSide(WorkerSide):
    """A :class:`polyqueue.Worker` with a no-op handler."""

    def __init__(self, system: PolyqueueSystem, params: dict[str, Any]) -> None:
        super().__init__()
        import polyqueue

        self.system = system
        options: dict[str, Any] = {"concurrency": params.get("concurrency", 8)}
        if params.get("batch_size"):
            options["batch_size"] = params["batch_size"]
        self.worker = polyqueue.Worker(system.q, **options)
        self.worker.register(JOB_TYPE, lambda job: self.on_job(job.payload))

    def trace_sqlite(self) -> None:
        backend = self.system.backend
        backend._run_single(lambda conn: None)  # creates the single-statement engine, so it is traced too
        for engine in {id(e): e for e in (backend.engine, backend._autocommit_engine)}.values():
            engine.dispose()  # connections made from now on carry the trace
            sa.event.listen(engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.set_trace_callback(self.statements))

    def run_burst(self, expected: int) -> None:
        self.worker.run(burst=True)

    def _stop_when_set(self, stop: threading.Event) -> None:
        stop.wait()
        self.worker.stop()

    def run_until(self, stop: threading.Event) -> None:
        threading.Thread(target=self._stop_when_set, args=(stop,), daemon=True).start()
        self.worker.run()

    def close(self) -> None:
        self.system.close()

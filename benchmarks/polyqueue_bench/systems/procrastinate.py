"""procrastinate with its psycopg connector, in the benchmark database's public schema."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from ..config import JOB_TYPE, Spec
from ..connections import pg_dsn
from .base import AsyncSystem, AsyncWorkerSide, WorkerSide, wait_for


class ProcrastinateSystem(AsyncSystem):
    """A procrastinate ``App`` with the no-op task, open in the benchmark process."""

    backends = ("postgresql",)
    modules = ("procrastinate",)
    slow = True

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import procrastinate

        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_dsn(spec.url)))
        self.task = self.app.task(name=JOB_TYPE)(_procrastinate_noop)
        self.wait(self.app.open_async())

    def _sql(self, sql: str) -> Any:
        return self.wait(self.app.connector.execute_query_one_async(sql))

    def setup(self) -> None:
        if self._sql("SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present")["present"] is not True:
            self.wait(self.app.schema_manager.apply_schema_async())
        self.clear()

    def clear(self) -> None:
        self.wait(self.app.connector.execute_query_async("TRUNCATE procrastinate_jobs CASCADE"))

    def enqueue_bulk(self, n: int) -> None:
        jobs: list[dict[str, Any]] = [{"i": i} for i in range(n)]
        self.wait(self.task.batch_defer_async(*jobs))

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.wait(self.task.defer_async(**payload))

    def drained(self, n: int) -> tuple[bool, str]:
        done = self._sql("SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'succeeded'")["n"]
        return done == n, f"succeeded={done}"

    def drop(self) -> None:
        self.clear()

    async def close_client(self) -> None:
        await self.app.close_async()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return ProcrastinateWorkerSide(self.spec, params)


async def _procrastinate_noop(**kwargs: Any) -> None:
    side = ProcrastinateWorkerSide.current
    if side is not None:
        side.on_job(kwargs)


class ProcrastinateWorkerSide(AsyncWorkerSide):
    """procrastinate's worker with an async no-op task."""

    #: The worker side of this process, which the task (a plain function) reports to.
    current: ProcrastinateWorkerSide | None = None

    def __init__(self, spec: Spec, params: dict[str, Any]) -> None:
        super().__init__()
        self.dsn = pg_dsn(spec.url)
        self.concurrency = int(params.get("procrastinate_concurrency", 10))
        ProcrastinateWorkerSide.current = self

    async def serve(self, burst: bool, stop: threading.Event | None) -> None:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=self.dsn))
        app.task(name=JOB_TYPE)(_procrastinate_noop)
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(concurrency=self.concurrency, wait=not burst, install_signal_handlers=False)
            )
            if stop is not None:
                await wait_for(stop)
                worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

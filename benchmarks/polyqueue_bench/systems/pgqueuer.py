"""pgqueuer on asyncpg (uvloop in the workers), its tables prefixed ``pqbench_``."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Coroutine
from typing import Any

from ..config import JOB_TYPE, Spec
from ..connections import pg_dsn
from .base import AsyncSystem, AsyncWorkerSide, WorkerSide, wait_for


class PgQueuerSystem(AsyncSystem):
    """pgqueuer's ``Queries`` on one asyncpg connection."""

    backends = ("postgresql",)
    modules = ("pgqueuer", "asyncpg", "uvloop")

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        os.environ["PGQUEUER_PREFIX"] = spec.name
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = self.wait(asyncpg.connect(pg_dsn(spec.url)))
        self.queries = Queries(AsyncpgDriver(self.conn))

    def setup(self) -> None:
        if not self.wait(self.queries.schema_is_installed()):
            self.wait(self.queries.install())
        self.clear()

    def clear(self) -> None:
        self.wait(self.queries.clear_queue())
        self.wait(self.queries.clear_queue_log())

    def enqueue_bulk(self, n: int) -> None:
        payloads: list[bytes | None] = [json.dumps({"i": i}).encode() for i in range(n)]
        self.wait(self.queries.enqueue([JOB_TYPE] * n, payloads, [0] * n))

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.wait(self.queries.enqueue(JOB_TYPE, json.dumps(payload).encode(), 0))

    def drained(self, n: int) -> tuple[bool, str]:
        left = self.wait(self.conn.fetchval(f"SELECT count(*) FROM {self.spec.name}pgqueuer"))
        return not left, f"{left} jobs left"

    def drop(self) -> None:
        self.wait(self.queries.uninstall())

    async def close_client(self) -> None:
        await self.conn.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return PgQueuerWorkerSide(self.spec, params)


class PgQueuerWorkerSide(AsyncWorkerSide):
    """pgqueuer's QueueManager with an async no-op entrypoint, on uvloop."""

    def __init__(self, spec: Spec, params: dict[str, Any]) -> None:
        super().__init__()
        os.environ["PGQUEUER_PREFIX"] = spec.name
        self.dsn = pg_dsn(spec.url)
        self.batch_size = int(params.get("pgqueuer_batch_size", 100))

    async def serve(self, burst: bool, stop: threading.Event | None) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries, QueueManager
        from pgqueuer.types import QueueExecutionMode

        conn = await asyncpg.connect(self.dsn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(JOB_TYPE)
        async def noop(job: Any) -> None:
            self.on_job(json.loads(job.payload))

        async def shut_down_when_told(stop: threading.Event) -> None:
            await wait_for(stop)
            qm.shutdown.set()

        stopper = None if stop is None else asyncio.create_task(shut_down_when_told(stop))
        mode = QueueExecutionMode.drain if burst else QueueExecutionMode.continuous
        await qm.run(batch_size=self.batch_size, mode=mode)
        if stopper is not None:
            await stopper
        await conn.close()

    def run_loop(self, main: Coroutine[Any, Any, None]) -> None:
        import uvloop

        uvloop.run(main)

"""The essay's ``job_queue`` table and ``process_jobs`` loop, through the plain driver as the essay does."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..config import JOB_TYPE, Spec
from ..connections import dbapi_connect
from .base import System, WorkerSide

#: The essay's table, verbatim where the dialect allows it.
NAIVE_DDL = """CREATE TABLE IF NOT EXISTS {table} (
    id            {id_column},
    job_type      VARCHAR(255) NOT NULL,
    payload       TEXT,
    status        VARCHAR(50)  DEFAULT 'pending',
    created_at    TIMESTAMP    DEFAULT {now},
    attempts      INTEGER      DEFAULT 0,
    locked_by     VARCHAR(255),
    error_message TEXT
)"""
#: SQLite has neither ``SERIAL`` nor ``NOW()``.
NAIVE_DIALECT = {
    "postgresql": {"id_column": "SERIAL PRIMARY KEY", "now": "NOW()"},
    "mysql": {"id_column": "SERIAL PRIMARY KEY", "now": "NOW()"},
    "sqlite": {"id_column": "INTEGER PRIMARY KEY", "now": "CURRENT_TIMESTAMP"},
}


class NaiveSystem(System):
    """The essay's ``job_queue`` table on one plain driver connection."""

    slow = True
    measures_latency = False  # without its sleep the loop spins; with it, latency is its 0.1 s by construction
    idle_note = "naive loop as written, with its 0.1 s sleep"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.table = f"{spec.name}job_queue"
        self.sqlite = spec.backend == "sqlite"
        self.mark = "?" if self.sqlite else "%s"
        self.conn = dbapi_connect(spec.url)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement (written with ``%s`` placeholders) in the current transaction; return the cursor."""
        cur = self.conn.cursor()
        cur.execute(sql.replace("%s", self.mark), params)
        return cur

    def commit(self) -> None:
        """End the implicit transaction (sqlite3 runs in autocommit mode here, and needs nothing)."""
        if not self.sqlite:
            self.conn.commit()

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement, committed."""
        self.execute(sql, params)
        self.commit()

    def count(self, where: str = "") -> int:
        """``count(*)`` of the table, optionally ``WHERE ...``."""
        return int(self.execute(f"SELECT count(*) FROM {self.table} {where}").fetchone()[0])

    @contextmanager
    def transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        """One explicit transaction, committed however it ends (the essay's loop commits even after an error)."""
        if self.sqlite:
            self.conn.execute(begin)
        try:
            yield
        finally:
            if self.sqlite:
                self.conn.execute("COMMIT")
            else:
                self.conn.commit()

    def setup(self) -> None:
        self.run(NAIVE_DDL.format(table=self.table, **NAIVE_DIALECT[self.spec.backend]))
        self.clear()

    def clear(self) -> None:
        self.run(f"DELETE FROM {self.table}" if self.sqlite else f"TRUNCATE TABLE {self.table}")

    def enqueue_bulk(self, n: int) -> None:
        # The obvious batch: executemany in one transaction.
        rows = [(JOB_TYPE, json.dumps({"i": i})) for i in range(n)]
        with self.transaction():
            self.conn.cursor().executemany(
                f"INSERT INTO {self.table} (job_type, payload) VALUES ({self.mark}, {self.mark})", rows
            )

    def enqueue_one(self, payload: dict[str, Any]) -> None:
        self.run(f"INSERT INTO {self.table} (job_type, payload) VALUES (%s, %s)", (JOB_TYPE, json.dumps(payload)))

    def drained(self, n: int) -> tuple[bool, str]:
        done, total = self.count("WHERE status = 'done'"), self.count()
        self.commit()
        return done == n and total == n, f"done={done} of {total}"

    def drop(self) -> None:
        self.run(f"DROP TABLE IF EXISTS {self.table}")

    def close(self) -> None:
        self.conn.close()

    def worker(self, params: dict[str, Any]) -> WorkerSide:
        return NaiveWorkerSide(self)


class NaiveWorkerSide(WorkerSide):
    """The essay's ``process_jobs`` loop; ``run_until`` keeps its 0.1 s sleep, ``run_burst`` drops it."""

    def __init__(self, system: NaiveSystem) -> None:
        super().__init__()
        self.system = system
        self.hostname = socket.gethostname()
        table = system.table
        lock = "" if system.sqlite else "\n            FOR UPDATE SKIP LOCKED"
        self.select = f"""
            SELECT * FROM {table}
            WHERE status = 'pending'
            AND (locked_by IS NULL OR locked_by = %s)
            ORDER BY created_at ASC
            LIMIT 1{lock}
        """
        self.take = f"UPDATE {table} SET status='processing', locked_by=%s, attempts=attempts+1 WHERE id=%s"
        self.done = f"UPDATE {table} SET status='done' WHERE id=%s"
        self.reset = f"UPDATE {table} SET status='pending', error_message=%s WHERE id=%s"

    def trace_sqlite(self) -> None:
        self.system.conn.set_trace_callback(self.statements)

    def _one(self) -> bool:
        system = self.system
        with system.transaction("BEGIN IMMEDIATE"):  # SQLite has no row locks: it takes the write lock
            job = system.execute(self.select, [self.hostname]).fetchone()
            if job:
                system.execute(self.take, [self.hostname, job[0]])
                try:
                    self.on_job(json.loads(job[2]))
                    system.execute(self.done, [job[0]])
                except Exception as exc:  # the essay's "just reset it"
                    system.execute(self.reset, [str(exc), job[0]])
        return bool(job)

    def run_burst(self, expected: int) -> None:
        while self._one():
            pass

    def run_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._one():
                stop.wait(0.1)  # "10 polls per second. This is very reasonable."

    def close(self) -> None:
        self.system.close()

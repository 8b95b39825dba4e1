"""What an idle worker costs the database, per second, after a settle period.

Each backend counts differently (:data:`IDLE_NOTES`): PostgreSQL its
transactions, MariaDB the statements of a dedicated user, SQLite the
statements through sqlite3's trace callback in the worker process(es).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Any

from sqlalchemy.engine import make_url

from ..children import Children
from ..config import BENCH_DATABASE, BENCH_USER
from ..connections import dbapi_connect
from ..systems import System
from .base import Scenario, Trial

#: What the idle figure counts, per backend.
IDLE_NOTES = {
    "postgresql": "transactions (xact_commit+xact_rollback) in the benchmark database, pg_stat_database",
    "mysql": "statements of a dedicated user (information_schema.USER_STATISTICS, userstat on)",
    "sqlite": "statements through sqlite3's trace callback in the worker process(es)",
}


class TraceCount:
    """SQLite: the worker process counts its own statements (trace callback); asked at both ends of the window."""

    #: Seconds for the worker's start-up statements to settle before the window opens.
    settle = 2.0
    #: The URL the idle worker connects with, when it must differ from the system's.
    worker_url: str | None = None
    #: Whether the worker process must trace its SQLite statements.
    traces_worker = True

    def __init__(self, url: str) -> None:
        self.url = url

    def start(self, children: Children) -> None:
        """Open the window."""
        (self.first,) = children.mark()

    def finish(self, children: Children) -> tuple[float, float]:
        """Close the window and stop the worker; ``(count, seconds)``."""
        (last,) = children.mark()
        children.stop()
        return last["statements"] - self.first["statements"], last["time"] - self.first["time"]

    def close(self) -> None:
        """Release the probe's connection (and restore what it changed)."""


class ServerCount(TraceCount):
    """A counter the server keeps, read over a connection of the probe's own."""

    traces_worker = False
    conn: Any

    def read(self) -> float:
        """The counter's value now."""
        raise NotImplementedError

    def start(self, children: Children) -> None:
        self.before, self.started = self.read(), time.time()

    def finish(self, children: Children) -> tuple[float, float]:
        count = self.read() - self.before
        elapsed = time.time() - self.started
        children.stop()
        return count, elapsed

    def close(self) -> None:
        self.conn.close()


class PostgresTransactions(ServerCount):
    """Committed + rolled-back transactions of the benchmark database (``pg_stat_database``).

    Read from the ``postgres`` database, so that reading does not move it. A
    session may hold its statistics up to 10 s (``PGSTAT_IDLE_INTERVAL``) and
    publishes them when it ends: the worker settles 11 s and is stopped before
    the last reading.
    """

    settle = 11.0
    SQL = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        postgres = make_url(url).set(database="postgres").render_as_string(hide_password=False)
        self.conn = dbapi_connect(postgres, autocommit=True)

    def read(self) -> float:
        return float(self.conn.execute(self.SQL, [BENCH_DATABASE]).fetchone()[0])

    def finish(self, children: Children) -> tuple[float, float]:
        children.stop()  # a session publishes its statistics when it ends
        elapsed = time.time() - self.started
        time.sleep(1.0)
        return self.read() - self.before, elapsed


class MariaDBUserStatements(ServerCount):
    """The statements of a dedicated user the idle worker connects as (``information_schema.USER_STATISTICS``).

    ``userstat`` is switched on for the measurement and restored at the end, so
    other clients of the server do not count.
    """

    SQL = (
        "SELECT COALESCE(SUM(SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS), 0) "
        "FROM information_schema.USER_STATISTICS WHERE USER = %s"
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parsed = make_url(url)
        self.conn = dbapi_connect(parsed.render_as_string(hide_password=False), autocommit=True)
        cur = self.conn.cursor()
        for host in ("%", "localhost"):
            cur.execute(f"CREATE USER IF NOT EXISTS '{BENCH_USER}'@'{host}'")
            cur.execute(f"GRANT ALL PRIVILEGES ON `{BENCH_DATABASE}`.* TO '{BENCH_USER}'@'{host}'")
        cur.execute("SELECT @@GLOBAL.userstat")
        self.previous_userstat = int(cur.fetchone()[0])
        cur.execute("SET GLOBAL userstat = 1")
        self.worker_url = parsed.set(username=BENCH_USER, password=None).render_as_string(hide_password=False)

    def read(self) -> float:
        cur = self.conn.cursor()
        cur.execute(self.SQL, [BENCH_USER])
        return float(cur.fetchone()[0])

    def close(self) -> None:
        self.conn.cursor().execute(f"SET GLOBAL userstat = {self.previous_userstat}")
        super().close()


PROBES: dict[str, type[TraceCount]] = {
    "sqlite": TraceCount,
    "postgresql": PostgresTransactions,
    "mysql": MariaDBUserStatements,
}


class Idle(Scenario):
    """One idle worker process per system; what reaches the database in ``idle_seconds``."""

    name = "idle"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.probes: dict[str, TraceCount] = {}

    def trials(self, backend: str) -> list[Trial]:
        trials = []
        for name, system in self.systems(backend):
            note = "; ".join(filter(None, (IDLE_NOTES[backend], system.idle_note)))
            run = partial(self.once, system)
            trials.append(self.trial(backend, name, run, {"per worker": ("statements/s", False)}, note))
        return trials

    def probe(self, backend: str) -> TraceCount:
        """The backend's statement probe, opened once per run and closed with it."""
        if backend not in self.probes:
            probe = self.probes[backend] = PROBES[backend](self.bench.urls[backend])
            self.bench.on_cleanup(probe.close)
        return self.probes[backend]

    def once(self, system: System) -> dict[str, float]:
        """One window: statements (or transactions) per second of one idle worker."""
        system.clear()
        probe = self.probe(system.spec.backend)
        spec = system.spec
        if probe.worker_url is not None:
            spec = dataclasses.replace(spec, url=probe.worker_url)
        params = self.bench.worker_params(processes=1, trace_sqlite=probe.traces_worker)
        with Children(spec, "serve", 1, params) as children:
            children.go()
            time.sleep(probe.settle)  # start-up statements settle first
            probe.start(children)
            time.sleep(self.config.idle_seconds)
            count, elapsed = probe.finish(children)
        return {"per worker": max(0.0, count) / elapsed}

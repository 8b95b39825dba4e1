"""PostgreSQL-specific behaviour on real servers: the claim statement and its index, NOTIFY wake-ups and the
LISTEN connection, transactional enqueue through a raw psycopg connection, migrate races, fault handling.

Tests that stop, crash or restart the server use a private throwaway PostgreSQL
(tests/servers.py), never the shared one; on the shared server a test only ever
terminates a connection it can prove is its own.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from servers import PrivatePostgreSQL, ServerUnavailable

import polyqueue
from polyqueue.backends.postgresql import PostgreSQLBackend
from polyqueue.backends.sql import SCHEMA_VERSION
from polyqueue.conformance.suite import wait_until
from polyqueue.testing import backends_required, drop_schema, unique_prefix

psycopg = pytest.importorskip("psycopg")

REPO = Path(__file__).resolve().parents[1]


def status_of(q: polyqueue.Queue, job_id: Any) -> str | None:
    job = q.get(job_id)
    return None if job is None else job.status


def backend_of(q: polyqueue.Queue) -> PostgreSQLBackend:
    assert isinstance(q.backend, PostgreSQLBackend)
    return q.backend


def raw_connect(url: str, **kwargs: Any) -> Any:
    """A plain psycopg connection to the server behind a SQLAlchemy URL."""
    u = sa.engine.make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port or 5432, user=u.username, dbname=u.database, password=u.password, **kwargs
    )


@pytest.fixture
def pg_queue(pg_url: str, fresh_queue: Callable[..., polyqueue.Queue]) -> polyqueue.Queue:
    """A migrated queue on the shared PostgreSQL server, on a table prefix of its own."""
    return fresh_queue(pg_url)


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivatePostgreSQL]:
    """A PostgreSQL of our own, to stop, crash and restart."""
    try:
        server = PrivatePostgreSQL()
        server.start()
    except ServerUnavailable as exc:
        if backends_required():
            pytest.fail(f"cannot start a private PostgreSQL: {exc}")
        pytest.skip(f"cannot start a private PostgreSQL: {exc}")
    try:
        server.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield server
    finally:
        server.close()


@pytest.fixture
def private_pg(private_server: PrivatePostgreSQL) -> PrivatePostgreSQL:
    """The private server, running (an earlier test may have left it stopped)."""
    if not private_server.running:
        private_server.start()
    return private_server


class RunningWorker:
    """A Worker running in a thread, stopped on exit."""

    def __init__(self, worker: polyqueue.Worker) -> None:
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True)

    def __enter__(self) -> polyqueue.Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "worker did not stop within 10 s"


# ----------------------------------------------------------------------------
# The claim statement
# ----------------------------------------------------------------------------
def test_claim_is_one_statement_served_by_the_partial_ready_index(pg_queue: polyqueue.Queue) -> None:
    backend = backend_of(pg_queue)
    jobs = backend.jobs.name
    with backend.engine.begin() as conn:
        # A long history of finished jobs and a few ready ones: the shape the partial index is for.
        conn.exec_driver_sql(
            f'INSERT INTO "{jobs}" (queue, job_type, payload, priority, status, attempts, max_attempts, '
            "run_at, created_at, finished_at, lease_token) "
            "SELECT 'default', 'old', 'null', 0, 'done', 1, 5, now(), now(), now(), 1 "
            "FROM generate_series(1, 20000)"
        )
        conn.exec_driver_sql(f'ANALYZE "{jobs}"')
    pg_queue.enqueue_many([{"job_type": "new", "priority": i % 3} for i in range(30)])

    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if jobs in statement:  # whichever of the backend's engines sends it
            sent.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        claimed = pg_queue.claim(limit=5, job_types=["new"])  # as a Worker claims: the types it handles
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)

    assert [j.priority for j in claimed] == [2] * 5
    assert len(sent) == 1, f"a claim should be one statement, got {[s for s, _ in sent]}"
    statement, parameters = sent[0]
    assert "FOR UPDATE SKIP LOCKED" in statement
    with backend.engine.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert f"{backend.prefix}jobs_ready" in plan, plan
    assert f'Seq Scan on "{jobs}"' not in plan and f"Seq Scan on {jobs}" not in plan, plan


def test_expired_leases_are_rescued_by_the_claim_itself(pg_queue: polyqueue.Queue) -> None:
    low = pg_queue.enqueue("job", priority=0)
    poison = pg_queue.enqueue("job", queue="other", max_attempts=1)
    retry = pg_queue.enqueue("job", queue="other", priority=5)
    first = pg_queue.claim(["default", "other"], limit=3, lease=0.2, worker_id="w1")
    assert {j.id for j in first} == {low, poison, retry}
    time.sleep(0.4)

    # The claim of "default" rescues every expired lease: other-queue jobs go back to
    # pending, the one on its final attempt dies; and it takes its own expired job back.
    again = pg_queue.claim("default", limit=5, lease=30, worker_id="w2")
    assert [(j.id, j.attempts, j.locked_by) for j in again] == [(low, 2, "w2")]
    assert "lease expired while held by w1" in (again[0].last_error or "")
    dead, pending = pg_queue.get(poison), pg_queue.get(retry)
    assert dead is not None and dead.status == "dead" and "lease expired" in (dead.last_error or "")
    assert dead.finished_at is not None
    assert pending is not None and (pending.status, pending.attempts, pending.lease_expires_at) == ("pending", 1, None)
    # An expired job competes with ready ones by priority.
    pg_queue.enqueue("job", queue="other", priority=1)
    took = pg_queue.claim("other", limit=1, worker_id="w3")
    assert [j.id for j in took] == [retry]


# ----------------------------------------------------------------------------
# Wake-ups
# ----------------------------------------------------------------------------
def test_enqueue_sends_one_tiny_notification_per_batch_on_commit_only(pg_url: str, pg_queue: polyqueue.Queue) -> None:
    channel = backend_of(pg_queue).channel
    with raw_connect(pg_url, autocommit=True) as listener:
        listener.execute(f'LISTEN "{channel}"')
        pg_queue.enqueue_many([{"job_type": "a"} for _ in range(50)])
        pg_queue.enqueue_many([{"job_type": "a", "queue": "q1"}, {"job_type": "a", "queue": "q2"}])
        with backend_of(pg_queue).engine.connect() as conn, conn.begin() as txn:
            pg_queue.enqueue("a", queue="rolled-back", connection=conn)
            txn.rollback()
        got = [n.payload for n in listener.notifies(timeout=1.0)]
    assert got == ["default", ""]


def listen_backends(pg_url: str, channel: str) -> list[int]:
    """Pids of the worker LISTEN connections on ``channel`` (our unique prefix), found by application name."""
    with raw_connect(pg_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'polyqueue-listen' AND query = %s",
            (f'LISTEN "{channel}"',),
        ).fetchall()
    return [r[0] for r in rows]


def test_killed_listen_connection_does_not_stop_pickup(pg_url: str, pg_queue: polyqueue.Queue) -> None:
    channel = backend_of(pg_queue).channel
    ran: list[Any] = []
    # A safety poll far longer than the test: pickup must come from LISTEN/NOTIFY and the reconnect.
    worker = polyqueue.Worker(pg_queue, concurrency=2, safety_poll=120)
    worker.register("job", lambda job: ran.append(job.id))
    with RunningWorker(worker):
        (old_pid,) = wait_until(lambda: listen_backends(pg_url, channel), 10, "the LISTEN connection")
        first = pg_queue.enqueue("job")
        wait_until(lambda: first in ran, 5, "a notified job to run")

        with raw_connect(pg_url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,)).fetchone() == (True,)
        # Enqueued while the listener may still be reconnecting: the poll after reconnecting finds it.
        second = pg_queue.enqueue("job")
        wait_until(lambda: second in ran, 5, "a job enqueued while LISTEN was down")

        new_pids = wait_until(lambda: listen_backends(pg_url, channel), 10, "a new LISTEN connection")
        assert old_pid not in new_pids
        third = pg_queue.enqueue("job")
        wait_until(lambda: third in ran, 5, "a job notified after the reconnect")
    assert sorted(ran) == [first, second, third]


def test_safety_poll_covers_a_lost_notification(pg_queue: polyqueue.Queue) -> None:
    ran: list[Any] = []
    worker = polyqueue.Worker(pg_queue, concurrency=1, safety_poll=1.0)
    worker.register("job", lambda job: ran.append(job.id))
    backend = backend_of(pg_queue)
    with RunningWorker(worker):
        time.sleep(0.5)  # let it go idle on LISTEN
        with backend.engine.begin() as conn:  # a row written without any NOTIFY
            new_id = conn.exec_driver_sql(
                f'INSERT INTO "{backend.jobs.name}" (queue, job_type, payload, priority, status, attempts, '
                "max_attempts, run_at, created_at, lease_token) "
                "VALUES ('default', 'job', 'null', 0, 'pending', 0, 5, now(), now(), 0) RETURNING id"
            ).scalar()
        wait_until(lambda: new_id in ran, 5, "the safety poll to find an un-notified job")


# ----------------------------------------------------------------------------
# Transactional enqueue
# ----------------------------------------------------------------------------
def test_enqueue_inside_a_raw_psycopg_transaction(pg_url: str, pg_queue: polyqueue.Queue) -> None:
    from psycopg.rows import dict_row

    with raw_connect(pg_url, row_factory=dict_row) as raw:
        raw.execute("SELECT 1")
        gone = pg_queue.enqueue("job", {"n": 1}, connection=raw)
        gone_many = pg_queue.enqueue_many([{"job_type": "job"}, {"job_type": "job", "dedupe_key": "k"}], connection=raw)
        raw.rollback()
        kept = pg_queue.enqueue("job", {"n": 2}, connection=raw)
        kept_many = pg_queue.enqueue_many(
            [{"job_type": "job", "dedupe_key": "k"}, {"job_type": "job", "dedupe_key": "k"}], connection=raw
        )
        assert pg_queue.get(kept) is None, "visible before the caller committed"
        raw.commit()
        raw.autocommit = True
        with pytest.raises(polyqueue.ConfigurationError, match="autocommit"):
            pg_queue.enqueue("job", connection=raw)
        with raw.transaction():
            in_block = pg_queue.enqueue("job", connection=raw)

    for job_id in [gone, *gone_many]:
        assert pg_queue.get(job_id) is None
    assert kept_many[0] == kept_many[1]
    assert {status_of(pg_queue, i) for i in (kept, kept_many[0], in_block)} == {"pending"}

    ran: list[Any] = []
    worker = polyqueue.Worker(pg_queue, concurrency=2)
    worker.register("job", lambda job: ran.append(job.payload))
    worker.run(burst=True)
    assert sorted(ran, key=str) == sorted([{"n": 2}, None, None], key=str), "a rolled-back job ran"


def test_enqueue_inside_a_raw_psycopg_async_transaction(pg_url: str, pg_queue: polyqueue.Queue) -> None:
    """AsyncQueue lends a caller's psycopg AsyncConnection to the asyncio dialect, as Queue lends a sync one."""
    import asyncio

    from psycopg.rows import dict_row

    u = sa.engine.make_url(pg_url)
    params = {"host": u.host, "port": u.port or 5432, "user": u.username, "dbname": u.database}

    async def main() -> tuple[list[Any], list[Any]]:
        aq = polyqueue.AsyncQueue(polyqueue.connect(pg_url, table_prefix=pg_queue.options["table_prefix"]))
        assert aq.native
        raws = [await psycopg.AsyncConnection.connect(**params, row_factory=dict_row) for _ in range(2)]
        try:

            async def one(raw: Any, n: int) -> list[Any]:
                ids = [await aq.enqueue("job", {"n": n}, connection=raw)]
                ids += await aq.enqueue_many([{"job_type": "job", "dedupe_key": f"k{n}"}] * 2, connection=raw)
                return ids

            # Two transactions enqueueing at once on one loop, each on its own connection.
            kept, gone = await asyncio.gather(one(raws[0], 1), one(raws[1], 2))
            assert await aq.get(kept[0]) is None, "visible before the caller committed"
            await raws[0].commit()
            await raws[1].rollback()
            await raws[0].set_autocommit(True)
            with pytest.raises(polyqueue.ConfigurationError, match="autocommit"):
                await aq.enqueue("job", connection=raws[0])
            with pytest.raises(polyqueue.ConfigurationError, match="connect_async"):
                pg_queue.enqueue("job", connection=raws[0])
            return kept, gone
        finally:
            for raw in raws:
                await raw.close()
            await aq.close()

    kept, gone = asyncio.run(main())
    assert kept[1] == kept[2] and {status_of(pg_queue, i) for i in kept} == {"pending"}
    assert all(pg_queue.get(i) is None for i in gone)
    assert pg_queue.stats()["pending"] == 2


def test_async_queue_on_the_thread_bridge_refuses_a_psycopg_async_connection(pg_url: str) -> None:
    import asyncio

    async def main() -> None:
        aq = polyqueue.connect_async(pg_url, table_prefix=unique_prefix(), async_driver="threads")
        assert not aq.native
        raw = await psycopg.AsyncConnection.connect(sa.engine.make_url(pg_url).render_as_string(hide_password=False)
                                                    .replace("postgresql+psycopg://", "postgresql://"))
        try:
            with pytest.raises(polyqueue.ConfigurationError, match="asyncio driver"):
                await aq.enqueue("job", connection=raw)
            with pytest.raises(polyqueue.InvalidPayload):
                await aq.enqueue("job", {1}, connection=raw)  # validation comes first, whatever the connection
        finally:
            await raw.close()
            await aq.close()

    asyncio.run(main())


def test_rolled_back_sqlalchemy_transaction_leaves_no_job(pg_queue: polyqueue.Queue) -> None:
    engine = backend_of(pg_queue).engine
    with engine.connect() as conn:
        txn = conn.begin()
        job_id = pg_queue.enqueue("job", connection=conn)
        txn.rollback()
    assert pg_queue.get(job_id) is None
    assert pg_queue.claim(limit=10) == []
    with pytest.raises(polyqueue.ConfigurationError, match="psycopg"):
        pg_queue.enqueue("job", connection=object())


# ----------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------
_MIGRATE_SCRIPT = """
import os, sys, time
import polyqueue
url, prefix, go = sys.argv[1:4]
q = polyqueue.connect(url, table_prefix=prefix)
while not os.path.exists(go):
    time.sleep(0.002)
q.migrate()
q.close()
"""


@pytest.mark.slow
def test_concurrent_migrate_from_two_processes(private_pg: PrivatePostgreSQL, tmp_path: Path) -> None:
    prefix = unique_prefix()
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_SCRIPT, private_pg.url, prefix, str(go)], stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    q = polyqueue.connect(private_pg.url, table_prefix=prefix)
    try:
        log_start = private_pg.log.stat().st_size
        time.sleep(1.0)  # both interpreters started and connected
        go.touch()
        errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        # Serialised by the advisory lock, the loser never even collides with the winner's DDL
        # (without it, both CREATE TABLE and the loser fails on a duplicate key, then retries).
        with open(private_pg.log, encoding="utf-8", errors="replace") as server_log:
            server_log.seek(log_start)
            assert "ERROR" not in server_log.read()
        with backend_of(q).engine.connect() as conn:
            versions = conn.exec_driver_sql(f'SELECT id, version FROM "{prefix}schema"').all()
            options = conn.exec_driver_sql("SELECT reloptions FROM pg_class WHERE relname = %s", (f"{prefix}jobs",))
            reloptions = options.scalar()
        assert versions == [(1, SCHEMA_VERSION)]
        assert "autovacuum_vacuum_scale_factor=0.02" in (reloptions or [])
        q.migrate()  # idempotent
        assert q.claim() == [] and q.enqueue("job") is not None
    finally:
        drop_schema(q)
        q.close()


# ----------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------
def test_serialization_failures_and_deadlocks_are_retried_a_bounded_number_of_times(pg_url: str) -> None:
    q = polyqueue.connect(pg_url, table_prefix=unique_prefix(), transient_retries=3)
    backend = backend_of(q)
    try:
        for sqlstate in ("40001", "40P01"):
            attempts: list[int] = []

            def flaky(conn: Any, sqlstate: str = sqlstate, attempts: list[int] = attempts) -> str:
                attempts.append(1)
                if len(attempts) < 3:  # the server itself raises the error, with its real SQLSTATE
                    conn.exec_driver_sql(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{sqlstate}'; END $$")
                return "ok"

            assert backend._run(flaky) == "ok"
            assert len(attempts) == 3

        always: list[int] = []

        def hopeless(conn: Any) -> None:
            always.append(1)
            conn.exec_driver_sql("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")

        with pytest.raises(polyqueue.BackendUnavailable):
            backend._run(hopeless)
        assert len(always) == 4  # the first try and 3 retries
    finally:
        q.close()


@pytest.mark.slow
def test_enqueue_during_an_outage_raises_and_stores_nothing(private_pg: PrivatePostgreSQL) -> None:
    with polyqueue.connect(private_pg.url, table_prefix=unique_prefix(), reconnect_seconds=0.5) as q:
        q.migrate()
        before = q.enqueue("job")
        private_pg.stop("immediate")
        try:
            with pytest.raises(polyqueue.BackendUnavailable) as info:
                q.enqueue("job")
            assert "unavailable" in str(info.value)
            with pytest.raises(polyqueue.BackendUnavailable):
                q.enqueue_many([{"job_type": "job"}] * 3)
        finally:
            private_pg.start()
        after = q.enqueue("job")
        assert q.stats()["pending"] == 2
        assert [j.id for j in q.claim(limit=5)] == [before, after]
        drop_schema(q)


@pytest.mark.slow
def test_worker_survives_terminated_connections_and_a_restart(private_pg: PrivatePostgreSQL) -> None:
    with polyqueue.connect(private_pg.url, table_prefix=unique_prefix()) as q:
        q.migrate()
        ran: list[Any] = []
        worker = polyqueue.Worker(q, concurrency=2, safety_poll=120)
        worker.register("job", lambda job: ran.append(job.id))
        with RunningWorker(worker):
            first = q.enqueue("job")
            wait_until(lambda: first in ran, 5, "the first job")
            killed = private_pg.psql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'polyqueue%' AND pid <> pg_backend_pid()"
            )
            assert int(killed) >= 2  # the pool's connection(s) and the LISTEN connection
            ids = q.enqueue_many([{"job_type": "job"} for _ in range(20)])
            wait_until(lambda: set(ids) <= set(ran), 10, "jobs after the connections were killed")

            # The idle worker's LISTEN connection dies with the server; with a 120 s safety
            # poll, only its reconnect (and the look at the table after it) can find this job.
            private_pg.restart("fast", down_for=1.0)
            late = q.enqueue("job")
            wait_until(lambda: late in ran, 10, "a job enqueued after a server restart")
        assert q.stats()["done"] == 22
        drop_schema(q)


_DRAIN_SCRIPT = """
import os, sys, time
import polyqueue
url, prefix, out = sys.argv[1:4]
q = polyqueue.connect(url, table_prefix=prefix, reconnect_seconds=2)
worker = polyqueue.Worker(q, concurrency=4, lease=5.0)
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def record(job):
    os.write(fd, f"{job.id} {time.time():.6f}\\n".encode())

worker.register("record", record)
worker.run()
"""


@pytest.mark.slow
def test_server_restart_in_the_middle_of_a_drain_loses_no_job(private_pg: PrivatePostgreSQL, tmp_path: Path) -> None:
    prefix = unique_prefix()
    with polyqueue.connect(private_pg.url, table_prefix=prefix) as q:
        q.migrate()
        ids: list[Any] = []
        for start in range(0, 5000, 1000):
            ids += q.enqueue_many([{"job_type": "record", "payload": {"n": n}} for n in range(start, start + 1000)])
        logs = [tmp_path / f"runs-{i}.txt" for i in range(2)]
        procs = [
            subprocess.Popen([sys.executable, "-c", _DRAIN_SCRIPT, private_pg.url, prefix, str(log)]) for log in logs
        ]
        try:
            wait_until(lambda: q.stats()["done"] >= 1000, 60, "the drain to get going")
            assert q.stats()["done"] < 4000, "the drain finished too fast to restart the server in its middle"
            # A crash, not a clean shutdown: in-flight statements die and nothing is flushed politely.
            private_pg.restart("immediate", down_for=1.5)
            back_at = time.time()
            wait_until(lambda: q.stats()["done"] == 5000, 90, "every job to be done after the restart")
        finally:
            for proc in procs:
                proc.terminate()
            codes = [proc.wait(20) for proc in procs]
        assert codes == [0, 0], "workers did not shut down cleanly on SIGTERM"

        stats = q.stats()
        assert (stats["pending"], stats["processing"], stats["dead"]) == (0, 0, 0), stats
        runs: dict[int, list[float]] = collections.defaultdict(list)
        for log in logs:
            for line in log.read_text().splitlines():
                job_id, started = line.split()
                runs[int(job_id)].append(float(started))
        assert set(runs) == set(ids), "some jobs never ran"
        repeated = {job_id: times for job_id, times in runs.items() if len(times) > 1}
        # At-least-once: only jobs in flight at the restart may run twice.
        assert len(repeated) <= 2 * 4 * 2, repeated
        assert all(min(times) < back_at for times in repeated.values()), repeated
        print(f"restart drain: {len(repeated)} job(s) ran twice: {json.dumps(sorted(repeated))}")
        drop_schema(q)


def statements_sent(server: PrivatePostgreSQL) -> int:
    """Statements the server ran for polyqueue so far, from pg_stat_statements (our own queries excluded)."""
    return int(
        server.psql(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat_statements%' AND query NOT ILIKE '%pg_backend_pid%'"
        )
    )


def quiet_count(server: PrivatePostgreSQL, quiet: float = 1.0, timeout: float = 30.0) -> int:
    """:func:`statements_sent` once it has not moved for ``quiet`` seconds (a loaded machine starts up slowly)."""
    deadline = time.monotonic() + timeout
    last = statements_sent(server)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = statements_sent(server)
        if now == last:
            return now
        last = now
    raise AssertionError(f"statements kept coming for {timeout:.0f}s")


@pytest.mark.slow
def test_an_idle_worker_costs_the_database_next_to_nothing(private_pg: PrivatePostgreSQL) -> None:
    with polyqueue.connect(private_pg.url, table_prefix=unique_prefix()) as q:
        q.migrate()
        worker = polyqueue.Worker(q, concurrency=4)
        worker.register("job", lambda job: None)
        with RunningWorker(worker):
            before = quiet_count(private_pg)  # startup: first claim, LISTEN, the poll after it, however slow
            time.sleep(6.0)
            idle = statements_sent(private_pg) - before
            # Still awake: a job is picked up at once.
            job_id = q.enqueue("job")
            wait_until(lambda: status_of(q, job_id) == "done", 5, "the job to run")
        assert statements_sent(private_pg) > before + idle, "pg_stat_statements did not see the job's statements"
        assert idle <= 0.2 * 6, f"an idle worker sent {idle} statements in 6 s"
        print(f"idle worker: {idle} statement(s) in 6 s")
        drop_schema(q)

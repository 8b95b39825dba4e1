"""MySQL/MariaDB-specific behaviour, on real servers: plans, types, ids, faults, many processes.

The general semantics are the conformance suite's; these tests cover what the
MySQL dialect does differently. Tests that kill, restart or reconfigure a
server use a private MariaDB (tests/servers_mysql.py), never the shared one.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import polyqueue
from polyqueue import json_codec
from polyqueue.backends.mysql import _EXACT_COLLATIONS, _SQL_MODE, MySQLBackend, check_server_version
from polyqueue.backends.sql import SCHEMA_VERSION, ErrorKind
from polyqueue.testing import drop_schema, unique_prefix

MakeQueue = Callable[..., polyqueue.Queue]


def mysql_backend(q: polyqueue.Queue) -> MySQLBackend:
    assert isinstance(q.backend, MySQLBackend)
    return q.backend


def explain(q: polyqueue.Queue, stmt: Any) -> list[dict[str, Any]]:
    """EXPLAIN rows of a SQLAlchemy statement, as the server plans it."""
    backend = mysql_backend(q)
    sql = str(stmt.compile(dialect=backend.engine.dialect, compile_kwargs={"literal_binds": True}))
    with backend.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.exec_driver_sql("EXPLAIN " + sql.replace("%", "%%"))]


def handler_reads(conn: sa.Connection) -> int:
    """Rows this session has read through the storage engine so far."""
    rows = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Handler_read%%'").all()
    return sum(int(value) for name, value in rows if name != "Handler_read_first")


# ----------------------------------------------------------------------------
# Connecting
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["mysql", "mysql+pymysql", "mariadb+pymysql"])
def test_every_url_scheme_opens_the_mysql_backend(mysql_url: str, scheme: str) -> None:
    url = scheme + "://" + mysql_url.split("://", 1)[1]
    with polyqueue.connect(url, table_prefix=unique_prefix()) as q:
        assert isinstance(q.backend, MySQLBackend)
        assert q.backend.db_now().tzinfo is not None
        assert q.backend.server_version()


def test_server_version_gate() -> None:
    for ok in ("8.0.1", "8.0.36-0ubuntu0.22.04.1", "8.4.0", "9.1.0", "10.6.0-MariaDB", "10.11.19-MariaDB-0+deb12u1",
               "11.4.2-MariaDB-log", "5.5.5-10.6.12-MariaDB"):  # fmt: skip
        check_server_version(ok)
    for old in ("8.0.0", "5.7.44-log", "10.5.23-MariaDB", "10.3.39-MariaDB-0+deb10u1", "5.5.5-10.4.1-MariaDB"):
        with pytest.raises(polyqueue.ConfigurationError, match="SKIP LOCKED"):
            check_server_version(old)


def test_session_and_table_settings(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    with backend.engine.connect() as conn:
        sql_mode, zone = conn.exec_driver_sql("SELECT @@SESSION.sql_mode, @@SESSION.time_zone").one()
        isolation = conn.exec_driver_sql("SHOW SESSION VARIABLES LIKE '%%_isolation'").all()
        charset = conn.exec_driver_sql("SELECT @@character_set_connection").scalar()
        collation = conn.exec_driver_sql(
            "SELECT TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (backend.jobs.name,),
        ).scalar()
    assert sql_mode == _SQL_MODE
    assert zone == "+00:00"
    assert {value for name, value in isolation if name in ("tx_isolation", "transaction_isolation")} == {
        "READ-COMMITTED"
    }
    assert charset == "utf8mb4"
    assert collation in _EXACT_COLLATIONS


# ----------------------------------------------------------------------------
# Plans: the locking read walks an index in claim order; history does not slow it
# ----------------------------------------------------------------------------
def test_claim_locking_read_uses_the_ready_index_in_claim_order(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    q.enqueue_many([{"job_type": "t", "priority": i % 3} for i in range(300)])
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE TABLE `{backend.jobs.name}`").all()
    # The other row is the probe of the per-queue settings table (flow control, pause): empty here.
    (plan,) = [row for row in explain(q, backend.ready_in("default", "t", 10)) if row["table"] == backend.jobs.name]
    assert plan["key"] == f"{backend.prefix}jobs_ready", plan
    assert "filesort" not in (plan["Extra"] or ""), plan
    assert "temporary" not in (plan["Extra"] or ""), plan


def test_finished_rows_do_not_lengthen_the_claim_scan(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    q.enqueue_many([{"job_type": "t"} for _ in range(10_000)])
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE `{backend.jobs.name}` SET status = 'done', finished_at = UTC_TIMESTAMP(6)")
    q.enqueue_many([{"job_type": "t", "priority": i % 4} for i in range(50)])
    with backend.engine.begin() as conn:
        before = handler_reads(conn)
        baseline = handler_reads(conn) - before
        start = handler_reads(conn)
        ids = [r.id for r in conn.execute(backend.ready_in("default", "t", 5))]
        reads = handler_reads(conn) - start - baseline
    assert len(ids) == 5
    assert reads <= 20, f"the claim read {reads} rows for 5 jobs among 10,000 finished ones"


def test_fenced_updates_do_not_scan_the_table(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    q.enqueue_many([{"job_type": "t"} for _ in range(3000)])
    claimed = q.claim(limit=500, lease=60)
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE TABLE `{backend.jobs.name}`").all()
    j = backend.jobs
    (plan,) = explain(q, sa.update(j).where(backend._fence(claimed[:20])).values(status="done"))
    assert plan["type"] != "ALL", plan


def test_claim_across_queues_keeps_global_order_and_skips_locked_rows(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    a1, a5 = q.enqueue("t", queue="a", priority=1), q.enqueue("t", queue="a", priority=5)
    b3, b4 = q.enqueue("t", queue="b", priority=3), q.enqueue("t", queue="b", priority=4)
    assert [job.id for job in q.claim(["a", "b"], limit=3)] == [a5, b4, b3]
    b2 = q.enqueue("t", queue="b", priority=2)
    with backend.engine.connect() as other, other.begin():
        other.exec_driver_sql(f"SELECT id FROM `{backend.jobs.name}` WHERE id = %s FOR UPDATE", (a1,)).all()
        started = time.monotonic()
        assert [job.id for job in q.claim(["b", "a"], limit=5)] == [b2]
        # Waiting would take innodb_lock_wait_timeout (50 s): 20 s leaves a loaded machine room and still tells.
        assert time.monotonic() - started < 20.0, "the claim waited for a locked row instead of skipping it"
    assert [job.id for job in q.claim(["a"], limit=5)] == [a1]


# ----------------------------------------------------------------------------
# Types: exact utf8mb4 names, text payloads, microsecond UTC times
# ----------------------------------------------------------------------------
NAMES = ["🍕", "🍔", "`q`; DROP TABLE x; --", 'O\'Brien "q" \\', "Q", "q", "q ", "ｑ", "q\u0301", "é", "e"]  # noqa: RUF001


def test_names_are_exact_utf8mb4_and_payloads_round_trip(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    # Queue names with outer whitespace are refused everywhere; job types and dedupe keys keep "q " apart from "q"
    # (MySQL's PAD SPACE collations would compare them equal).
    queue_of = {name: name if name == name.strip() else "padded" for name in NAMES}
    payload = {"emoji": "🦄🍕", "quotes": "'\"`\\", "nul": "a\x00b", "cjk": "漢字", "n": [1, 2.5, None, True]}
    ids = {name: q.enqueue(name, payload, queue=queue_of[name], dedupe_key=name) for name in NAMES}
    assert len(set(ids.values())) == len(NAMES), "two distinct names collided"
    for name, job_id in ids.items():
        (job,) = q.claim(queue_of[name], limit=5)
        assert (job.id, job.queue, job.job_type, job.dedupe_key, job.payload) == (
            job_id, queue_of[name], name, name, payload,
        )  # fmt: skip
    by_queue = q.stats_by_queue()
    assert sorted(by_queue) == sorted(set(queue_of.values()))
    with pytest.raises(polyqueue.InvalidArgument):
        q.enqueue("t", queue="q ")


def test_migrating_a_version_1_table_widens_its_text_columns(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend: Any = q.backend
    table = backend.jobs.name

    def column_types() -> dict[str, str]:
        with backend.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                (table,),
            )
            return {name.lower(): kind.lower() for name, kind in rows}

    with backend.engine.begin() as conn:  # the table as version 1 made it
        conn.exec_driver_sql(
            f"ALTER TABLE `{table}` MODIFY payload TEXT NOT NULL, MODIFY last_error TEXT NULL, "
            "MODIFY errors TEXT NULL, MODIFY result TEXT NULL"
        )
        conn.execute(sa.update(backend.schema_table).values(version=1))
    kept = q.enqueue("t", {"kept": True})
    assert column_types()["payload"] == "text"
    q.migrate()
    types = column_types()
    assert [types[c] for c in ("payload", "last_error", "errors", "result")] == ["longtext"] * 4
    assert q.get(kept).payload == {"kept": True}  # type: ignore[union-attr]
    with backend.engine.connect() as conn:
        assert conn.execute(sa.select(backend.schema_table.c.version)).scalar() == SCHEMA_VERSION


def test_times_are_utc_with_microseconds(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    plus_five = timezone(timedelta(hours=5, minutes=30))
    when = datetime(2031, 2, 3, 4, 5, 6, 123457, tzinfo=plus_five)
    job_id = q.enqueue("t", run_at=when)
    stored = q.require(job_id)
    assert stored.run_at == when and stored.run_at.tzinfo == UTC
    assert stored.run_at.microsecond == 123457
    created = [q.require(q.enqueue("t")).created_at for _ in range(5)]
    assert any(c is not None and c.microsecond for c in created)
    q.enqueue("t", queue="lease")
    before = q.backend.db_now()
    (job,) = q.claim("lease", lease=2.5)
    assert job.lease_expires_at is not None
    assert timedelta(seconds=2.5) <= job.lease_expires_at - before < timedelta(seconds=3.5)
    assert q.require(job.id).lease_expires_at == job.lease_expires_at


# ----------------------------------------------------------------------------
# Bulk enqueue: ids in input order, whichever auto-increment mode the server runs
# ----------------------------------------------------------------------------
def mixed_batch(tag: str, n: int) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        job: dict[str, Any] = {"job_type": "t", "payload": {"tag": tag, "i": i, "pad": "x" * (i % 50)}}
        if i % 97 == 0:
            job["dedupe_key"] = f"{tag}-{i}"
        if i % 101 == 0:
            job["delay"] = 30
        elif i % 103 == 0:
            job["run_at"] = datetime(2030, 1, 1, tzinfo=UTC)
        jobs.append(job)
    return jobs


def assert_ids_match(q: polyqueue.Queue, jobs: list[dict[str, Any]], ids: list[Any]) -> None:
    assert len(ids) == len(jobs) == len(set(ids))
    backend = mysql_backend(q)
    j = backend.jobs
    with backend.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(j.c.id, j.c.payload).where(j.c.id.in_(ids))).all())
    assert len(stored) == len(ids)
    for job, job_id in zip(jobs, ids, strict=True):
        assert json_codec.loads(stored[job_id]) == job["payload"], f"id {job_id} holds another job"


def test_bulk_enqueue_ids_match_rows(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    jobs = mixed_batch("a", 2600)
    ids = q.enqueue_many(jobs)
    assert_ids_match(q, jobs, ids)
    (single,) = q.enqueue_many([{"job_type": "t", "payload": {"one": 1}}])
    assert q.require(single).payload == {"one": 1}


def test_transactional_enqueue_commits_and_rolls_back_with_the_caller(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    engine = sa.create_engine(mysql_url)
    try:
        with engine.begin() as conn:
            kept = q.enqueue_many([{"job_type": "kept"}, {"job_type": "kept"}], connection=conn)
        with pytest.raises(RuntimeError), engine.begin() as conn:
            gone = q.enqueue("gone", connection=conn)
            raise RuntimeError("the application's transaction fails")
        # A batch the server rejects half-way leaves nothing in the caller's transaction,
        # even though MySQL undoes only the failing statement.
        with engine.begin() as conn:
            conn.exec_driver_sql(f"SELECT 1 FROM `{mysql_backend(q).jobs.name}` LIMIT 1").all()
            with pytest.raises(polyqueue.PolyqueueError):
                q.enqueue_many(
                    [{"job_type": "half"}, {"job_type": "half", "dedupe_key": "k", "delay": 1e13}], connection=conn
                )
        assert [q.require(i).job_type for i in kept] == ["kept", "kept"]
        assert q.get(gone) is None
        assert q.stats()["pending"] == 2
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------
# Faults on the shared server that disturb nobody: lock waits and deadlocks
# ----------------------------------------------------------------------------
def test_lock_wait_timeout_is_rolled_back_and_retried(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    sa.event.listen(
        backend.engine, "connect", lambda dbapi_conn, _rec: dbapi_conn.query("SET SESSION innodb_lock_wait_timeout = 1")
    )
    backend.engine.dispose()
    job_id = q.enqueue("t")
    with backend.engine.connect() as other:
        other.begin()
        other.exec_driver_sql(f"SELECT id FROM `{backend.jobs.name}` WHERE id = %s FOR UPDATE", (job_id,)).all()
        threading.Timer(1.6, other.rollback).start()
        started = time.monotonic()
        assert q.cancel(job_id) is True
        assert time.monotonic() - started >= 1.0
    assert q.require(job_id).status == "cancelled"


def test_a_killed_connection_is_replaced_without_an_error(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    backend.engine.dispose()
    with backend.engine.connect() as conn:
        victim = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
    killer = sa.create_engine(mysql_url, poolclass=sa.pool.NullPool)
    with killer.connect() as conn:
        conn.exec_driver_sql(f"KILL CONNECTION {int(victim)}")
    killer.dispose()
    job_id = q.enqueue("t")
    assert q.require(job_id).status == "pending"


def test_a_real_deadlock_is_classified_transient(fresh_queue: MakeQueue, mysql_url: str) -> None:
    q = fresh_queue(mysql_url)
    backend = mysql_backend(q)
    first, second = q.enqueue("t"), q.enqueue("t")
    table = backend.jobs.name
    errors: list[sa.exc.DBAPIError] = []

    def lock(conn: sa.Connection, a: Any, b: Any, barrier: threading.Barrier) -> None:
        try:
            with conn.begin():
                conn.exec_driver_sql(f"UPDATE `{table}` SET priority = 1 WHERE id = %s", (a,))
                barrier.wait()
                conn.exec_driver_sql(f"UPDATE `{table}` SET priority = 2 WHERE id = %s", (b,))
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    barrier = threading.Barrier(2)
    with backend.engine.connect() as c1, backend.engine.connect() as c2:
        threads = [
            threading.Thread(target=lock, args=(c1, first, second, barrier)),
            threading.Thread(target=lock, args=(c2, second, first, barrier)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(errors) == 1
    assert backend.classify(errors[0]) == ErrorKind.TRANSIENT


# ----------------------------------------------------------------------------
# Many processes on the shared server
# ----------------------------------------------------------------------------
WORKER_SCRIPT = """
import logging, sys, threading, time
import polyqueue
url, prefix, out, burst, lease, pause = sys.argv[1:7]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
q = polyqueue.connect(url, table_prefix=prefix)
worker = polyqueue.Worker(q, concurrency=8, lease=float(lease), poll_interval=(0.02, 0.2))
lock = threading.Lock()
runs = open(out, "a", buffering=1)
@worker.handler("t")
def run(job):
    if float(pause):
        time.sleep(float(pause))
    with lock:
        runs.write(f"{job.id}\\n")
worker.run(burst=burst == "1")
q.close()
"""


def start_workers(url: str, prefix: str, folder: Path, count: int, *, burst: bool, lease: float, pause: float
                  ) -> list[tuple[subprocess.Popen[str], Path]]:  # fmt: skip
    started = []
    for n in range(count):
        out = folder / f"runs-{n}.txt"
        args = [
            sys.executable,
            "-c",
            WORKER_SCRIPT,
            url,
            prefix,
            str(out),
            "1" if burst else "0",
            str(lease),
            str(pause),
        ]
        started.append((subprocess.Popen(args, stderr=subprocess.PIPE, text=True), out))
    return started


def collect_runs(workers: list[tuple[subprocess.Popen[str], Path]], timeout: float) -> tuple[Counter[int], str]:
    logs = []
    for proc, _ in workers:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        logs.append(err)
    runs: Counter[int] = Counter()
    for _, out in workers:
        if out.exists():
            runs.update(int(line) for line in out.read_text().split())
    return runs, "\n".join(logs)


@pytest.mark.slow
def test_four_processes_drain_5000_jobs_each_once(mysql_url: str, tmp_path: Path) -> None:
    prefix = unique_prefix()
    q = polyqueue.connect(mysql_url, table_prefix=prefix)
    try:
        q.migrate()
        ids = q.enqueue_many([{"job_type": "t", "payload": {"i": i}, "priority": i % 3} for i in range(5000)])
        workers = start_workers(mysql_url, prefix, tmp_path, 4, burst=True, lease=30.0, pause=0.0)
        runs, logs = collect_runs(workers, timeout=120)
        assert all(proc.returncode == 0 for proc, _ in workers), logs
        for marker in ("Deadlock", "1213", "1205", "unavailable", "lease lost", "Traceback"):
            assert marker not in logs, logs
        assert set(runs) == set(ids)
        assert max(runs.values()) == 1, "a job ran twice"
        assert q.stats()["done"] == 5000
    finally:
        drop_schema(q)
        q.close()


# ----------------------------------------------------------------------------
# A private MariaDB: interleaved auto-increment, outages, restarts
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_mariadb() -> Iterator[Any]:
    servers_mysql = pytest.importorskip("servers_mysql")
    try:
        server = servers_mysql.PrivateMariaDB({"innodb_autoinc_lock_mode": 2})
        server.start()
    except servers_mysql.ServerUnavailable as exc:
        pytest.skip(f"no private MariaDB: {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.mark.xdist_group("private_mariadb")
def test_bulk_ids_are_right_under_interleaved_autoinc_mode(private_mariadb: Any, fresh_queue: MakeQueue) -> None:
    assert private_mariadb.sql("SELECT @@innodb_autoinc_lock_mode") == [(2,)]
    q = fresh_queue(private_mariadb.url)
    batches = {f"t{n}": mixed_batch(f"t{n}", 3000) for n in range(3)}
    results: dict[str, list[Any]] = {}

    def produce(tag: str) -> None:
        results[tag] = q.enqueue_many(batches[tag])

    def trickle() -> None:
        for i in range(300):
            q.enqueue("t", {"trickle": i})

    threads = [threading.Thread(target=produce, args=(tag,)) for tag in batches]
    threads.append(threading.Thread(target=trickle))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for tag, jobs in batches.items():
        assert_ids_match(q, jobs, results[tag])
    backend = mysql_backend(q)
    with backend.engine.connect() as conn:
        tagged = conn.execute(sa.select(sa.func.count()).where(backend.jobs.c.insert_tag.is_not(None))).scalar()
    assert tagged == sum(1 for jobs in batches.values() for job in jobs if not {"dedupe_key", "run_at"} & set(job))


@pytest.mark.xdist_group("private_mariadb")
def test_enqueue_during_an_outage_raises_backend_unavailable(private_mariadb: Any, fresh_queue: MakeQueue) -> None:
    q = fresh_queue(private_mariadb.url, reconnect_seconds=0.5)
    q.enqueue("before")
    private_mariadb.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(polyqueue.BackendUnavailable) as caught:
            q.enqueue("during")
        assert time.monotonic() - started < 10
        assert str(private_mariadb.port) in str(caught.value)
    finally:
        private_mariadb.start()
    q.enqueue("after")
    assert q.stats()["pending"] == 2


@pytest.mark.slow
@pytest.mark.xdist_group("private_mariadb")
def test_server_killed_and_restarted_mid_drain_loses_no_job(private_mariadb: Any, tmp_path: Path) -> None:
    url, prefix = private_mariadb.url, unique_prefix()
    q = polyqueue.connect(url, table_prefix=prefix, reconnect_seconds=30)
    try:
        q.migrate()
        ids = q.enqueue_many([{"job_type": "t", "payload": {"i": i}} for i in range(3000)])
        workers = start_workers(url, prefix, tmp_path, 2, burst=False, lease=3.0, pause=0.003)
        deadline = time.monotonic() + 30
        while q.stats()["done"] < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert q.stats()["done"] < len(ids) - 600, "the drain finished before the server could be killed"
        private_mariadb.restart("immediate", down_for=1.5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stats = q.stats()
            if stats["done"] + stats["dead"] == len(ids):
                break
            time.sleep(0.2)
        for proc, _ in workers:
            proc.terminate()
        runs, logs = collect_runs(workers, timeout=30)
        assert q.stats()["done"] == len(ids), (q.stats(), logs[-3000:])
        assert set(runs) == set(ids), "a job never ran"
    finally:
        drop_schema(q)
        q.close()


# --- wake-ups: the process's long poll inside the server ---------------------------------------------
def _wakeup_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"polyqueue-mysql-wakeups-{prefix}"]


def test_an_idle_worker_is_woken_by_an_enqueue_not_by_its_poll(fresh_queue: MakeQueue, mysql_url: str) -> None:
    """Polling and safety poll are a minute long here: only the server-side long poll can start the job in time."""
    q = fresh_queue(mysql_url, mysql_wakeups="server")
    started = threading.Event()
    worker = polyqueue.Worker(q, concurrency=2, safety_poll=60, poll_interval=(60, 60))
    worker.register("ping", lambda job: started.set())
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not _wakeup_threads(q.options["table_prefix"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _wakeup_threads(q.options["table_prefix"]), "the worker did not start the wake-up poll"
        time.sleep(0.5)  # the worker is past its first look and waits
        q.enqueue("ping")
        assert started.wait(20), "the idle worker was not woken by the enqueue"
    finally:
        worker.stop()
        runner.join(30)
    deadline = time.monotonic() + 10
    while _wakeup_threads(q.options["table_prefix"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _wakeup_threads(q.options["table_prefix"]), "the last subscriber's close left the poll running"


def test_idle_workers_of_a_process_share_one_long_poll(fresh_queue: MakeQueue, mysql_url: str) -> None:
    from polyqueue.backends.base import WakeupRequest

    q = fresh_queue(mysql_url, mysql_wakeups="server")
    other = polyqueue.connect(mysql_url, table_prefix=q.options["table_prefix"], mysql_wakeups="server")
    sources = [queue.backend.wakeup_source(WakeupRequest(["default"])) for queue in (q, q, other)]
    try:
        assert all(s is not None for s in sources)
        assert len(_wakeup_threads(q.options["table_prefix"])) == 1
        q.enqueue("x")
        assert all(s.wait(20) for s in sources if s is not None), "a subscriber missed the enqueue"
        for source in sources:
            assert source is not None
            # At most one more wake-up (the poll's first answer may count as one), then quiet: nothing changes.
            extra = 0
            while source.wait(0.5) and extra < 5:
                extra += 1
            assert extra <= 1, "woken again and again with nothing enqueued"
    finally:
        for s in sources:
            if s is not None:
                s.close()
        other.close()


def test_the_wake_up_procedure_comes_and_goes_with_the_schema(fresh_queue: MakeQueue, mysql_url: str) -> None:
    from polyqueue.backends.base import WakeupRequest
    from polyqueue.backends.mysql_wakeups import procedure_name

    q = fresh_queue(mysql_url, mysql_wakeups="server")
    backend = mysql_backend(q)
    q.migrate()  # again: idempotent, the procedure already there
    assert backend._wakeup_procedure_exists()
    drop_schema(q)
    assert not backend._wakeup_procedure_exists()
    q.migrate()
    backend._run_single(lambda conn: conn.exec_driver_sql(f"DROP PROCEDURE `{procedure_name(backend.prefix)}`"))
    # A user without CREATE ROUTINE has no procedure: its workers poll, as before.
    assert backend.wakeup_source(WakeupRequest(["default"])) is None


def test_server_wake_ups_are_opt_in_and_the_option_is_checked(fresh_queue: MakeQueue, mysql_url: str) -> None:
    from polyqueue.backends.base import WakeupRequest

    q = fresh_queue(mysql_url)
    assert mysql_backend(q)._wakeup_procedure_exists(), "migrate prepares the procedure for workers that opt in"
    assert q.backend.wakeup_source(WakeupRequest(["default"])) is None, "by default idle workers poll"
    assert not _wakeup_threads(q.options["table_prefix"])
    with pytest.raises(polyqueue.ConfigurationError, match="mysql_wakeups"):
        polyqueue.connect(mysql_url, mysql_wakeups="sometimes")

"""What the conformance suite does not cover: URLs, the key layout, cross-slot claim order, typed claims' cost,
wake-ups, WAIT, and the resends that make a lost reply harmless."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from polyqueue_redis import RedisBackend
from polyqueue_redis.layout import parse_job_id, queue_tag, to_us
from polyqueue_redis.store import Call
from private_cluster import PrivateRedis, ServerUnavailable, free_port
from redis_urls import cluster_url, single_node_url

import polyqueue
from polyqueue import policy
from polyqueue.backends.base import (
    DeclareSchedules,
    DueProbe,
    FireRequest,
    FireResult,
    ReadyCount,
    ScheduleSpec,
    SettleRequest,
    WakeupRequest,
)
from polyqueue.job import NewJob
from polyqueue.testing import backends_required, unique_prefix

Opener = Callable[..., polyqueue.Queue]


@pytest.fixture
def opener() -> Iterator[Opener]:
    """``opener(url, **options)``: a migrated queue on a fresh prefix, dropped afterwards."""
    opened: list[polyqueue.Queue] = []

    def make(url: str, **options: Any) -> polyqueue.Queue:
        options.setdefault("table_prefix", unique_prefix())
        q = polyqueue.connect(url, **options)
        q.migrate()
        opened.append(q)
        return q

    yield make
    for q in opened:
        try:
            q.backend.drop_schema()  # type: ignore[attr-defined]
        finally:
            q.close()


@pytest.fixture(params=["cluster", "one-node"])
def url(request: pytest.FixtureRequest) -> str:
    """The shared test cluster, then the shared single node."""
    return cluster_url() if request.param == "cluster" else single_node_url()


@pytest.fixture
def q(opener: Opener, url: str) -> polyqueue.Queue:
    """A migrated queue on the cluster and on one node."""
    return opener(url)


@pytest.fixture
def cq(opener: Opener) -> polyqueue.Queue:
    """A migrated queue on the shared cluster."""
    return opener(cluster_url())


def _backend(q: polyqueue.Queue) -> RedisBackend:
    assert isinstance(q.backend, RedisBackend)
    return q.backend


# --- discovery and URLs ---------------------------------------------------------------------------
def test_both_url_forms_are_served_by_the_installed_plugin(q: polyqueue.Queue) -> None:
    assert isinstance(q.backend, RedisBackend)
    assert q.plugins.has_plugin("redis")
    assert q.capabilities == {"dedupe", "priorities", "delayed", "notify", "multi_process", "periodic", "transfer"}
    assert "transactional_enqueue" not in q.capabilities


def test_a_cluster_url_may_name_several_nodes_and_masks_the_password() -> None:
    first = cluster_url()
    q = polyqueue.connect("redis+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/?wait_timeout=3")
    try:
        backend = _backend(q)
        assert backend.nodes == [("127.0.0.1", 7000), ("127.0.0.1", 7001), ("127.0.0.1", 7002)]
        assert backend.describe() == "redis+cluster://:***@127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002/"
        assert "s3cret" not in repr(q) and "s3cret" not in repr(backend.store.described)
    finally:
        q.close()
    same = polyqueue.connect("redis+cluster:///?host=127.0.0.1:7000&host=127.0.0.1:7001")
    assert _backend(same).nodes == [("127.0.0.1", 7000), ("127.0.0.1", 7001)]
    assert first.startswith("redis+cluster://")


def test_defaults_wait_for_a_replica_on_a_cluster_and_not_on_one_node() -> None:
    assert _backend(polyqueue.connect("redis+cluster://127.0.0.1:7000/")).wait_replicas == 1
    assert _backend(polyqueue.connect("redis://127.0.0.1:6379/2")).wait_replicas == 0
    assert _backend(polyqueue.connect("redis+cluster://127.0.0.1:7000/?wait_replicas=0")).wait_replicas == 0


@pytest.mark.parametrize(
    "bad",
    [
        "redis://127.0.0.1:6379/x",
        "redis+cluster://127.0.0.1:7000/2",
        "redis+sentinel://127.0.0.1/",
        "redis://h1:6379,h2:6379/0",
        "redis://:s3cret@127.0.0.1:6379/0?colour=blue",
        "redis+cluster://:s3cret@127.0.0.1:7000/?wait_replicas=-1",
        "redis+cluster://:s3cret@127.0.0.1:7000/?wait_timeout=soon",
        "redis+cluster://:s3cret@h1:port,h2:7001/",
        "redis+cluster://127.0.0.1:7000/?host=127.0.0.1:7001",
    ],
)
def test_urls_a_redis_backend_cannot_use_are_configuration_errors(bad: str) -> None:
    with pytest.raises(polyqueue.ConfigurationError) as info:
        polyqueue.connect(bad)
    assert "s3cret" not in str(info.value)


def test_an_unreachable_server_is_backend_unavailable_without_the_password() -> None:
    port = free_port()
    for url in (f"redis+cluster://:s3cret@127.0.0.1:{port}/", f"redis://:s3cret@127.0.0.1:{port}/0"):
        q = polyqueue.connect(url, reconnect_seconds=0.3)
        with pytest.raises(polyqueue.BackendUnavailable) as info:
            q.migrate()
        assert "s3cret" not in str(info.value) and str(port) in str(info.value)


def test_a_password_protected_redis_works_and_its_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    try:
        server = PrivateRedis(password="s3cret-pw").__enter__()
    except ServerUnavailable as exc:
        if backends_required():
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        good = server.url.replace("redis://", "redis://:s3cret-pw@")
        q = polyqueue.connect(good)
        q.migrate()
        q.enqueue("t")
        (job,) = q.claim()
        q.complete(job)
        assert q.stats()["done"] == 1
        assert "s3cret-pw" not in repr(q) + q.backend.describe()
        q.close()
        for bad in (server.url, server.url.replace("redis://", "redis://:wrong-pw@")):
            # A missing or wrong password is the URL's fault: refused at once, never retried as an outage.
            other = polyqueue.connect(bad, reconnect_seconds=60)
            started = time.monotonic()
            with pytest.raises(polyqueue.ConfigurationError) as info:
                other.migrate()
            assert time.monotonic() - started < 30
            assert "s3cret-pw" not in str(info.value) and "wrong-pw" not in str(info.value)
        assert "s3cret-pw" not in caplog.text and "wrong-pw" not in caplog.text
    finally:
        server.__exit__(None, None, None)


def test_every_call_before_migrate_says_to_migrate(url: str) -> None:
    bare = polyqueue.connect(url, table_prefix=unique_prefix())
    for call in (
        lambda: bare.get("default:1"),
        lambda: bare.cancel("default:1"),
        bare.stats,
        bare.stats_by_type,
        bare.depth,
        bare.dead_jobs,
        bare.replay,
        lambda: bare.replay(["default:1"]),
        lambda: bare.purge(older_than=0),
        bare.claim,
        lambda: bare.claim(["a", "b"]),
        lambda: bare.enqueue("t"),
        lambda: bare.backend.seconds_until_due(DueProbe(["default"])),
        bare.schedules,
        lambda: bare.fire_history("s"),
        lambda: bare.backend.declare_schedules(DeclareSchedules([], "w")),
        lambda: bare.backend.fire(FireRequest("s", "2026-01-01T00:00:00", datetime(2026, 1, 1, tzinfo=UTC), _tick())),
    ):
        with pytest.raises(polyqueue.SchemaMissing, match="migrate"):
            call()
    bare.close()


# --- the key layout -----------------------------------------------------------------------------------
HOSTILE = ["default", "emails", "it's {tagged}", "}{", "x" * 255, "😀 queue", "a:b:c"]


def _keys(q: polyqueue.Queue) -> list[str]:
    backend = _backend(q)
    keys: list[str] = []
    for node in backend.store.masters():
        for pattern in backend.layout.patterns():
            keys.extend(node.scan_iter(match=pattern, count=1000))
    return keys


def test_every_key_of_a_queue_shares_its_slot_and_drop_schema_removes_every_key(
    opener: Opener, cq: polyqueue.Queue
) -> None:
    other = opener(cluster_url())
    other.enqueue("t")
    for name in HOSTILE:
        cq.enqueue_many(
            [
                {"job_type": "a", "queue": name, "dedupe_key": "k", "priority": 3},
                {"job_type": "b:c", "queue": name, "delay": 3600},
                {"job_type": "a", "queue": name},
            ]
        )
        (job,) = cq.claim(name, lease=60)
        cq.fail(job, "boom", dead=True)
        slot, at = _slot(0)
        assert cq.backend.fire(FireRequest("it's {a} schedule}", slot, at, _tick(name))).fired
    spec = ScheduleSpec("it's {a} schedule}", "* * * * *", "UTC", "tick", HOSTILE[2], 0, "{}", "latest")
    cq.backend.declare_schedules(DeclareSchedules([spec], "w"))
    client = _backend(cq).store.client
    slots: dict[str, set[int]] = {}
    for key in _keys(cq):
        slots.setdefault(key.split("}", 1)[0], set()).add(client.keyslot(key))
    assert all(len(found) == 1 for found in slots.values()), slots
    assert len(slots) == len(HOSTILE) + 1  # one tag per queue, plus the database's own keys
    _backend(cq).drop_schema()
    assert _keys(cq) == []
    assert other.stats()["pending"] == 1, "another prefix is untouched"


def test_queue_tags_are_the_plain_name_or_a_hash() -> None:
    assert queue_tag("emails") == "emails" and queue_tag("q.1-x_y") == "q.1-x_y"
    assert queue_tag("it's") != queue_tag("it's ") and queue_tag("it's").startswith("~")
    assert parse_job_id("emails:42") == ("emails", "42")
    for bad in ["emails", "emails:0", "emails:042", "{x}:1", 42, None, "~zz:1", "e:1:2x"]:
        assert parse_job_id(bad) is None


def test_payloads_are_stored_as_the_json_text_given(q: polyqueue.Queue) -> None:
    job_id = q.enqueue("t", {"b": 1, "a": [1.5, "é"], "z": None})
    tag, number = parse_job_id(job_id)  # type: ignore[misc]
    backend = _backend(q)
    stored = backend.store.command(lambda c: c.hget(backend.layout.base(tag) + ":j:" + number, "p"))
    assert stored == '{"b":1,"a":[1.5,"é"],"z":null}'


def test_ids_of_other_forms_or_prefixes_find_nothing(q: polyqueue.Queue, opener: Opener, url: str) -> None:
    job_id = q.enqueue("t")
    elsewhere = opener(url)
    assert elsewhere.get(job_id) is None and not elsewhere.cancel(job_id)
    for bad in ["default", "default:0", "default:99999", 7, "default:1:2", ""]:
        assert q.get(bad) is None and q.cancel(bad) is False
    assert q.get(job_id) is not None


# --- claim order --------------------------------------------------------------------------------------
def test_the_ready_sets_hold_the_policys_claim_order(q: polyqueue.Queue) -> None:
    rng = random.Random(7)
    base = q.backend.db_now() - timedelta(hours=1)
    specs = [
        {"job_type": rng.choice("ab"), "priority": rng.choice([-5, 0, 0, 3, 9]),
         "run_at": base + timedelta(seconds=rng.randrange(4))}
        for _ in range(80)
    ]  # fmt: skip
    ids = q.enqueue_many(specs)
    backend = _backend(q)

    def in_claim_order(job_ids: list[Any]) -> list[Any]:
        jobs = [q.get(i) for i in job_ids]
        number = lambda job: int(job.id.split(":")[1])  # noqa: E731 - ids order by their number within a queue
        return [j.id for j in sorted(jobs, key=lambda j: policy.claim_order_key(j.priority, j.run_at, number(j)))]  # type: ignore[union-attr]

    for job_type in "ab":
        ready = backend.layout.base("default") + ":r:" + job_type
        members = backend.store.command(lambda c, key=ready: c.zrange(key, 0, -1))
        stored = [f"default:{int(m[17:])}" for m in members]
        assert stored == in_claim_order([i for i, spec in zip(ids, specs, strict=True) if spec["job_type"] == job_type])
    assert [j.id for j in q.claim(limit=80)] == in_claim_order(ids), "a claim of every type merges them in order"


def _queues_on_every_master(q: polyqueue.Queue, per_master: int = 2) -> list[str]:
    backend = _backend(q)
    by_node: dict[str, list[str]] = {}
    for n in range(200):
        name = f"spread-{n}"
        node, _ = backend.store.node_for(backend.layout.meta(queue_tag(name)))
        by_node.setdefault(node, []).append(name)
    assert len(by_node) == len(backend.store.masters())
    return [name for names in by_node.values() for name in names[:per_master]]


def test_a_claim_over_queues_on_every_master_takes_the_best_jobs_in_claim_order(cq: polyqueue.Queue) -> None:
    queues = _queues_on_every_master(cq)
    rng = random.Random(11)
    base = cq.backend.db_now() - timedelta(minutes=5)
    specs = [
        {"job_type": "t", "queue": rng.choice(queues), "priority": rng.choice([0, 1, 5, 9]),
         "run_at": base + timedelta(seconds=rng.randrange(30))}
        for _ in range(120)
    ]  # fmt: skip
    ids = cq.enqueue_many(specs)
    jobs = {i: cq.get(i) for i in ids}

    def order(job_id: Any) -> Any:
        job = jobs[job_id]
        tag, number = parse_job_id(job_id)  # type: ignore[misc]
        return policy.claim_order_key(job.priority, job.run_at, (tag, int(number)))  # type: ignore[union-attr]

    expected = sorted(ids, key=order)
    taken: list[Any] = []
    for limit in (1, 7, 30, 50, 100):
        taken.extend(j.id for j in cq.claim(queues, limit=limit))
    assert taken == expected


def test_a_typed_claim_costs_the_same_whatever_the_backlog_of_other_types() -> None:
    """Claims, counts and probes of some types touch only those types' sorted sets: Redis runs the same commands."""
    try:
        server = PrivateRedis().__enter__()
    except ServerUnavailable as exc:
        if backends_required():
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        q = polyqueue.connect(server.url)
        q.migrate()
        backend = _backend(q)
        node = backend.store.client
        mine = frozenset({"small"})

        def commands_run(work: Callable[[], Any]) -> dict[str, int]:
            # The lease-index look and the schema check run on clocks of their own (every 0.2 s, every 1 s): keep
            # them out, whatever the time a loaded machine takes.
            backend._next_sweep = float("inf")
            backend._schema_checked_at = float("inf")
            before = node.info("commandstats")
            work()
            after = node.info("commandstats")
            return {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after if k != "cmdstat_info"}

        def typed_round() -> None:
            q.enqueue("small", queue="work")
            (job,) = q.claim("work", job_types=["small"])
            q.complete(job)
            backend.count_ready(ReadyCount("work", mine))
            backend.seconds_until_due(DueProbe(["work"], mine))

        typed_round()  # warm up: scripts loaded, queue created
        quiet = commands_run(typed_round)
        q.enqueue_many([{"job_type": "big", "queue": "work"} for _ in range(3000)])
        q.enqueue_many([{"job_type": "big", "queue": "work", "delay": 0.2} for _ in range(2000)])
        time.sleep(0.3)  # the delayed ones are due now: a claim of every type would promote them
        busy = commands_run(typed_round)
        assert busy == quiet, (busy, quiet)
        assert q.stats()["pending"] == 5000
        q.close()
    finally:
        server.__exit__(None, None, None)


# --- the lease index: expired leases of other queues ------------------------------------------------
def test_a_lease_shortened_by_a_heartbeat_is_still_rescued_by_a_claim_of_another_queue(q: polyqueue.Queue) -> None:
    q.enqueue("t", queue="a")
    (job,) = q.claim("a", lease=300, worker_id="w-short")
    q.extend(job, 0.3)
    time.sleep(0.5)
    assert q.claim("b") == []
    rescued = q.get(job.id)
    assert rescued is not None and (rescued.status, rescued.last_error) == (
        "pending", "lease expired while held by w-short",
    )  # fmt: skip


# --- wake-ups ---------------------------------------------------------------------------------------------
def test_a_wakeup_comes_for_its_queues_and_types_and_is_kept_between_waits(q: polyqueue.Queue) -> None:
    any_type = q.backend.wakeup_source(WakeupRequest(["default", "x"]))
    typed = q.backend.wakeup_source(WakeupRequest(["default"], frozenset({"mine"})))
    assert any_type is not None and typed is not None
    try:
        assert any_type.wait(0.05) is False
        q.enqueue("t", queue="elsewhere")
        assert any_type.wait(0.3) is False
        q.enqueue("other")
        assert any_type.wait(10) is True
        assert typed.wait(0.5) is False
        q.enqueue("mine", queue="x")
        assert any_type.wait(10) is True
        time.sleep(0.3)
        q.enqueue("mine")  # between two waits: kept for the next one
        time.sleep(0.3)
        assert typed.wait(10) is True
        assert typed.wait(0.05) is False
    finally:
        any_type.close()
        typed.close()
        any_type.close()
    assert any_type.wait(0.01) is False


def test_a_worker_runs_jobs_enqueued_while_it_waits(q: polyqueue.Queue) -> None:
    worker = polyqueue.Worker(q, concurrency=2, lease=10.0, safety_poll=300)  # only a push can be in time
    done = threading.Event()
    seen: list[int] = []

    @worker.handler("count")
    def count(job: polyqueue.Job) -> int:
        seen.append(job.payload)
        if len(seen) == 3:
            done.set()
        return int(job.payload) * 2

    runner = threading.Thread(target=worker.run)
    runner.start()
    time.sleep(0.5)
    try:
        ids = [q.enqueue("count", n) for n in (1, 2, 3)]
        assert done.wait(30.0)
    finally:
        worker.stop()
        runner.join(30.0)
    assert not runner.is_alive()
    assert sorted(seen) == [1, 2, 3]
    assert [q.require(i).result for i in ids] == [2, 4, 6]


# --- WAIT ---------------------------------------------------------------------------------------------------
def test_an_enqueue_no_replica_acknowledged_raises_and_says_so(opener: Opener) -> None:
    q = opener(cluster_url(), wait_replicas=2, wait_timeout=0.2)  # the test cluster has one replica per master
    with pytest.raises(polyqueue.BackendUnavailable, match="acknowledged"):
        q.enqueue("t")
    assert q.stats()["pending"] == 1, "stored on the master, only not acknowledged: the error says so"
    (job,) = q.claim()
    q.complete(job)  # a settlement's shortfall is a warning, never an error: the job is done
    assert q.get(job.id).status == "done"  # type: ignore[union-attr]


def test_with_wait_on_a_cluster_an_enqueue_returns_once_a_replica_has_it(cq: polyqueue.Queue) -> None:
    job_id = cq.enqueue("t")
    backend = _backend(cq)
    tag, number = parse_job_id(job_id)  # type: ignore[misc]
    key = backend.layout.base(tag) + ":j:" + number
    master = backend.store.client.get_node_from_key(key)
    replica = backend.store.client.get_node_from_key(key, replica=True)
    assert replica is not None and replica.name != master.name
    replica_client = backend.store.client.get_redis_connection(replica)
    replica_client.execute_command("READONLY")
    assert replica_client.hget(key, "s") == "pending"


# --- resends after a lost reply -----------------------------------------------------------------------------
def test_scripts_sent_again_after_a_lost_reply_do_nothing_twice(q: polyqueue.Queue) -> None:
    backend = _backend(q)
    store = backend.store
    q.enqueue("t")  # the queue exists

    enqueue = backend._call("enqueue", "default", "default", "batch-1", "60", *backend._job_args(_new_job()))
    first = store.run([enqueue]).replies[0]
    enqueue.mark_resent()
    assert store.run([enqueue]).replies[0] == first
    assert q.stats()["pending"] == 2

    claim = backend._call("claim", "default", "5", "30000000", "w", "12345", "", "100", "100")
    taken = store.run([claim]).replies[0]
    claim.mark_resent()
    again = store.run([claim]).replies[0]
    assert [row[0] for row in again[2]] == [row[0] for row in taken[2]] and len(taken[2]) == 2
    assert q.stats()["processing"] == 2 and q.stats()["pending"] == 0

    jobs = [q.get(f"default:{row[0]}") for row in taken[2]]
    request = SettleRequest([policy.completed(job) for job in jobs], policy.new_token())  # type: ignore[arg-type]
    assert backend.settle(request) == set()
    assert backend.settle(request) == {j.id for j in jobs}, "a repeated request reports every job lost"  # type: ignore[union-attr]
    backend._interrupted[request.token] = time.monotonic()
    assert backend.settle(request) == set(), "the retry of a request that raised finds itself applied"
    assert q.stats()["done"] == 2

    job_id = q.enqueue("t")
    cancel = backend._call("cancel", "default", job_id.split(":")[1], "nonce-1")  # type: ignore[attr-defined]
    assert store.run([cancel]).replies == [1]
    cancel.mark_resent()
    assert store.run([cancel]).replies == [1]
    assert q.cancel(job_id) is False


def _new_job() -> Any:
    from polyqueue.job import NewJob

    return NewJob("default", "t", "{}", 0, 5, 0.0, None)


# --- counts --------------------------------------------------------------------------------------------
def test_depth_is_read_natively_and_agrees_with_the_counts(q: polyqueue.Queue) -> None:
    q.enqueue_many([{"job_type": "a"}, {"job_type": "b"}, {"job_type": "a", "delay": 3600}])
    assert q.backend.cached_depth("default") == 2 == q.depth() == q.depth(exact=True)
    assert q.backend.count_ready(ReadyCount("default", frozenset({"a"}))) == 1
    by_type = q.stats_by_type()["default"]
    assert by_type["a"]["pending"] == 2 and by_type["a"]["scheduled"] == 1 and by_type["b"]["scheduled"] == 0
    assert q.backend.cached_depth("nowhere") == 0


# --- the compat matrix -----------------------------------------------------------------------------------
def test_polyqueue_compat_gets_a_redis_cluster_column() -> None:
    """``polyqueue compat`` picks the column from the class's conformance_url; run two of its cells here."""
    from polyqueue.conformance import matrix as compat

    [target] = [t for t in compat.plugin_targets() if t.key == "redis"]
    assert target.label.startswith("Redis Cluster (plugin polyqueue-redis")
    assert target.url == cluster_url() and not target.unavailable
    cells = ["TestClaimOrder::test_fifo_order", "TestTransactionalEnqueue::test_commit_makes_the_job_visible"]
    made = compat.collect_matrix([target], only={"redis": cells})
    column = made["backends"]["redis"]
    assert column["status"] == "ran" and column["server_version"].startswith(("Redis 7", "Valkey"))
    assert "cluster" in column["server_version"]
    results = {name: test["results"]["redis"]["outcome"] for name, test in made["tests"].items()}
    assert results == {cells[0]: "passed", cells[1]: "skipped"}


def test_a_batch_bigger_than_one_script_keeps_its_order(q: polyqueue.Queue) -> None:
    """2,500 small jobs and ten of 900 KB go in several scripts (1,000 jobs or 8 MiB each): ids stay in order."""
    specs = [{"job_type": "t", "payload": {"i": i}} for i in range(2500)]
    specs += [{"job_type": "t", "payload": {"i": 2500 + i, "blob": "x" * 900_000}} for i in range(10)]
    ids = q.enqueue_many(specs)
    assert len(set(ids)) == len(specs)
    assert [int(str(i).split(":")[1]) for i in ids] == sorted(int(str(i).split(":")[1]) for i in ids)
    assert [q.get(i).payload["i"] for i in ids[::250]] == list(range(0, len(specs), 250))  # type: ignore[union-attr]


# --- periodic jobs -------------------------------------------------------------------------------------------
SLOT_AT = datetime(2026, 1, 1, 12, tzinfo=UTC)  # long past: every fire of these slots is due


def _slot(minutes: int) -> tuple[str, datetime]:
    """Slot ``minutes`` after SLOT_AT: its key (UTC wall time) and the instant it falls due."""
    at = SLOT_AT + timedelta(minutes=minutes)
    return at.replace(tzinfo=None).isoformat(), at


def _tick(queue: str = "default") -> NewJob:
    return NewJob(queue, "tick", "{}", 0, 5, 0.0, None)


def _fire(q: polyqueue.Queue, schedule: str, minutes: int, queue: str = "default") -> FireResult:
    slot, at = _slot(minutes)
    return q.backend.fire(FireRequest(schedule, slot, at, _tick(queue)))


def _fire_call(backend: RedisBackend, schedule: str, minutes: int, nonce: str) -> Call:
    """The fire script's call for a slot of ``schedule`` in queue "default", with this nonce."""
    slot, at = _slot(minutes)
    args = [schedule, slot, f"{to_us(at):017d}", nonce, *backend._job_args(_tick())]
    return backend._call("fire", "default", "default", *args)


def test_a_fire_resent_after_a_lost_reply_reports_what_its_first_run_did(q: polyqueue.Queue) -> None:
    backend = _backend(q)
    store = backend.store
    q.enqueue("t")  # the queue exists

    first = _fire_call(backend, "resent", 0, "nonce-1")
    _ok, _now, what, number = store.run([first]).replies[0]
    assert what == "fired"
    first.mark_resent()  # the reply was lost: the same call again finds the fire it made
    assert store.run([first]).replies[0][2:] == ["fired", number]
    other = _fire_call(backend, "resent", 0, "nonce-2")
    other.mark_resent()  # a resend whose first run found the slot fired by someone else
    assert store.run([other]).replies[0][2] == "duplicate"
    assert store.run([_fire_call(backend, "resent", 0, "nonce-1")]).replies[0][2] == "duplicate", "not a resend"
    assert [f.job_id for f in q.fire_history("resent")] == [f"default:{number}"]
    assert q.stats_by_type()["default"]["tick"]["pending"] == 1

    # A fire that raised BackendUnavailable, fired again: a resend with the same nonce, so it reports the first fire.
    raised = _fire_call(backend, "resent", 1, "nonce-3")
    _ok, _now, _what, raised_number = store.run([raised]).replies[0]
    slot, _at = _slot(1)
    backend._interrupted_fires[("resent", slot, "default")] = ("nonce-3", time.monotonic())
    again = _fire(q, "resent", 1)
    assert (again.fired, again.due, again.job_id) == (True, True, f"default:{raised_number}")
    once_more = _fire(q, "resent", 1)
    assert (once_more.fired, once_more.due, once_more.job_id) == (False, True, None), "the memory is used once"
    assert q.stats_by_type()["default"]["tick"]["pending"] == 2


def test_a_fire_before_its_slot_stores_nothing_and_reads_the_queues_clock(q: polyqueue.Queue) -> None:
    now = q.backend.db_now()
    early = q.backend.fire(FireRequest("early", "later", now + timedelta(hours=1), _tick()))
    assert (early.fired, early.due, early.job_id) == (False, False, None)
    assert abs((early.db_now - now).total_seconds()) < 60
    assert q.fire_history("early") == [] and q.stats()["pending"] == 0
    with pytest.raises(polyqueue.InvalidArgument, match="1970"):
        q.backend.fire(FireRequest("early", "x", datetime(1969, 1, 1, tzinfo=UTC), _tick()))


def test_a_fire_no_replica_acknowledged_raises_and_its_retry_reports_it(opener: Opener) -> None:
    q = opener(cluster_url(), wait_replicas=2, wait_timeout=0.2)  # the test cluster has one replica per master
    with pytest.raises(polyqueue.BackendUnavailable, match="acknowledged"):
        _fire(q, "unacked", 0)
    [fire] = q.fire_history("unacked")
    _backend(q).store.wait_replicas = 0  # the retry does not wait for replicas
    retry = _fire(q, "unacked", 0)
    assert (retry.fired, retry.job_id) == (True, fire.job_id), "the retry reports the fire its first attempt made"
    assert q.stats()["pending"] == 1


def test_a_fire_wakes_the_workers_of_its_queue_and_job_type(q: polyqueue.Queue) -> None:
    waiting = q.backend.wakeup_source(WakeupRequest(["default"], frozenset({"tick"})))
    assert waiting is not None
    try:
        assert _fire(q, "wake", 0).fired
        assert waiting.wait(30) is True
    finally:
        waiting.close()


def test_declarations_round_trip_and_fire_history_spans_the_queues_a_schedule_used(q: polyqueue.Queue) -> None:
    spec = ScheduleSpec(
        "it's, {odd}", "*/5 * * * *", "Europe/Berlin", "tick", "a", -3, '{"é":[1,"x,y"]}', "all"
    )  # fmt: skip
    state = q.backend.declare_schedules(DeclareSchedules([spec], "worker-1"))
    assert state.last_fires == {} and abs((state.db_now - q.backend.db_now()).total_seconds()) < 60
    [record] = q.schedules()
    assert (record.spec, record.declared_by, record.last_fire) == (spec, "worker-1", None)
    assert record.declared_at == state.db_now
    assert q.schedules(["nope"]) == [] and q.fire_history("nope") == []

    in_a = _fire(q, spec.name, 0, queue="a")
    in_b = _fire(q, spec.name, 5, queue="b")  # its queue changed: the newer fires go to b, the older stay in a
    assert str(in_a.job_id).startswith("a:") and str(in_b.job_id).startswith("b:")
    history = q.fire_history(spec.name)
    assert [(f.slot, f.job_id) for f in history] == [(_slot(5)[0], in_b.job_id), (_slot(0)[0], in_a.job_id)]
    assert history[0].fired_at >= history[0].slot_at == _slot(5)[1]
    state = q.backend.declare_schedules(DeclareSchedules([spec], "worker-2"))
    assert state.last_fires[spec.name] == history[0]
    [record] = q.schedules([spec.name, "nope"])
    assert record.declared_by == "worker-2" and record.last_fire == history[0]
    # A slot is fired once per queue: b has not fired slot 0 (documented: the record lives with its queue).
    assert _fire(q, spec.name, 0, queue="b").fired and not _fire(q, spec.name, 0, queue="a").fired


def test_a_purge_of_done_jobs_deletes_old_fires_keeping_each_schedules_newest(q: polyqueue.Queue) -> None:
    for minutes in range(7):
        assert _fire(q, "many", minutes).fired
    for minutes in (0, 1):
        assert _fire(q, "few", minutes, queue="other").fired
    # Slots of long ago fired just now: not older than an hour, whatever their slot (and the purge ends).
    assert q.purge("done", older_than=3600, batch_size=2) == 0
    assert len(q.fire_history("many")) == 7 and len(q.fire_history("few")) == 2
    assert q.purge("dead", older_than=0, batch_size=2) == 0
    assert len(q.fire_history("many")) == 7, "only a purge of done jobs deletes fires"
    assert q.purge("done", older_than=0, batch_size=2) == 0  # no done jobs: the fires go all the same
    assert [f.slot for f in q.fire_history("many")] == [_slot(6)[0]]
    assert [f.slot for f in q.fire_history("few")] == [_slot(1)[0]]
    assert not _fire(q, "many", 6).fired, "the newest fire still says its slot fired"


# --- dedupe holds and moving jobs ------------------------------------------------------------------------------
def _raw(q: polyqueue.Queue, key: str) -> Any:
    """A key of the queue "default" as stored (``:u:KEY`` text, or a job's hash)."""
    backend = _backend(q)
    full = backend.layout.base("default") + key
    if ":j:" in key:
        return backend.store.command(lambda client: client.hgetall(full))
    return backend.store.command(lambda client: client.get(full))


def test_a_done_job_holds_its_key_until_its_hold_ends_and_a_taker_then_owns_it(q: polyqueue.Queue) -> None:
    first = q.enqueue("t", dedupe_key="k", dedupe_for=4.0)  # long enough that a loaded machine reads it held
    number = str(first).split(":")[1]
    (job,) = q.claim()
    q.complete(job)
    done = _raw(q, f":j:{number}")
    assert _raw(q, ":u:k") == number and done["df"] == "4.0"
    finished = q.require(first).finished_at
    assert finished is not None and int(done["hu"]) == to_us(finished) + 4_000_000
    assert q.enqueue("t", dedupe_key="k") == first
    time.sleep(max(0.0, (finished - q.backend.db_now()).total_seconds()) + 4.1)
    second = q.enqueue("t", dedupe_key="k")
    assert second != first and _raw(q, ":u:k") == str(second).split(":")[1], "the ended hold was taken over"
    assert q.purge("done", older_than=0) == 1
    assert _raw(q, ":u:k") == str(second).split(":")[1], "purging the old holder leaves the new one's key"
    assert q.enqueue("t", dedupe_key="k") == second


def test_purge_keeps_held_jobs_and_goes_past_them(q: polyqueue.Queue) -> None:
    """A batch full of jobs still holding their keys must not stop the purge of the jobs behind them."""
    held = [q.enqueue("t", {"i": i}, dedupe_key=f"k{i}", dedupe_for=3600) for i in range(3)]
    free = [q.enqueue("t", {"i": i}) for i in range(3, 6)]
    for job in q.claim(limit=6):
        q.complete(job)
    assert q.purge("done", older_than=0, batch_size=2) == 3
    assert all(q.get(i) is not None for i in held) and all(q.get(i) is None for i in free)


def test_import_and_delete_sent_again_after_a_lost_reply_do_nothing_twice(q: polyqueue.Queue) -> None:
    from polyqueue.backends.base import DeleteRequest, ExportQuery, ImportBatch

    backend = _backend(q)
    store = backend.store
    q.enqueue("t")  # the queue exists
    [record] = backend.export_jobs(ExportQuery(frozenset({"pending"})))
    moved = dataclasses.replace(record, import_key="key-1", payload_json='{"moved":1}')
    call = backend._call("import", "default", "default", *backend._record_args(moved))
    [first] = store.run([call]).replies
    assert first[0] == "OK" and first[1][0] == "new"
    call.mark_resent()
    assert store.run([call]).replies[0][1] == ["existing", first[1][1]], "the resend finds its first run's job"
    assert backend.import_jobs(ImportBatch([moved])).existing == {0}
    assert q.stats()["pending"] == 2

    records = backend.export_jobs(ExportQuery(frozenset({"pending"})))
    args = [a for r in records for a in (str(r.id).split(":")[1], r.status, str(r.lease_token))]
    delete = backend._call("delete", "default", "nonce-1", "60", *args)
    [gone] = store.run([delete]).replies
    assert len(gone) == 2 and q.stats()["pending"] == 0
    delete.mark_resent()
    assert store.run([delete]).replies[0] == gone, "the resend reports what its first run deleted"
    assert backend.delete_jobs(DeleteRequest(records)) == set()
    assert _raw(q, f":j:{first[1][1]}") == {}
    assert backend.store.command(lambda client: client.hlen(backend.layout.base("default") + ":ik")) == 0


def test_an_export_walks_past_numbers_whose_jobs_are_gone(q: polyqueue.Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    from polyqueue_redis import backend as module

    from polyqueue.backends.base import ExportQuery

    monkeypatch.setattr(module, "EXPORT_PROBES", 3)  # so a page spans several scripts
    ids = q.enqueue_many([{"job_type": "t", "payload": {"i": i}} for i in range(20)])
    for job_id in ids[:15]:
        q.cancel(job_id)
    q.enqueue("t", queue="zz")
    assert q.purge("cancelled", older_than=0) == 15
    pages, after = [], None
    while page := q.backend.export_jobs(ExportQuery(frozenset({"pending"}), None, after, 2)):
        pages.append([r.id for r in page])
        after = page[-1].id
    assert [i for page in pages for i in page] == [*ids[15:], "zz:1"]
    assert [len(page) for page in pages] == [2, 2, 2]
    with pytest.raises(polyqueue.InvalidArgument):
        q.backend.export_jobs(ExportQuery(frozenset({"pending"}), None, 42))


# --- error history times --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "moment",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 12, 30, 5, 123456, tzinfo=UTC),
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 12, 31, 23, 59, 59, 1000, tzinfo=UTC),
        datetime(2100, 3, 1, 0, 0, 0, 999, tzinfo=UTC),
        datetime(2199, 12, 31, 7, 8, 9, 10000, tzinfo=UTC),
    ],
    ids=str,
)
def test_the_scripts_write_an_entry_time_exactly_as_the_policy_does(moment: datetime) -> None:
    import redis
    from polyqueue_redis import scripts

    us = to_us(moment)
    client = redis.Redis.from_url(single_node_url())
    try:
        lua = scripts._render("return entry_time(tonumber(ARGV[3]))")
        written = client.eval(lua, 0, "unused-base", "0", str(us))
    finally:
        client.close()
    assert written.decode() == policy.error_time(us)
    assert datetime.fromisoformat(written.decode().replace("Z", "+00:00")) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000
    )

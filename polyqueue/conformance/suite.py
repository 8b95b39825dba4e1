"""The conformance suite: every semantic of DESIGN.md, as importable test classes.

Run it on any backend with ``polyqueue conformance URL`` or
``pytest --pyargs polyqueue.conformance --polyqueue-url URL``, or in your own
test package with ``from polyqueue.conformance import *``. To override one
test, subclass its class under the same name and redefine the method.
Tests that need an optional capability carry ``@requires(...)``; on a backend
without it they are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import polyqueue
from polyqueue import (
    ConfigurationError,
    InvalidArgument,
    InvalidPayload,
    Job,
    JobCancelled,
    LeaseLost,
    PayloadTooLarge,
    SchemaMissing,
)
from polyqueue.backends.base import Capability, DeleteRequest, DueProbe, ExportQuery, ImportBatch
from polyqueue.job import JobRecord
from polyqueue.policy import ERROR_HISTORY_LIMIT
from polyqueue.testing import unique_prefix

from .support import async_caller_transaction, caller_transaction, drop_schema

__all__ = [
    "TestAsyncQueue",
    "TestAsyncTransactionalEnqueue",
    "TestAsyncWorker",
    "TestBadInput",
    "TestCancel",
    "TestCancelRunning",
    "TestClaimOrder",
    "TestConcurrency",
    "TestCrashRecovery",
    "TestDeadLetter",
    "TestDedupe",
    "TestDelayed",
    "TestEnqueue",
    "TestErrorHistory",
    "TestFencing",
    "TestFlowControl",
    "TestHeaders",
    "TestJobTypes",
    "TestLeases",
    "TestListJobs",
    "TestMigrate",
    "TestPause",
    "TestPeriodic",
    "TestPurge",
    "TestRetries",
    "TestRetryNow",
    "TestStats",
    "TestThroughput",
    "TestTimeouts",
    "TestTransactionalEnqueue",
    "TestTransfer",
    "TestWorker",
    "requires",
]


def requires(*capabilities: str) -> pytest.MarkDecorator:
    """Mark a test as needing backend ``capabilities`` (skipped with the reason where absent)."""
    return pytest.mark.requires(*capabilities)


QueueFactory = Callable[..., polyqueue.Queue]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition", interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def sleep_past(q: polyqueue.Queue, moment: datetime | None, margin: float = 0.05) -> None:
    """Sleep until the database clock has passed ``moment``."""
    assert moment is not None
    remaining = (moment - q.backend.db_now()).total_seconds()
    if remaining > 0:
        time.sleep(remaining + margin)


def claim_only_after(q: polyqueue.Queue, moment: datetime | None, lease: float = 30.0, **kwargs: Any) -> list[Job]:
    """Claim, and fail if any job it got was claimed before ``moment`` (the database clock).

    A claim's time is exact whatever the machine's load: its lease ends
    ``lease`` seconds after it. So on a loaded machine, where this claim may
    come after ``moment``, what it got is returned for the test to go on with;
    run in time, it must get nothing.
    """
    assert moment is not None
    got = q.claim(lease=lease, **kwargs)
    for job in got:
        assert job.lease_expires_at is not None
        claimed_at = job.lease_expires_at - timedelta(seconds=lease)
        assert claimed_at >= moment - timedelta(milliseconds=1), f"job {job.id} claimed before {moment}"
    return got


def close_to(a: datetime | None, b: datetime, seconds: float = 2.0) -> bool:
    """Whether two aware datetimes are within ``seconds`` of each other."""
    assert a is not None and a.tzinfo is not None, "times must be timezone-aware"
    return abs((a - b).total_seconds()) <= seconds


def run_until_settled(worker: polyqueue.Worker, q: polyqueue.Queue, timeout: float = 30.0) -> None:
    """Run ``worker`` in bursts until no job is pending or processing (retries included)."""
    deadline = time.monotonic() + timeout
    while True:
        worker.run(burst=True)
        stats = q.stats()
        if stats["pending"] == 0 and stats["processing"] == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"jobs did not settle within {timeout}s: {stats}")
        time.sleep(0.02)


def spawn(q: polyqueue.Queue, *args: str) -> subprocess.Popen[bytes]:
    """Start ``python -m polyqueue.conformance._proc ARGS`` on the same queue as ``q``."""
    if isinstance(q, polyqueue.Queue) and hasattr(q, "uses"):
        q.uses(Capability.MULTI_PROCESS)
    options = {k: v for k, v in q.options.items() if isinstance(v, (str, int, float, bool))}
    env = {**os.environ, "POLYQUEUE_URL": q.connect_url(), "POLYQUEUE_TEST_OPTIONS": json.dumps(options)}
    return subprocess.Popen([sys.executable, "-m", "polyqueue.conformance._proc", *args], env=env)


# ---------------------------------------------------------------------------
class TestEnqueue:
    """Storing jobs and reading them back."""

    def test_enqueue_returns_id_and_get_reads_it_back(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("send_email", {"to": "a@example.com"}, queue="mail")
        job = queue.get(job_id)
        assert job is not None
        assert str(job_id)
        assert job.id == job_id
        assert (job.queue, job.job_type, job.payload) == ("mail", "send_email", {"to": "a@example.com"})
        assert (job.status, job.attempts, job.max_attempts, job.priority) == ("pending", 0, 5, 0)
        now = queue.backend.db_now()
        assert close_to(job.created_at, now) and close_to(job.run_at, now)
        assert job.finished_at is None and job.lease_expires_at is None and job.last_error is None

    def test_payload_round_trips_exactly(self, queue: polyqueue.Queue) -> None:
        nested: Any = {"leaf": True}
        for _ in range(40):
            nested = {"n": [nested]}
        payloads = [
            {"text": "héllo ✓ 😀 日本語", "nul": "a\u0000b", "quote": 'it\'s "q" `b`; --'},
            nested,
            {"big": 2**53, "neg": -(2**53), "beyond": 2**63 + 7},
            {"floats": [1.5, -0.0, 1e-300, 1.7976931348623157e308, 0.1 + 0.2]},
            None,
            [],
            {},
            "",
            True,
            [1, "a", None, False, {"x": [2.5]}],
        ]
        ids = [queue.enqueue("echo", p) for p in payloads]
        for job_id, payload in zip(ids, payloads, strict=True):
            job = queue.get(job_id)
            assert job is not None
            assert job.payload == payload
            assert json.dumps(job.payload) == json.dumps(payload)

    def test_enqueue_many_returns_ids_in_input_order(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many([{"job_type": "n", "payload": {"i": i}} for i in range(60)])
        assert len(ids) == len(set(ids)) == 60
        assert [queue.get(i).payload["i"] for i in ids] == list(range(60))  # type: ignore[union-attr]
        claimed = queue.claim(limit=60)
        assert [j.payload["i"] for j in claimed] == list(range(60))

    def test_payloads_and_results_up_to_the_size_limit_round_trip(self, queue: polyqueue.Queue) -> None:
        big = {"blob": "é" + "x" * 900_000}  # well over 64 KB, under the default 1 MiB limit
        job_id = queue.enqueue("t", big)
        (job,) = queue.claim()
        assert job.id == job_id and job.payload == big
        queue.complete(job, result=big)
        done = queue.get(job_id)
        assert done is not None and done.result == big

    @requires(Capability.PRIORITIES, Capability.DELAYED)
    def test_a_mixed_batch_keeps_every_jobs_own_fields(self, queue: polyqueue.Queue) -> None:
        specs = [
            {"job_type": f"type-{i % 3}", "payload": {"i": i}, "queue": f"q{i % 2}", "priority": i % 4,
             "max_attempts": 1 + i % 5, "delay": 3600 if i % 7 == 0 else 0}
            for i in range(40)
        ]  # fmt: skip
        ids = queue.enqueue_many(specs)
        for job_id, spec in zip(ids, specs, strict=True):
            job = queue.get(job_id)
            assert job is not None
            got = (job.job_type, job.payload, job.queue, job.priority, job.max_attempts)
            assert got == (spec["job_type"], spec["payload"], spec["queue"], spec["priority"], spec["max_attempts"])
        ready = queue.claim(["q0", "q1"], limit=40)
        assert sorted(j.payload["i"] for j in ready) == [i for i in range(40) if i % 7]

    def test_enqueue_many_of_nothing_stores_nothing(self, queue: polyqueue.Queue) -> None:
        assert queue.enqueue_many([]) == []
        assert queue.stats()["pending"] == 0

    def test_max_attempts_per_job_and_per_connect(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        assert queue.get(queue.enqueue("t", max_attempts=2)).max_attempts == 2  # type: ignore[union-attr]
        other = queue_factory(max_attempts=3)
        assert other.get(other.enqueue("t")).max_attempts == 3  # type: ignore[union-attr]

    def test_queues_are_separate(self, queue: polyqueue.Queue) -> None:
        a = queue.enqueue("t", queue="a")
        b = queue.enqueue("t", queue="b")
        assert [j.id for j in queue.claim("a", limit=5)] == [a]
        assert [j.id for j in queue.claim(["b", "c"], limit=5)] == [b]
        assert queue.claim(["a", "b"], limit=5) == []

    def test_get_unknown_id_is_none(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t")
        assert queue.get(job_id) is not None
        assert queue.get("no-such-id") is None
        assert queue.get(987654321) is None


# ---------------------------------------------------------------------------
class TestClaimOrder:
    """Batch claims: order, limits, what a claim sets."""

    def test_fifo_order(self, queue: polyqueue.Queue) -> None:
        ids = [queue.enqueue("t", {"i": i}) for i in range(10)]
        assert [j.id for j in queue.claim(limit=4)] == ids[:4]
        assert [j.id for j in queue.claim(limit=10)] == ids[4:]

    @requires(Capability.PRIORITIES)
    def test_higher_priority_first_then_fifo(self, queue: polyqueue.Queue) -> None:
        spec = [0, 5, -1, 5, 0, 10]
        ids = [queue.enqueue("t", {"i": i}, priority=p) for i, p in enumerate(spec)]
        expected = [ids[i] for i in sorted(range(len(spec)), key=lambda i: (-spec[i], i))]
        assert [j.id for j in queue.claim(limit=10)] == expected

    def test_claim_sets_processing_attempt_lease_and_worker(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (job,) = queue.claim(lease=20, worker_id="w-1")
        assert (job.status, job.attempts, job.locked_by) == ("processing", 1, "w-1")
        now = queue.backend.db_now()
        assert close_to(job.lease_expires_at, now + timedelta(seconds=20))
        stored = queue.get(job.id)
        assert stored is not None and stored.status == "processing" and stored.attempts == 1

    def test_nothing_ready_gives_empty_list(self, queue: polyqueue.Queue) -> None:
        assert queue.claim() == []
        assert queue.claim(["x", "y"], limit=50) == []

    def test_a_claimed_job_is_not_handed_out_again(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        assert len(queue.claim(lease=30)) == 1
        assert queue.claim(lease=30) == []


# ---------------------------------------------------------------------------
class TestLeases:
    """Leases, heartbeats and fencing."""

    def test_complete_marks_done_with_result(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (job,) = queue.claim()
        queue.complete(job, {"sent": 3})
        stored = queue.get(job.id)
        assert stored is not None
        assert (stored.status, stored.result, stored.lease_expires_at) == ("done", {"sent": 3}, None)
        assert close_to(stored.finished_at, queue.backend.db_now())

    def test_expired_lease_is_claimable_at_once_with_attempt_counted(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (first,) = queue.claim(lease=0.5)
        early = claim_only_after(queue, first.lease_expires_at)
        sleep_past(queue, first.lease_expires_at, margin=0.02)
        (second,) = early or queue.claim(lease=30)
        assert second.id == first.id and second.attempts == 2

    def test_stale_holder_is_fenced_and_new_run_untouched(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (stale,) = queue.claim(lease=0.3)
        sleep_past(queue, stale.lease_expires_at)
        (fresh,) = queue.claim(lease=30, worker_id="new")
        for action in (
            lambda: queue.complete(stale, "stale"),
            lambda: queue.fail(stale, "stale"),
            lambda: queue.extend(stale, 60),
            lambda: queue.release(stale),
        ):
            with pytest.raises(LeaseLost):
                action()
        current = queue.get(fresh.id)
        assert current is not None
        assert (current.status, current.locked_by, current.attempts) == ("processing", "new", 2)
        assert close_to(current.lease_expires_at, fresh.lease_expires_at or datetime.now(UTC), 0.01)
        queue.complete(fresh)
        assert queue.get(fresh.id).status == "done"  # type: ignore[union-attr]

    def test_complete_after_own_lease_expired_is_lease_lost(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (job,) = queue.claim(lease=0.2)
        sleep_past(queue, job.lease_expires_at)
        with pytest.raises(LeaseLost):
            queue.complete(job)

    def test_extend_keeps_the_job(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (job,) = queue.claim(lease=2.0)
        first_expiry = job.lease_expires_at
        queue.extend(job, 30)  # within the first lease: two seconds to make one call
        sleep_past(queue, first_expiry)
        assert queue.claim(lease=30) == [], "the extended lease still runs after the first one ended"
        queue.extend(job, 60)
        extended = queue.require(job.id)
        assert extended.status == "processing" and close_to(
            extended.lease_expires_at, queue.backend.db_now() + timedelta(seconds=60), 10
        )
        queue.complete(job)
        assert queue.get(job.id).attempts == 1  # type: ignore[union-attr]

    def test_lease_expiring_on_final_attempt_makes_the_job_dead(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("poison", max_attempts=2)
        for _ in range(2):
            (job,) = queue.claim(lease=0.2)
            sleep_past(queue, job.lease_expires_at)
        assert queue.claim(lease=30) == []
        dead = queue.get(job_id)
        assert dead is not None and dead.status == "dead" and dead.attempts == 2
        assert "lease" in (dead.last_error or "")
        assert [j.id for j in queue.dead_jobs()] == [job_id]

    def test_release_gives_the_job_back_uncharged(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (job,) = queue.claim()
        queue.release(job)
        stored = queue.get(job.id)
        assert stored is not None and (stored.status, stored.attempts) == ("pending", 0)
        (again,) = queue.claim()
        assert again.id == job.id and again.attempts == 1


# ---------------------------------------------------------------------------
_ENTRY_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def entry_times(job: Job) -> list[datetime]:
    """The ``at`` of every error history entry of ``job``, each checked to be in the one format."""
    times = []
    for entry in job.errors:
        assert _ENTRY_TIME.fullmatch(str(entry.get("at"))), f"entry time not ISO 8601 UTC to the ms: {entry}"
        times.append(datetime.fromisoformat(entry["at"].replace("Z", "+00:00")))
    return times


class TestErrorHistory:
    """The error history is whole: lease expiries are recorded with failures, every entry timed by the store."""

    def test_expiries_and_failures_appear_in_order_with_store_times(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", max_attempts=5)
        (first,) = queue.claim(lease=0.3, worker_id="w-lost")
        sleep_past(queue, first.lease_expires_at)
        (second,) = queue.claim(lease=30, worker_id="w-failing")
        assert second.id == job_id and [e["attempt"] for e in second.errors] == [1]
        queue.fail(second, "boom", retry_in=0)
        (third,) = queue.claim(lease=0.3, worker_id="w-lost-again")
        sleep_past(queue, third.lease_expires_at)
        (fourth,) = queue.claim(lease=30, worker_id="w-last")
        stored = queue.get(job_id)
        assert stored is not None and fourth.id == job_id
        assert [(e["attempt"], e["error"], e["worker"]) for e in stored.errors] == [
            (1, "lease expired while held by w-lost", "w-lost"),
            (2, "boom", "w-failing"),
            (3, "lease expired while held by w-lost-again", "w-lost-again"),
        ]
        times = entry_times(stored)
        assert times == sorted(times)
        # Each expiry is recorded by the claim that found it: after the lease ran out, by the store's clock.
        assert times[0] >= (first.lease_expires_at or times[0]) - timedelta(milliseconds=1)
        assert times[2] >= (third.lease_expires_at or times[2]) - timedelta(milliseconds=1)
        assert close_to(times[-1], queue.backend.db_now(), 60)

    def test_expiry_on_the_final_attempt_is_the_dead_jobs_last_entry(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", max_attempts=2)
        (job,) = queue.claim(worker_id="w-failing")
        queue.fail(job, ValueError("first"), retry_in=0)
        (job,) = queue.claim(lease=0.3, worker_id="w-lost")
        sleep_past(queue, job.lease_expires_at)
        assert queue.claim(lease=30) == []
        dead = queue.get(job_id)
        assert dead is not None and dead.status == "dead"
        assert [(e["attempt"], e["worker"]) for e in dead.errors] == [(1, "w-failing"), (2, "w-lost")]
        assert dead.errors[0]["error"] == "ValueError: first" and dead.errors[1]["error"] == dead.last_error
        times = entry_times(dead)
        assert times == sorted(times) and close_to(times[-1], queue.backend.db_now(), 60)

    def test_an_expiry_keeps_the_history_to_its_limit(self, queue: polyqueue.Queue) -> None:
        limit = ERROR_HISTORY_LIMIT
        job_id = queue.enqueue("t", max_attempts=limit + 5)
        for n in range(limit):
            (job,) = queue.claim()
            queue.fail(job, f"failure {n}", retry_in=0)
        (job,) = queue.claim(lease=0.3, worker_id="w-lost")
        sleep_past(queue, job.lease_expires_at)
        queue.claim(lease=30)
        stored = queue.get(job_id)
        assert stored is not None and len(stored.errors) == limit
        assert stored.errors[0]["error"] == "failure 1" and stored.errors[-1]["worker"] == "w-lost"
        assert len(entry_times(stored)) == limit


# ---------------------------------------------------------------------------
_SETTLE_ACTIONS: dict[str, Callable[[polyqueue.Queue, Job], Any]] = {
    "complete": lambda q, job: q.complete(job, "late"),
    "fail": lambda q, job: q.fail(job, "late failure"),
    "extend": lambda q, job: q.extend(job, 60),
    "release": lambda q, job: q.release(job),
}


class TestFencing:
    """A claim that no longer holds its job -- expired, rescued, re-claimed or already settled -- changes nothing."""

    def _expired_claim(self, q: polyqueue.Queue) -> Job:
        q.enqueue("t", queue="fenced")
        (job,) = q.claim("fenced", lease=0.3, worker_id="stale-worker")
        sleep_past(q, job.lease_expires_at)
        return job

    @staticmethod
    def _refused(q: polyqueue.Queue, job: Job, action: str) -> tuple[str, int, Any]:
        """Run ``action`` with a claim that lost its job; it must raise LeaseLost. Returns the job as stored."""
        with pytest.raises(LeaseLost):
            _SETTLE_ACTIONS[action](q, job)
        stored = q.get(job.id)
        assert stored is not None
        return stored.status, stored.attempts, stored.result

    @pytest.mark.parametrize("action", sorted(_SETTLE_ACTIONS))
    def test_an_expired_claim_is_lease_lost(self, queue: polyqueue.Queue, action: str) -> None:
        job = self._expired_claim(queue)
        assert self._refused(queue, job, action) == ("processing", 1, None)

    @pytest.mark.parametrize("action", sorted(_SETTLE_ACTIONS))
    def test_a_rescued_claim_is_lease_lost(self, queue: polyqueue.Queue, action: str) -> None:
        job = self._expired_claim(queue)
        assert queue.claim("another-queue") == []  # any claim rescues expired leases
        rescued = queue.get(job.id)
        assert rescued is not None and (rescued.status, rescued.attempts) == ("pending", 1)
        assert self._refused(queue, job, action) == ("pending", 1, None)

    @pytest.mark.parametrize("action", sorted(_SETTLE_ACTIONS))
    def test_a_reclaimed_job_is_fenced_from_its_old_claim(self, queue: polyqueue.Queue, action: str) -> None:
        job = self._expired_claim(queue)
        (fresh,) = queue.claim("fenced", lease=30, worker_id="new-worker")
        with pytest.raises(LeaseLost):
            _SETTLE_ACTIONS[action](queue, job)
        stored = queue.get(job.id)
        assert stored is not None and (stored.status, stored.locked_by, stored.attempts) == (
            "processing", "new-worker", 2,
        )  # fmt: skip
        assert close_to(stored.lease_expires_at, fresh.lease_expires_at or datetime.now(UTC), 0.01)

    @pytest.mark.parametrize("first", ["complete", "fail", "release"])
    @pytest.mark.parametrize("action", sorted(_SETTLE_ACTIONS))
    def test_a_settled_claim_is_lease_lost(self, queue: polyqueue.Queue, first: str, action: str) -> None:
        queue.enqueue("t", max_attempts=3)
        (job,) = queue.claim(lease=30)
        _SETTLE_ACTIONS[first](queue, job)
        before = queue.get(job.id)
        with pytest.raises(LeaseLost):
            _SETTLE_ACTIONS[action](queue, job)
        after = queue.get(job.id)
        assert before is not None and after is not None
        assert (after.status, after.attempts, after.result, after.errors) == (
            before.status, before.attempts, before.result, before.errors,
        )  # fmt: skip

    def test_the_rescue_names_the_worker_that_held_the_job(self, queue: polyqueue.Queue) -> None:
        job = self._expired_claim(queue)
        queue.claim("another-queue")
        stored = queue.get(job.id)
        assert stored is not None and stored.last_error == "lease expired while held by stale-worker"

    def test_a_batch_settles_the_held_jobs_and_reports_the_rest(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t"} for _ in range(4)])
        held = queue.claim(limit=2, lease=30)
        queue.enqueue("t", queue="fenced")
        (stale,) = queue.claim("fenced", lease=0.3)
        sleep_past(queue, stale.lease_expires_at)
        with pytest.raises(LeaseLost, match=str(stale.id)):
            queue.complete_many([(j, None) for j in [*held, stale]])
        assert [queue.get(j.id).status for j in held] == ["done", "done"]  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
class TestRetries:
    """Failure policy: backoff with jitter, retry_in, dead-lettering."""

    def test_fail_schedules_a_retry_with_backoff(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=2.0)
        q.enqueue("t")
        (job,) = q.claim()
        q.fail(job, ValueError("boom"))
        stored = q.get(job.id)
        assert stored is not None and stored.status == "pending" and stored.attempts == 1
        assert stored.last_error is not None and "ValueError: boom" in stored.last_error
        assert [e["attempt"] for e in stored.errors] == [1]
        delay = (stored.run_at - q.backend.db_now()).total_seconds()  # type: ignore[operator]
        assert 0.5 < delay <= 2.0
        assert q.claim() == []
        assert q.stats()["scheduled"] == 1

    def test_backoff_is_exponential_with_jitter(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=1.0, backoff_max=100.0)
        for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (6, 32), (20, 100)]:
            values = {q.backoff(attempt) for _ in range(20)}
            assert all(ceiling / 2 <= v <= ceiling for v in values)
            assert len(values) > 1, "backoff must be jittered"

    def test_retry_in_overrides_backoff(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        (job,) = queue.claim()
        queue.fail(job, "try again", retry_in=0)
        (again,) = queue.claim()
        assert again.id == job.id and again.attempts == 2 and again.last_error == "try again"

    def test_dead_flag_dead_letters_at_once(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t", max_attempts=5)
        (job,) = queue.claim()
        queue.fail(job, "hopeless", dead=True)
        stored = queue.get(job.id)
        assert stored is not None and stored.status == "dead" and stored.finished_at is not None

    def test_dead_after_max_attempts_with_error_history(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", max_attempts=3)
        for n in range(3):
            (job,) = queue.claim()
            queue.fail(job, f"failure {n}", retry_in=0)
        stored = queue.get(job_id)
        assert stored is not None and (stored.status, stored.attempts) == ("dead", 3)
        assert [e["error"] for e in stored.errors] == ["failure 0", "failure 1", "failure 2"]
        assert queue.claim() == []


    @pytest.mark.parametrize(
        "error",
        ["bad \ud800 surrogate", "nul \x00 inside", ValueError("cannot parse " + os.fsdecode(b"caf\xe9"))],
        ids=["surrogate", "nul", "fsdecoded-exception"],
    )
    def test_error_text_the_database_cannot_store_is_recorded_escaped(
        self, queue: polyqueue.Queue, error: Any
    ) -> None:
        queue.enqueue("t")
        (job,) = queue.claim()
        queue.fail(job, error, retry_in=0)
        stored = queue.get(job.id)
        assert stored is not None and (stored.status, stored.attempts) == ("pending", 1)
        text = stored.last_error or ""
        assert text and text == stored.errors[-1]["error"]
        assert "\x00" not in text
        text.encode("utf-8")  # storable text, escaped where the original was not


# ---------------------------------------------------------------------------
class TestJobTypes:
    """Claims of some job types leave every other type untouched."""

    def test_claim_takes_only_the_asked_types_in_claim_order(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many([{"job_type": t, "payload": {"i": i}} for i, t in enumerate("abcabcabc")])
        got = queue.claim(limit=10, job_types=["a", "c"])
        assert [j.id for j in got] == [ids[i] for i in (0, 2, 3, 5, 6, 8)]
        assert {j.job_type for j in got} == {"a", "c"}
        assert all(queue.get(ids[i]).attempts == 0 for i in (1, 4, 7))  # type: ignore[union-attr]
        assert queue.claim(job_types=["a", "c"]) == []
        assert [j.job_type for j in queue.claim(limit=5)] == ["b", "b", "b"]

    @requires(Capability.PRIORITIES)
    def test_priority_orders_across_types(self, queue: polyqueue.Queue) -> None:
        low = queue.enqueue("a", priority=0)
        high = queue.enqueue("b", priority=9)
        mid = queue.enqueue("c", priority=5)
        assert [j.id for j in queue.claim(limit=3, job_types=["a", "b", "c"])] == [high, mid, low]

    def test_claim_across_queues_and_types(self, queue: polyqueue.Queue) -> None:
        wanted = [queue.enqueue("a", queue="q1"), queue.enqueue("b", queue="q2")]
        queue.enqueue("c", queue="q1")
        queue.enqueue("a", queue="q3")
        got = queue.claim(["q1", "q2"], limit=10, job_types=["a", "b"])
        assert {j.id for j in got} == set(wanted) and len(got) == 2

    def test_expired_leases_of_other_types_are_not_taken(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("other")
        (job,) = queue.claim(lease=0.3)
        sleep_past(queue, job.lease_expires_at)
        assert queue.claim(job_types=["mine"]) == []
        again = queue.get(job.id)
        assert again is not None and again.status == "pending" and again.attempts == 1

    def test_the_idle_probe_counts_only_the_asked_types(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("other")
        session = queue.consumer_session()
        assert session.seconds_until_due(["default"], frozenset({"mine"})) is None
        due = session.seconds_until_due(["default"], frozenset({"other"}))
        assert due is not None and due <= 0

    def test_job_types_must_be_names(self, queue: polyqueue.Queue) -> None:
        for bad in ([], [""], [5], ["x" * 256]):
            with pytest.raises(InvalidArgument):
                queue.claim(job_types=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
@requires(Capability.DELAYED)
class TestDelayed:
    """Jobs that wait for their time."""

    def test_delayed_job_waits_then_becomes_ready(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", delay=2.0)
        run_at = queue.require(job_id).run_at
        assert queue.stats()["scheduled"] == 1 and queue.depth() == 0  # two seconds to look: a margin at load 10
        early = claim_only_after(queue, run_at)
        sleep_past(queue, run_at)
        assert [j.id for j in early or queue.claim()] == [job_id]

    def test_run_at_is_absolute(self, queue: polyqueue.Queue) -> None:
        at = queue.backend.db_now() + timedelta(seconds=0.5)
        job_id = queue.enqueue("t", run_at=at)
        stored = queue.get(job_id)
        assert stored is not None and close_to(stored.run_at, at, 0.01)
        early = claim_only_after(queue, at)
        sleep_past(queue, at)
        assert [j.id for j in early or queue.claim()] == [job_id]

    def test_delay_accepts_timedelta(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", delay=timedelta(hours=1))
        run_at = queue.get(job_id).run_at  # type: ignore[union-attr]
        assert close_to(run_at, queue.backend.db_now() + timedelta(hours=1), 5)


# ---------------------------------------------------------------------------
@requires(Capability.DEDUPE)
class TestDedupe:
    """A dedupe key is held while its job is live."""

    def test_live_duplicate_returns_existing_id(self, queue: polyqueue.Queue) -> None:
        first = queue.enqueue("t", {"v": 1}, dedupe_key="user-7")
        assert queue.enqueue("t", {"v": 2}, dedupe_key="user-7") == first
        assert queue.enqueue("t", dedupe_key="user-7", queue="other") != first
        assert queue.stats()["pending"] == 2
        assert len(queue.claim()) == 1
        assert queue.enqueue("t", dedupe_key="user-7") == first  # processing still holds it

    def test_finished_jobs_release_the_key(self, queue: polyqueue.Queue) -> None:
        first = queue.enqueue("t", dedupe_key="k")
        (job,) = queue.claim()
        queue.complete(job)
        second = queue.enqueue("t", dedupe_key="k")
        assert second != first
        assert queue.cancel(second)
        third = queue.enqueue("t", dedupe_key="k", max_attempts=1)
        assert third not in (first, second)
        (job,) = queue.claim()
        queue.fail(job, "x")
        assert queue.enqueue("t", dedupe_key="k") not in (first, second, third)

    def test_duplicates_within_one_batch(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many(
            [
                {"job_type": "t", "dedupe_key": "a"},
                {"job_type": "t", "dedupe_key": "b"},
                {"job_type": "t", "dedupe_key": "a"},
                {"job_type": "t"},
            ]
        )
        assert ids[0] == ids[2] and len(set(ids)) == 3

    def test_replay_skips_a_dead_job_whose_key_is_taken(self, queue: polyqueue.Queue) -> None:
        dead_id = queue.enqueue("t", dedupe_key="k", max_attempts=1)
        (job,) = queue.claim()
        queue.fail(job, "x")
        live_id = queue.enqueue("t", dedupe_key="k")
        result = queue.replay_detailed([dead_id])
        assert result.replayed == 0 and dead_id in result.skipped
        assert queue.get(dead_id).status == "dead"  # type: ignore[union-attr]
        assert queue.cancel(live_id)
        assert queue.replay([dead_id]) == 1
        assert queue.enqueue("t", dedupe_key="k") == dead_id

    #: A hold that outlasts any test (what "still held" is checked with), and one short enough to wait out.
    #: Only waits are timed, on the database clock, never how fast the steps in between run.
    LONG, SHORT = 3600, 2.5  # SHORT: long enough to complete and replay within it at load 10

    def test_dedupe_for_keeps_the_key_held_after_the_job_is_done(self, queue: polyqueue.Queue) -> None:
        first = queue.enqueue("t", {"v": 1}, dedupe_key="k", dedupe_for=self.LONG)
        stored = queue.get(first)
        assert stored is not None and stored.dedupe_for == self.LONG
        (job,) = queue.claim()
        queue.complete(job)
        assert queue.require(first).status == "done"
        assert queue.enqueue("t", {"v": 2}, dedupe_key="k") == first, "a done job holds its key for dedupe_for"
        assert queue.enqueue_many([{"job_type": "t", "dedupe_key": "k"}]) == [first]
        assert queue.purge("done", older_than=0) == 0, "purge keeps a job while it holds its key"
        assert queue.stats()["pending"] == 0

    def test_the_key_is_free_once_the_hold_has_ended(self, queue: polyqueue.Queue) -> None:
        first = queue.enqueue("t", dedupe_key="k", dedupe_for=self.SHORT)
        (job,) = queue.claim()
        queue.complete(job)
        done = queue.require(first)
        assert done.finished_at is not None
        sleep_past(queue, done.finished_at + timedelta(seconds=self.SHORT))
        second = queue.enqueue("t", dedupe_key="k")
        assert second != first, "the key is free once the hold has ended"
        assert queue.enqueue("t", dedupe_key="k") == second
        assert queue.purge("done", older_than=0) == 1

    def test_dedupe_for_holds_after_dead_but_not_after_cancel(self, queue: polyqueue.Queue) -> None:
        failed = queue.enqueue("t", dedupe_key="failed", dedupe_for=3600, max_attempts=1)
        expired = queue.enqueue("t", dedupe_key="expired", dedupe_for=3600, max_attempts=1)
        (job,) = queue.claim(limit=1)
        assert job.id == failed
        queue.fail(job, "boom")
        assert queue.enqueue("t", dedupe_key="failed") == failed, "a dead job holds its key for dedupe_for"
        (held,) = queue.claim(lease=0.5)
        sleep_past(queue, held.lease_expires_at)
        assert queue.claim() == []  # rescues the expired lease: its final attempt, so dead
        assert queue.require(expired).status == "dead"
        assert queue.enqueue("t", dedupe_key="expired") == expired, "dead by lease expiry holds it too"
        assert queue.replay([failed]) == 1, "a dead job's own hold does not stop its replay"
        assert queue.enqueue("t", dedupe_key="failed") == failed
        cancelled = queue.enqueue("t", dedupe_key="cancelled", dedupe_for=3600)
        assert queue.cancel(cancelled)
        assert queue.enqueue("t", dedupe_key="cancelled") != cancelled, "cancelling lets the key go at once"

    def test_replay_takes_a_key_whose_hold_has_ended(self, queue: polyqueue.Queue) -> None:
        dead = {}
        for key in ("long", "short"):
            dead[key] = queue.enqueue("t", dedupe_key=key, max_attempts=1)
            (job,) = queue.claim()
            queue.fail(job, "x")
        holders = {key: queue.enqueue("t", dedupe_key=key, dedupe_for=getattr(self, key.upper())) for key in dead}
        for job in queue.claim(limit=2):
            queue.complete(job)
        result = queue.replay_detailed(list(dead.values()))
        assert result.replayed == 0 and set(result.skipped) == set(dead.values()), "held by the done jobs"
        finished = queue.require(holders["short"]).finished_at
        assert finished is not None
        sleep_past(queue, finished + timedelta(seconds=self.SHORT))
        assert queue.replay_detailed(list(dead.values())).skipped.keys() == {dead["long"]}
        assert queue.enqueue("t", dedupe_key="short") == dead["short"]

    def test_dedupe_for_is_checked(self, queue: polyqueue.Queue) -> None:
        for bad in ({"dedupe_for": 10}, {"dedupe_key": "k", "dedupe_for": -1}, {"dedupe_key": "k", "dedupe_for": "x"}):
            with pytest.raises(InvalidArgument):
                queue.enqueue("t", **bad)
        assert queue.stats()["pending"] == 0


# ---------------------------------------------------------------------------
class TestCancel:
    """Cancelling pending jobs."""

    def test_cancel_pending(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t")
        assert queue.cancel(job_id) is True
        stored = queue.get(job_id)
        assert stored is not None and stored.status == "cancelled" and stored.finished_at is not None
        assert queue.claim() == []
        assert queue.cancel(job_id) is False

    def test_cancel_processing_or_unknown_is_false(self, queue: polyqueue.Queue) -> None:
        """Without ``cancel_running`` a processing job cannot be cancelled (see TestCancelRunning for those with it)."""
        queue.enqueue("t")
        (job,) = queue.claim()
        if Capability.CANCEL_RUNNING not in queue.capabilities:
            assert queue.cancel(job.id) is False
        assert queue.get(job.id).status == "processing"  # type: ignore[union-attr]
        assert queue.cancel("nope") is False
        queue.complete(job)
        assert queue.cancel(job.id) is False


# ---------------------------------------------------------------------------
class TestStats:
    """Counts by status, per queue, and depth."""

    def test_counts_by_status(self, queue: polyqueue.Queue) -> None:
        for _ in range(4):
            queue.enqueue("t", queue="a")
        queue.enqueue("t", queue="b")
        done, processing, dead = queue.claim("a", limit=3)
        queue.complete(done)
        queue.fail(dead, "x", dead=True)
        cancelled = queue.enqueue("t", queue="a")
        queue.cancel(cancelled)
        assert queue.stats("a") == {
            "pending": 1,
            "scheduled": 0,
            "processing": 1,
            "done": 1,
            "dead": 1,
            "cancelled": 1,
        }
        assert queue.stats()["pending"] == 2
        assert queue.stats("nothing-here") == dict.fromkeys(
            ("pending", "scheduled", "processing", "done", "dead", "cancelled"), 0
        )
        assert queue.depth("a") == 1 and queue.depth("b") == 1 and queue.depth("zzz") == 0
        assert processing.status == "processing"
        by_queue = queue.stats_by_queue()
        assert set(by_queue) == {"a", "b"} and by_queue["b"]["pending"] == 1
        live = queue.stats_by_queue(["pending", "processing", "dead"])
        assert {"a", "b"} <= set(live), "every queue holding jobs of the statuses asked for"
        assert {k: live["a"][k] for k in ("pending", "scheduled", "processing", "dead")} == {
            "pending": 1, "scheduled": 0, "processing": 1, "dead": 1,
        }  # fmt: skip
        with pytest.raises(InvalidArgument):
            queue.stats_by_queue(["waiting"])


# ---------------------------------------------------------------------------
class TestDeadLetter:
    """The dead-letter view and replay."""

    def _kill(self, q: polyqueue.Queue, n: int, queue: str = "default") -> list[Any]:
        ids = [q.enqueue("t", {"i": i}, queue=queue, max_attempts=1) for i in range(n)]
        for job in q.claim(queue, limit=n):
            q.fail(job, f"boom {job.payload['i']}")
        return ids

    def test_dead_jobs_lists_newest_first_with_filters(self, queue: polyqueue.Queue) -> None:
        a = self._kill(queue, 3, "a")
        b = self._kill(queue, 2, "b")
        assert {j.id for j in queue.dead_jobs()} == set(a + b)
        assert {j.id for j in queue.dead_jobs("b")} == set(b)
        assert len(queue.dead_jobs(limit=2)) == 2
        listed = queue.dead_jobs()
        finished = [j.finished_at for j in listed]
        assert finished == sorted(finished, reverse=True)  # type: ignore[type-var]

    def test_replay_by_ids_by_queue_and_all(self, queue: polyqueue.Queue) -> None:
        a = self._kill(queue, 3, "a")
        b = self._kill(queue, 2, "b")
        assert queue.replay([a[0]]) == 1
        replayed = queue.get(a[0])
        assert replayed is not None and (replayed.status, replayed.attempts) == ("pending", 0)
        assert replayed.errors and replayed.errors[-1]["error"] == "boom 0", "error history must be kept"
        assert replayed.last_error == "boom 0"
        assert queue.replay(queue="b") == 2
        assert queue.replay() == 2
        assert queue.dead_jobs() == []
        assert queue.replay() == 0
        assert queue.replay([a[0], b[0]]) == 0, "replay ignores jobs that are not dead"
        assert len(queue.claim(["a", "b"], limit=10)) == 5


# ---------------------------------------------------------------------------
class TestPurge:
    """Deleting finished history."""

    def test_purge_deletes_only_old_finished_rows(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t"} for _ in range(25)])
        pending = queue.enqueue("t", queue="keep")
        jobs = queue.claim(limit=25)
        queue.complete_many([(j, None) for j in jobs])
        assert queue.purge(older_than="1h") == 0
        time.sleep(0.05)
        assert queue.purge("done", older_than=0, batch_size=10) == 25
        assert queue.stats()["done"] == 0
        assert queue.get(pending) is not None
        assert queue.purge("dead", older_than=0) == 0
        with pytest.raises(InvalidArgument):
            queue.purge("pending", older_than=0)

    @requires(Capability.TRANSFER)
    def test_a_purge_over_many_batches_deletes_every_old_finished_row_and_nothing_else(
        self, queue: polyqueue.Queue
    ) -> None:
        """Old history is stored with its old times (as a transfer would), beside every kind of row to keep."""
        now = queue.backend.db_now()
        old = now - timedelta(days=3)
        a_day_ago = now - timedelta(days=1, hours=1)

        def finished(status: str, at: datetime, n: int, queue_name: str = "default", **more: Any) -> list[JobRecord]:
            return [
                JobRecord(
                    None, queue_name, "t", "{}", 0, status, 1, 5, at, at, at, **more,
                    import_key=f"{status}-{queue_name}-{more.get('dedupe_key')}-{i}",
                )
                for i in range(n)
            ]  # fmt: skip

        records = [
            *finished("done", old, 230),
            *finished("done", a_day_ago, 40, "other"),
            *finished("done", old, 1, dedupe_key="k", dedupe_for=864000.0, dedupe_held_until=now + timedelta(days=7)),
            *finished("dead", old, 30),
            *finished("cancelled", old, 20),
        ]
        for start in range(0, len(records), 100):
            assert None not in queue.backend.import_jobs(ImportBatch(records[start : start + 100])).ids
        recent = queue.enqueue("t", queue="recent")
        queue.complete(queue.claim("recent")[0])
        pending = queue.enqueue("t")
        processing = queue.enqueue("t", queue="busy")
        [claimed] = queue.claim("busy")

        def left() -> Counter[tuple[str, str]]:
            statuses = frozenset({"pending", "done", "dead", "cancelled"})
            return Counter((r.status, r.queue) for r in queue.backend.export_jobs(ExportQuery(statuses, limit=1000)))

        assert queue.purge("done", older_than="2d", batch_size=7) == 230
        assert left() == Counter({
            ("done", "other"): 40, ("done", "default"): 1, ("dead", "default"): 30, ("cancelled", "default"): 20,
            ("done", "recent"): 1, ("pending", "default"): 1,
        }), "only the old done rows without a dedupe hold go"  # fmt: skip
        assert queue.purge("done", older_than="1d", batch_size=1000) == 40
        assert queue.purge("dead", older_than="2d", batch_size=3) == 30
        assert queue.purge("cancelled", older_than="2d") == 20
        assert queue.purge("done", older_than="2d") == 0
        assert left() == Counter({("done", "default"): 1, ("done", "recent"): 1, ("pending", "default"): 1})
        assert queue.get(recent) is not None and queue.get(pending) is not None
        queue.complete(claimed)  # the processing job was left alone
        assert queue.get(processing) is not None


# ---------------------------------------------------------------------------
class _Recorder:
    """A lifecycle plugin that records every hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _add(self, name: str, value: Any) -> None:
        with self.lock:
            self.calls.append((name, value))

    @polyqueue.hookimpl
    def polyqueue_job_enqueued(self, queue: Any, job_ids: Any, queue_names: Any) -> None:
        self._add("enqueued", len(job_ids))

    @polyqueue.hookimpl
    def polyqueue_job_started(self, queue: Any, job: Job) -> None:
        self._add("started", job.job_type)

    @polyqueue.hookimpl
    def polyqueue_job_succeeded(self, queue: Any, job: Job, duration: float) -> None:
        self._add("succeeded", job.job_type)

    @polyqueue.hookimpl
    def polyqueue_job_failed(self, queue: Any, job: Job, error: str, retry_in: Any) -> None:
        self._add("failed", job.job_type)

    @polyqueue.hookimpl
    def polyqueue_job_dead(self, queue: Any, job: Job, error: str) -> None:
        self._add("dead", job.job_type)


class TestWorker:
    """The Worker running real handlers."""

    def test_burst_runs_handlers_and_stores_results(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many([{"job_type": "square", "payload": {"n": n}} for n in range(30)])
        worker = polyqueue.Worker(queue, concurrency=3)

        @worker.handler("square")
        def square(job: Job) -> int:
            return int(job.payload["n"]) ** 2

        assert worker.run(burst=True) == 30
        assert [queue.get(i).result for i in ids] == [n * n for n in range(30)]  # type: ignore[union-attr]
        assert queue.stats()["done"] == 30

    def test_failing_handler_retries_then_dead_letters(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=0.01)
        flaky = q.enqueue("flaky", max_attempts=3)
        doomed = q.enqueue("doomed", max_attempts=2)
        seen: Counter[str] = Counter()
        worker = polyqueue.Worker(q, concurrency=2)

        @worker.handler("flaky")
        def flaky_handler(job: Job) -> str:
            seen["flaky"] += 1
            if job.attempts < 2:
                raise RuntimeError("first try fails")
            return "ok"

        @worker.handler("doomed")
        def doomed_handler(job: Job) -> None:
            seen["doomed"] += 1
            raise ValueError("never works")

        run_until_settled(worker, q)
        f, d = q.get(flaky), q.get(doomed)
        assert f is not None and (f.status, f.attempts, f.result) == ("done", 2, "ok")
        assert d is not None and (d.status, d.attempts) == ("dead", 2)
        assert "ValueError: never works" in (d.last_error or "")
        assert seen == {"flaky": 2, "doomed": 2}

    def test_unhandled_job_types_stay_pending_and_untouched(self, queue: polyqueue.Queue) -> None:
        resize = queue.enqueue_many([{"job_type": "resize", "payload": {"i": i}} for i in range(20)])
        email = queue.enqueue("send_email")
        worker = polyqueue.Worker(queue, concurrency=2)
        worker.register("send_email", lambda job: "sent")
        assert worker.run(burst=True) == 1
        assert queue.get(email).status == "done"  # type: ignore[union-attr]
        for job_id in resize:
            job = queue.get(job_id)
            assert job is not None and (job.status, job.attempts, job.last_error) == ("pending", 0, None)
        by_type = queue.stats_by_type()["default"]
        assert by_type["resize"]["pending"] == 20 and by_type["send_email"]["done"] == 1
        assert queue.stats()["pending"] == 20

    def test_a_worker_without_handlers_refuses_to_run(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t")
        with pytest.raises(polyqueue.ConfigurationError, match="no handlers"):
            polyqueue.Worker(queue).run(burst=True)
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempts) == ("pending", 0)

    def test_worker_max_attempts_holds_when_a_handler_fails(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=0.01)
        job_id = q.enqueue("doomed", max_attempts=5)
        worker = polyqueue.Worker(q, concurrency=1, max_attempts=2)
        worker.register("doomed", lambda job: 1 / 0)
        run_until_settled(worker, q)
        dead = q.get(job_id)
        assert dead is not None and (dead.status, dead.attempts, dead.max_attempts) == ("dead", 2, 2)

    def test_unstorable_error_text_from_a_handler_is_recorded(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("parse", max_attempts=1)
        worker = polyqueue.Worker(queue, concurrency=1)

        @worker.handler("parse")
        def parse(job: Job) -> None:
            raise ValueError("cannot parse " + os.fsdecode(b"caf\xe9") + " nul\x00here")

        worker.run(burst=True)
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempts) == ("dead", 1)
        assert "cannot parse caf" in (job.last_error or "") and "\x00" not in (job.last_error or "")
        assert job.errors and "cannot parse caf" in job.errors[-1]["error"]

    def test_unstorable_result_fails_the_job(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", max_attempts=1)
        worker = polyqueue.Worker(queue, concurrency=1)
        worker.register("t", lambda job: object())
        worker.run(burst=True)
        job = queue.get(job_id)
        assert job is not None and job.status == "dead" and "result" in (job.last_error or "")

    def test_heartbeat_keeps_a_long_job_leased(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("long")
        # A 3 s lease heartbeated every second: a heartbeat may come two seconds late at load 10 and still hold it.
        worker = polyqueue.Worker(queue, concurrency=1, lease=3.0)
        started = threading.Event()
        stolen: list[Job] = []

        @worker.handler("long")
        def long(job: Job) -> str:
            started.set()
            assert job.lease_expires_at is not None
            outlived = job.lease_expires_at + timedelta(seconds=1.5)  # half a lease past the one claimed
            deadline = time.monotonic() + 60
            while queue.backend.db_now() < outlived and time.monotonic() < deadline:
                stolen.extend(queue.claim(lease=30))
                time.sleep(0.1)
            return "finished"

        worker.run(burst=True)
        assert started.is_set() and stolen == []
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempts, job.result) == ("done", 1, "finished")

    def test_stop_from_another_thread_finishes_in_flight_work(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "slow"} for _ in range(3)])
        worker = polyqueue.Worker(queue, concurrency=1, poll_interval=(0.01, 0.05))
        running = threading.Event()

        @worker.handler("slow")
        def slow(job: Job) -> None:
            running.set()
            time.sleep(0.3)

        thread = threading.Thread(target=worker.run)
        thread.start()
        assert running.wait(10)
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()
        stats = queue.stats()
        assert stats["processing"] == 0
        assert stats["done"] >= 1 and stats["done"] + stats["pending"] == 3

    def test_lifecycle_hooks_fire(self, queue_factory: QueueFactory) -> None:
        recorder = _Recorder()
        q = queue_factory(plugins=[recorder], backoff_base=0.01)
        q.enqueue_many([{"job_type": "ok"}, {"job_type": "bad", "max_attempts": 2}])
        worker = polyqueue.Worker(q, concurrency=1)
        worker.register("ok", lambda job: None)
        worker.register("bad", lambda job: 1 / 0)
        run_until_settled(worker, q)
        names = Counter(name for name, _ in recorder.calls)
        assert names == {"enqueued": 1, "started": 3, "succeeded": 1, "failed": 2, "dead": 1}


    def test_a_lease_expiring_on_the_final_attempt_fires_the_dead_hook(self, queue_factory: QueueFactory) -> None:
        recorder = _Recorder()
        q = queue_factory(plugins=[recorder])
        job_id = q.enqueue("poison", max_attempts=1)
        (job,) = q.claim(lease=0.3)
        sleep_past(q, job.lease_expires_at)
        assert q.claim() == []
        assert q.get(job_id).status == "dead"  # type: ignore[union-attr]
        assert ("dead", "poison") in recorder.calls

    def test_a_raising_enqueue_hook_does_not_fail_a_committed_enqueue(self, queue_factory: QueueFactory) -> None:
        class BrokenMetrics:
            @polyqueue.hookimpl
            def polyqueue_job_enqueued(self, queue: Any, job_ids: Any, queue_names: Any) -> None:
                raise RuntimeError("metrics backend down")

        q = queue_factory(plugins=[BrokenMetrics()])
        job_id = q.enqueue("t", {"n": 1})
        ids = q.enqueue_many([{"job_type": "t"}, {"job_type": "t"}])
        assert q.get(job_id) is not None and len(ids) == 2
        assert q.stats()["pending"] == 3

    def test_worker_max_attempts_holds_when_the_lease_expires(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("hang", max_attempts=5)
        session = queue.consumer_session("capped-worker", max_attempts=1)
        (job,) = session.claim(["default"], limit=1, lease=0.3, job_types=frozenset({"hang"}))
        assert job.max_attempts == 1
        sleep_past(queue, job.lease_expires_at)
        assert queue.claim() == []
        dead = queue.get(job_id)
        assert dead is not None and (dead.status, dead.attempts, dead.max_attempts) == ("dead", 1, 1)


# ---------------------------------------------------------------------------
class TestConcurrency:
    """Many consumers, each job exactly once."""

    def test_threads_claiming_concurrently_get_each_job_once(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t", "payload": {"i": i}} for i in range(300)])
        got: list[Any] = []
        lock = threading.Lock()

        def consume() -> None:
            while True:
                jobs = queue.claim(limit=7, lease=30)
                if not jobs:
                    return
                queue.complete_many([(j, None) for j in jobs])
                with lock:
                    got.extend(j.id for j in jobs)

        threads = [threading.Thread(target=consume) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) == len(set(got)) == 300
        assert queue.stats()["done"] == 300

    @requires(Capability.MULTI_PROCESS)
    def test_worker_processes_run_each_job_exactly_once(self, queue: polyqueue.Queue, tmp_path: Path) -> None:
        ids = queue.enqueue_many([{"job_type": "record"} for _ in range(2000)])
        out = tmp_path / "runs.txt"
        procs = [spawn(queue, "drain", str(out), "4") for _ in range(4)]
        for p in procs:
            assert p.wait(120) == 0
        runs = Counter(out.read_text().split())
        assert len(runs) == 2000 and set(runs.values()) == {1}
        assert set(runs) == {str(i) for i in ids}
        assert queue.stats()["done"] == 2000


# ---------------------------------------------------------------------------
@requires(Capability.MULTI_PROCESS)
class TestCrashRecovery:
    """Killed and crashing workers lose nothing and never loop forever."""

    def test_kill_9_redelivers_after_the_lease(self, queue: polyqueue.Queue, tmp_path: Path) -> None:
        job_id = queue.enqueue("hold")
        ready = tmp_path / "ready"
        proc = spawn(queue, "hold", str(ready), "1.0")
        try:
            wait_until(ready.exists, 30)
            held = queue.get(job_id)
            assert held is not None and held.status == "processing"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        held_until = queue.require(job_id).lease_expires_at  # final: its holder is dead
        early = claim_only_after(queue, held_until)  # the lease still runs: nobody gets the job before it ends
        sleep_past(queue, held_until)
        (again,) = early or queue.claim(lease=30)
        assert again.id == job_id and again.attempts == 2

    def test_a_job_that_kills_its_worker_ends_dead(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("crash", max_attempts=2)
        for _ in range(4):
            job = queue.get(job_id)
            assert job is not None
            if job.status == "dead":
                break
            if job.status == "processing":
                sleep_past(queue, job.lease_expires_at)
            proc = spawn(queue, "crash", "0.3")
            proc.wait(60)
        job = queue.get(job_id)
        if job is not None and job.status == "processing":
            sleep_past(queue, job.lease_expires_at)
            queue.claim("default")
            job = queue.get(job_id)
        assert job is not None and job.status == "dead" and job.attempts == 2
        assert "lease" in (job.last_error or "")

    def test_sigterm_finishes_the_running_job_and_exits_0(self, queue: polyqueue.Queue, tmp_path: Path) -> None:
        job_id = queue.enqueue("slow")
        ready = tmp_path / "ready"
        proc = spawn(queue, "slow", str(ready), "0.8")
        wait_until(ready.exists, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        job = queue.get(job_id)
        assert job is not None and (job.status, job.result) == ("done", "slept")

    def test_sigterm_past_shutdown_timeout_releases_uncharged(self, queue: polyqueue.Queue, tmp_path: Path) -> None:
        job_id = queue.enqueue("slow")
        ready = tmp_path / "ready"
        proc = spawn(queue, "slow", str(ready), "60", "0.3")
        wait_until(ready.exists, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempts) == ("pending", 0)


# ---------------------------------------------------------------------------
def start_workers(q: polyqueue.Queue, folder: Path, count: int, concurrency: int, hold: float) -> list[Any]:
    """``count`` worker processes (``_proc run``) on ``q``'s queue, each recording its runs in ``folder/runs.txt``.

    Returns once every one is running.
    """
    procs, readies = [], []
    for n in range(count):
        ready = folder / f"ready-{n}"
        procs.append(spawn(q, "run", str(folder / "runs.txt"), str(concurrency), str(hold), str(ready)))
        readies.append(ready)
    try:
        wait_until(lambda: all(r.exists() for r in readies), 60, "the worker processes to start")
    except BaseException:
        stop_workers(procs)
        raise
    return procs


def stop_workers(procs: list[Any]) -> None:
    """SIGTERM the processes and wait for them (killed if they hang)."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def recorded_runs(folder: Path) -> list[tuple[str, str, float, float]]:
    """The runs ``start_workers``' processes recorded: (job id, concurrency key or "-", start, end)."""
    path = folder / "runs.txt"
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        job_id, key, start, end = line.split()
        runs.append((job_id, key, float(start), float(end)))
    return runs


def started(q: polyqueue.Queue, queue: str = "default") -> int:
    """Jobs of ``queue`` that have started: processing or done (from the database)."""
    stats = q.stats(queue)
    return stats["processing"] + stats["done"]


@requires(Capability.PAUSE)
class TestPause:
    """``pause(queue)`` / ``resume(queue)``: stored in the database, honoured by every claim."""

    def test_a_paused_queue_gives_nothing_until_resumed(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many([{"job_type": "t"} for _ in range(3)])
        other = queue.enqueue("t", queue="other")
        queue.pause("default")
        queue.pause("default")  # idempotent
        assert queue.paused() == ["default"]
        assert queue.claim(limit=10) == []
        assert [j.id for j in queue.claim(["default", "other"], limit=10)] == [other]
        assert queue.depth("default") == 0, "a paused queue's jobs are ready for no one"
        assert queue.stats("default")["pending"] == 3, "pausing changes no job"
        queue.resume("default")
        assert queue.paused() == []
        assert queue.depth("default") == 3
        assert {j.id for j in queue.claim(limit=10)} == set(ids)

    def test_a_pause_is_stored_for_every_connection(self, queue_factory: QueueFactory) -> None:
        first = queue_factory()
        first.enqueue("t")
        first.pause("default")
        second = queue_factory()
        assert second.paused() == ["default"]
        assert second.claim(limit=5) == []
        second.resume("default")
        assert len(first.claim(limit=5)) == 1

    def test_running_jobs_finish_while_paused(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t"} for _ in range(2)])
        (job,) = queue.claim(limit=1)
        queue.pause("default")
        queue.complete(job)
        assert queue.get(job.id).status == "done"  # type: ignore[union-attr]
        assert queue.claim(limit=5) == []

    def test_idle_workers_are_not_told_a_paused_queue_has_work(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        assert (queue.backend.seconds_until_due(DueProbe(["default"])) or 0) <= 0
        queue.pause("default")
        assert queue.backend.seconds_until_due(DueProbe(["default"])) is None
        queue.resume("default")
        assert (queue.backend.seconds_until_due(DueProbe(["default"])) or 0) <= 0

    @requires(Capability.FLOW_CONTROL)
    def test_a_paused_queue_keeps_its_limits(self, queue: polyqueue.Queue) -> None:
        queue.set_limits("default", concurrency=2)
        queue.pause("default")
        queue.resume("default")
        assert queue.limits("default") == polyqueue.QueueLimits(concurrency=2)

    def test_bad_queue_names_are_refused(self, queue: polyqueue.Queue) -> None:
        for bad in ("", "x" * 256, None, 7):
            with pytest.raises(InvalidArgument):
                queue.pause(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument):
                queue.resume(bad)  # type: ignore[arg-type]
        assert queue.paused() == []

    @requires(Capability.MULTI_PROCESS)
    @pytest.mark.slow
    def test_a_pause_holds_across_two_worker_processes_and_resume_drains(
        self, queue: polyqueue.Queue, tmp_path: Path
    ) -> None:
        procs = start_workers(queue, tmp_path, 2, 4, 0.0)
        try:
            queue.enqueue("work")
            wait_until(lambda: queue.stats()["done"] == 1, 60, "the workers to run a first job")
            queue.pause("default")
            queue.enqueue_many([{"job_type": "work"} for _ in range(40)])
            holds_until = time.monotonic() + 10
            while time.monotonic() < holds_until:
                stats = queue.stats()
                assert (stats["processing"], stats["done"], stats["pending"]) == (0, 1, 40), stats
                time.sleep(0.25)
            assert queue.depth("default") == 0
            queue.resume("default")
            wait_until(lambda: queue.stats()["done"] == 41, 60, "the workers to drain the resumed queue")
        finally:
            stop_workers(procs)
        assert len(recorded_runs(tmp_path)) == 41


@requires(Capability.FLOW_CONTROL)
class TestFlowControl:
    """``set_limits``: concurrency, rate and per-key limits enforced by the claim itself, across every worker."""

    def test_limits_are_stored_read_back_and_cleared(self, queue_factory: QueueFactory) -> None:
        q = queue_factory()
        assert q.limits("default") == polyqueue.QueueLimits()
        stored = q.set_limits("default", concurrency=10, rate="50/s", per_key=1)
        assert stored == polyqueue.QueueLimits(concurrency=10, rate=50.0, per_key=1)
        assert queue_factory().limits("default") == stored, "limits live in the database"
        assert q.set_limits("default", rate="120/m") == polyqueue.QueueLimits(rate=2.0), "each call sets all three"
        assert [s.queue for s in q.queue_settings()] == ["default"]
        assert q.set_limits("default") == polyqueue.QueueLimits()
        assert q.limits("default") == polyqueue.QueueLimits() and q.queue_settings() == []

    def test_bad_limits_are_refused_and_store_nothing(self, queue: polyqueue.Queue) -> None:
        bad: list[dict[str, Any]] = [
            {"concurrency": 0}, {"concurrency": -1}, {"concurrency": 1.5}, {"concurrency": True},
            {"rate": 0}, {"rate": "fast"}, {"rate": -3}, {"rate": float("nan")},
            {"per_key": 0}, {"per_key": "1"},
        ]  # fmt: skip
        for kwargs in bad:
            with pytest.raises(InvalidArgument):
                queue.set_limits("default", **kwargs)
        with pytest.raises(InvalidArgument):
            queue.set_limits("", concurrency=1)
        with pytest.raises(InvalidArgument):
            queue.enqueue("t", concurrency_key="")
        assert queue.limits("default") == polyqueue.QueueLimits()
        assert queue.stats()["pending"] == 0

    def test_the_concurrency_key_is_stored_with_the_job(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", concurrency_key="tenant-7")
        assert queue.get(job_id).concurrency_key == "tenant-7"  # type: ignore[union-attr]
        (job,) = queue.claim()
        assert job.concurrency_key == "tenant-7"

    def test_concurrency_caps_what_claims_take(self, queue_factory: QueueFactory) -> None:
        first, second = queue_factory(), queue_factory()
        first.set_limits("default", concurrency=3)
        first.enqueue_many([{"job_type": "t"} for _ in range(10)])
        taken = first.claim(limit=10)
        assert len(taken) == 3
        assert second.claim(limit=10) == [], "the limit holds for every consumer, not per consumer"
        first.complete(taken[0])
        assert len(second.claim(limit=10)) == 1
        first.fail(taken[1], "boom", retry_in=0)
        assert len(first.claim(limit=10)) == 1
        assert first.stats()["processing"] == 3

    def test_limits_change_live(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t"} for _ in range(10)])
        queue.set_limits("default", concurrency=1)
        assert len(queue.claim(limit=10)) == 1
        queue.set_limits("default", concurrency=4)
        assert len(queue.claim(limit=10)) == 3
        queue.set_limits("default")
        assert len(queue.claim(limit=10)) == 6

    def test_per_key_limits_each_key_while_other_keys_flow(self, queue: polyqueue.Queue) -> None:
        queue.set_limits("default", per_key=1)
        jobs = [{"job_type": "t", "concurrency_key": k} for k in ("a", "b") for _ in range(4)]
        queue.enqueue_many([*jobs, {"job_type": "t"}, {"job_type": "t"}])
        taken = queue.claim(limit=20)
        assert Counter(j.concurrency_key for j in taken) == {"a": 1, "b": 1, None: 2}
        assert queue.claim(limit=20) == []
        (a,) = [j for j in taken if j.concurrency_key == "a"]
        queue.complete(a)
        assert [j.concurrency_key for j in queue.claim(limit=20)] == ["a"]

    def test_a_hot_key_does_not_starve_a_cold_one(self, queue: polyqueue.Queue) -> None:
        queue.set_limits("default", per_key=5)
        queue.enqueue_many([{"job_type": "t", "concurrency_key": "hot"} for _ in range(300)])
        cold = queue.enqueue("t", concurrency_key="cold")
        first = queue.claim(limit=2)
        assert cold in [j.id for j in first], "each key's first job comes before any key's second"
        assert Counter(j.concurrency_key for j in queue.claim(limit=20)) == {"hot": 4}
        later = queue.enqueue("t", concurrency_key="cold")
        (hot,) = [j for j in first if j.concurrency_key == "hot"]
        queue.complete(hot)
        assert [j.id for j in queue.claim(limit=1)] == [later], "a key with less running goes first"

    def test_a_rate_limit_paces_starts_on_the_database_clock(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t"} for _ in range(200)])
        began = time.monotonic()
        queue.set_limits("default", rate=20)
        taken = 0
        while time.monotonic() - began < 2.0:
            taken += len(queue.claim(limit=50))
            time.sleep(0.02)
        elapsed = time.monotonic() - began
        assert taken <= 20 * elapsed + 1, f"{taken} starts in {elapsed:.2f}s at 20/s"
        assert taken >= 10, f"only {taken} starts in {elapsed:.2f}s at 20/s"

    def test_a_limited_queue_does_not_hold_back_the_others(self, queue: polyqueue.Queue) -> None:
        queue.set_limits("slow", concurrency=1)
        queue.enqueue_many([{"job_type": "t", "queue": q} for q in ("slow", "fast") for _ in range(5)])
        taken = queue.claim(["slow", "fast"], limit=10)
        assert Counter(j.queue for j in taken) == {"slow": 1, "fast": 5}

    @requires(Capability.MULTI_PROCESS)
    @pytest.mark.slow
    def test_processing_never_exceeds_concurrency_across_three_processes(
        self, queue: polyqueue.Queue, tmp_path: Path
    ) -> None:
        queue.set_limits("default", concurrency=3)
        queue.enqueue_many([{"job_type": "work"} for _ in range(60)])
        procs = start_workers(queue, tmp_path, 3, 4, 0.2)
        peak = 0
        try:
            deadline = time.monotonic() + 120
            while (stats := queue.stats())["done"] < 60:
                assert stats["processing"] <= 3, f"{stats['processing']} processing with concurrency=3"
                peak = max(peak, stats["processing"])
                assert time.monotonic() < deadline, f"the jobs did not drain: {stats}"
                time.sleep(0.02)
        finally:
            stop_workers(procs)
        assert peak == 3, f"never more than {peak} processing: the limit was not what held them back"
        assert len(recorded_runs(tmp_path)) == 60

    @requires(Capability.MULTI_PROCESS)
    @pytest.mark.slow
    def test_starts_per_second_within_ten_percent_of_the_rate_over_20_seconds(
        self, queue: polyqueue.Queue, tmp_path: Path
    ) -> None:
        rate = 10
        queue.enqueue_many([{"job_type": "work"} for _ in range(rate * 40)])
        queue.set_limits("default", rate=rate)
        # Slots to spare: a claim takes all the allowance saved since the last one, even on a slow machine.
        procs = start_workers(queue, tmp_path, 3, 10, 0.0)
        try:
            wait_until(lambda: started(queue) > 0, 60, "the first start")
            began, before = time.monotonic(), started(queue)
            time.sleep(20)
            after, elapsed = started(queue), time.monotonic() - began
        finally:
            stop_workers(procs)
        measured = (after - before) / elapsed
        print(f"rate {rate}/s measured {measured:.2f}/s over {elapsed:.1f}s ({queue.backend.name})")
        assert abs(measured - rate) <= 0.1 * rate, f"{measured:.2f} starts/s with rate={rate}/s"

    @requires(Capability.MULTI_PROCESS)
    @pytest.mark.slow
    def test_per_key_one_runs_each_key_alone_while_50_keys_run_in_parallel(
        self, queue: polyqueue.Queue, tmp_path: Path
    ) -> None:
        queue.set_limits("default", per_key=1)
        keys = [f"key-{n}" for n in range(50)]
        queue.enqueue_many([{"job_type": "work", "concurrency_key": k} for _ in range(3) for k in keys])
        # Jobs long enough that every key's first job is running before any ends, on a loaded machine too.
        procs = start_workers(queue, tmp_path, 3, 20, 2.0)
        peak = 0
        try:
            deadline = time.monotonic() + 120
            while (stats := queue.stats())["done"] < 150:
                peak = max(peak, stats["processing"])
                assert time.monotonic() < deadline, f"the jobs did not drain: {stats}"
                time.sleep(0.02)
        finally:
            stop_workers(procs)
        runs = recorded_runs(tmp_path)
        assert len(runs) == 150
        for key in keys:
            spans = sorted((start, end) for _, k, start, end in runs if k == key)
            assert len(spans) == 3
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert start >= end, f"two jobs of {key} ran at once"
        print(f"per_key=1: peak {peak} processing of 50 keys ({queue.backend.name})")
        assert peak >= 45, f"only {peak} of 50 keys ran at once"

    @requires(Capability.MULTI_PROCESS)
    @pytest.mark.slow
    def test_a_hot_key_does_not_starve_a_cold_one_across_processes(
        self, queue: polyqueue.Queue, tmp_path: Path
    ) -> None:
        queue.set_limits("default", concurrency=2, per_key=10)
        queue.enqueue_many([{"job_type": "work", "concurrency_key": "hot"} for _ in range(300)])
        procs = start_workers(queue, tmp_path, 3, 2, 0.05)
        try:
            wait_until(lambda: queue.stats()["done"] >= 10, 60, "the hot key's jobs to flow")
            cold = queue.enqueue_many([{"job_type": "work", "concurrency_key": "cold"} for _ in range(3)])
            hot_before = started(queue)
            wait_until(
                lambda: all(queue.get(i).status == "done" for i in cold),  # type: ignore[union-attr]
                60,
                "the cold key's jobs to run",
            )
            hot_meanwhile = started(queue) - 3 - hot_before
        finally:
            stop_workers(procs)
        print(f"cold key's 3 jobs ran while {hot_meanwhile} hot jobs started ({queue.backend.name})")
        assert hot_meanwhile < 30, f"the cold key waited while {hot_meanwhile} hot jobs started"


# ---------------------------------------------------------------------------
def _run_for(worker: polyqueue.Worker, seconds: float) -> None:
    """Run ``worker`` in a thread for about ``seconds``, then stop it."""
    runner = threading.Thread(target=worker.run)
    runner.start()
    time.sleep(seconds)
    worker.stop()
    runner.join(60)
    assert not runner.is_alive()


def _slot_seconds(fires: list[Any]) -> list[int]:
    """Fired slots of an every-second UTC schedule as whole epoch seconds, oldest first."""
    return sorted(int(datetime.fromisoformat(f.slot).replace(tzinfo=UTC).timestamp()) for f in fires)


@requires(Capability.PERIODIC)
class TestPeriodic:
    """Each slot of a schedule fires exactly once across every worker that declares it."""

    @requires(Capability.MULTI_PROCESS)
    def test_many_workers_fire_each_slot_exactly_once(self, queue: polyqueue.Queue) -> None:
        procs = [spawn(queue, "periodic", "20", "2", "* * * * * *", "every-second") for _ in range(4)]
        for p in procs:
            assert p.wait(120) == 0
        fires = queue.fire_history("every-second", limit=10_000)
        seconds = _slot_seconds(fires)
        assert len(seconds) >= 10, f"only {len(seconds)} slots fired in 20 s"
        assert seconds == list(range(seconds[0], seconds[-1] + 1)), "a slot was skipped"
        job_ids = [f.job_id for f in fires]
        assert None not in job_ids and len(set(job_ids)) == len(fires)
        assert queue.stats_by_type()["default"]["tick"]["pending"] == len(fires), "a slot fired twice"

    def test_a_worker_started_after_missed_slots_fires_once(self, queue: polyqueue.Queue) -> None:
        first = polyqueue.Worker(queue)
        first.periodic("* * * * * *", "tick", name="missed")
        _run_for(first, 2.5)
        before = queue.fire_history("missed")
        assert before, "the first worker never fired"
        time.sleep(3.5)  # at least three slots pass with no worker declaring the schedule
        late = polyqueue.Worker(queue)
        late.periodic("* * * * * *", "tick", name="missed")
        starting = queue.backend.db_now()
        late.run(burst=True)
        after = queue.fire_history("missed")
        assert len(after) == len(before) + 1, "the missed slots must fire once, not once each"
        # The slot it fires is the latest one due when it fired, so within a second before it started, however
        # late that was: the missed ones are over two seconds older.
        assert after[0].slot_at > starting - timedelta(seconds=1), "the catch-up fires the latest missed slot"

    @pytest.mark.parametrize("catch_up", ["none", "all"])
    def test_catch_up_none_and_all(self, queue: polyqueue.Queue, catch_up: str) -> None:
        first = polyqueue.Worker(queue)
        first.periodic("* * * * * *", "tick", name=f"catch-{catch_up}")
        _run_for(first, 2.5)
        before = _slot_seconds(queue.fire_history(f"catch-{catch_up}"))
        assert before, "the first worker never fired"
        time.sleep(3.5)  # at least three slots pass with no worker declaring the schedule
        late = polyqueue.Worker(queue)
        late.periodic("* * * * * *", "tick", name=f"catch-{catch_up}", catch_up=catch_up)
        late.run(burst=True)
        ended = queue.backend.db_now().timestamp()
        fired = _slot_seconds(queue.fire_history(f"catch-{catch_up}"))[len(before) :]
        if catch_up == "none":
            assert fired == []
        else:
            # Every slot since the last one fired, and none to come: however long the late worker took to start.
            assert len(fired) >= 3 and fired == list(range(before[-1] + 1, fired[-1] + 1)) and fired[-1] <= ended

    def test_dst_slots_fire_once_each(self, queue: polyqueue.Queue) -> None:
        from polyqueue.backends.base import FireRequest
        from polyqueue.job import NewJob
        from polyqueue.periodic import Schedule

        daily = Schedule.build("30 2 * * *", "tick", name="berlin-0230", timezone="Europe/Berlin")
        half_hourly = Schedule.build("*/30 * * * *", "tick", name="berlin-30min", timezone="Europe/Berlin")
        spring = (datetime(2026, 3, 27, tzinfo=UTC), datetime(2026, 3, 31, tzinfo=UTC))
        autumn = (datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 3, 10, tzinfo=UTC))
        plans = [(daily, *spring), (daily, *autumn), (half_hourly, *autumn)]
        for schedule, start, end in plans:
            slots = schedule.latest_slots(start, end, 1000)
            for _ in range(2):  # every slot twice: the second attempt must store nothing
                for slot in slots:
                    job = NewJob("default", "tick", "null", 0, 5, 0.0, None)
                    queue.backend.fire(FireRequest(schedule.name, slot.key, slot.at, job))
        daily_fires = {f.slot: f.slot_at for f in queue.fire_history("berlin-0230")}
        assert daily_fires["2026-03-29T02:30:00"] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # skipped: at the jump
        assert daily_fires["2026-10-25T02:30:00"] == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # repeated: once
        assert len(daily_fires) == 5
        fall_back = [f.slot for f in queue.fire_history("berlin-30min")][::-1]
        assert fall_back == [f"2026-10-25T{t}:00" for t in ("00:30", "01:00", "01:30", "02:00", "02:30", "03:00",
                                                          "03:30", "04:00")], fall_back  # fmt: skip
        assert queue.stats()["pending"] == 5 + 8

    def test_a_removed_schedule_stops_firing_and_keeps_its_history(self, queue: polyqueue.Queue) -> None:
        both = polyqueue.Worker(queue)
        both.periodic("* * * * * *", "tick", name="kept")
        both.periodic("* * * * * *", "tick", name="removed")
        _run_for(both, 2.5)
        removed_before = len(queue.fire_history("removed"))
        kept_before = len(queue.fire_history("kept"))
        assert removed_before >= 1 and kept_before >= 1
        only = polyqueue.Worker(queue)
        only.periodic("* * * * * *", "tick", name="kept")
        _run_for(only, 2.5)
        assert len(queue.fire_history("removed")) == removed_before
        assert len(queue.fire_history("kept")) > kept_before
        listed = {record.spec.name: record for record in queue.schedules()}
        assert set(listed) == {"kept", "removed"}
        assert listed["removed"].last_fire is not None
        assert listed["removed"].declared_at < listed["kept"].declared_at

    def test_fires_run_as_jobs_and_old_fire_rows_are_purged(self, queue: polyqueue.Queue) -> None:
        worker = polyqueue.Worker(queue, concurrency=2)
        ran: list[Any] = []

        @worker.periodic("* * * * * *", payload={"report": "daily"}, name="reports")
        def build_report(job: Job) -> None:
            ran.append(job.payload)

        _run_for(worker, 3.5)
        fires = queue.fire_history("reports")
        assert fires and all(p == {"report": "daily"} for p in ran) and ran
        assert queue.purge("done", older_than=0) >= 1
        kept = queue.fire_history("reports")
        assert [f.slot for f in kept] == [fires[0].slot] or len(kept) <= 1

    def test_bad_schedules_are_refused(self, queue: polyqueue.Queue) -> None:
        worker = polyqueue.Worker(queue)
        for bad in ("* * * *", "61 * * * *", "", "@sometimes", "* * * * * * *"):
            with pytest.raises(InvalidArgument):
                worker.periodic(bad, "tick")
        with pytest.raises(InvalidArgument, match="time zone"):
            worker.periodic("* * * * *", "tick", timezone="Mars/Olympus")
        with pytest.raises(InvalidArgument):
            worker.periodic("* * * * *", "tick", catch_up="sometimes")
        with pytest.raises(InvalidPayload):
            worker.periodic("* * * * *", "tick", payload={1, 2})
        worker.periodic("* * * * *", "tick")
        with pytest.raises(InvalidArgument, match="already declared"):
            worker.periodic("*/2 * * * *", "tick")


# ---------------------------------------------------------------------------
@requires(Capability.TRANSFER)
class TestTransfer:
    """Export in pages, import with every field and an idempotency key, fenced delete: what transfers use."""

    def _other(self, queue_factory: QueueFactory) -> polyqueue.Queue:
        other = queue_factory(table_prefix=unique_prefix())
        other.migrate()
        return other

    def _history(self, q: polyqueue.Queue) -> dict[str, Any]:
        """Jobs in every movable state, with results, error histories and attempts; their ids by name."""
        ids = {name: q.enqueue("t", {"name": name}) for name in ("pending", "retried", "dead", "done", "cancelled")}
        ids["later"] = q.enqueue("t", {"name": "later"}, queue="other", max_attempts=7)
        for job in q.claim(limit=4):
            name = job.payload["name"]
            if name == "retried":
                q.fail(job, "try again", retry_in=3600)
            elif name == "dead":
                q.fail(job, "gave up", dead=True)
            elif name == "done":
                q.complete(job, {"ok": [1, 2]})
            else:
                q.release(job)
        q.cancel(ids["cancelled"])
        return ids

    def test_export_pages_in_id_order_and_import_keeps_every_field(self, queue_factory: QueueFactory) -> None:
        q = queue_factory()
        ids = self._history(q)
        every = frozenset({"pending", "dead", "done", "cancelled"})
        pages, after = [], None
        while page := q.backend.export_jobs(ExportQuery(every, None, after, 2)):
            pages.append(page)
            after = page[-1].id
        records = [r for page in pages for r in page]
        assert [len(page) for page in pages] == [2, 2, 2]
        assert sorted(map(str, (r.id for r in records))) == sorted(map(str, ids.values()))
        assert len(q.backend.export_jobs(ExportQuery(frozenset({"dead"})))) == 1
        assert [r.queue for r in q.backend.export_jobs(ExportQuery(every, "other"))] == ["other"]
        other = self._other(queue_factory)
        try:
            keyed = [dataclasses.replace(r, import_key=f"key-{n}") for n, r in enumerate(records)]
            result = other.backend.import_jobs(ImportBatch(keyed))
            assert result.existing == set() and result.skipped == {} and None not in result.ids
            for record, new_id in zip(keyed, result.ids, strict=True):
                moved = other.require(new_id)
                original = q.require(record.id)
                for name in ("queue", "job_type", "payload", "priority", "status", "attempts", "max_attempts",
                             "last_error", "dedupe_key", "result", "errors", "dedupe_for"):  # fmt: skip
                    assert getattr(moved, name) == getattr(original, name), name
                for name in ("run_at", "created_at", "finished_at"):
                    a, b = getattr(moved, name), getattr(original, name)
                    assert (a is None) == (b is None) and (a is None or close_to(a, b, 0.002)), name
            retried = other.require(result.ids[[r.id for r in records].index(ids["retried"])])
            assert retried.attempts == 1 and retried.errors[-1]["error"] == "try again"
            again = other.backend.import_jobs(ImportBatch(keyed))
            assert again.ids == result.ids and again.existing == set(range(len(keyed))), "an import key stores once"
            assert sum(other.stats().values()) - other.stats()["scheduled"] == len(records)
        finally:
            drop_schema(other)

    def test_delete_takes_only_jobs_unchanged_since_the_export(self, queue: polyqueue.Queue) -> None:
        kept, taken = queue.enqueue("t", {"n": 1}), queue.enqueue("t", {"n": 2})
        records = queue.backend.export_jobs(ExportQuery(frozenset({"pending"})))
        assert [r.id for r in records] == [kept, taken]
        (job,) = queue.claim()
        assert job.id == kept
        assert queue.backend.delete_jobs(DeleteRequest(records)) == {taken}
        assert queue.get(taken) is None and queue.require(kept).status == "processing"
        assert queue.backend.delete_jobs(DeleteRequest(records)) == set()
        assert queue.backend.export_jobs(ExportQuery(frozenset({"pending", "processing"}))) == []

    def test_transfer_moves_what_was_asked_and_leaves_processing_jobs(self, queue_factory: QueueFactory) -> None:
        q = queue_factory()
        ids = self._history(q)
        busy = q.enqueue("busy", {"name": "busy"})
        (held,) = q.claim(job_types=["busy"])
        assert held.id == busy
        other = self._other(queue_factory)
        try:
            dry = polyqueue.transfer(q, other, dry_run=True)
            assert (dry.moved, dry.dry_run) == (4, True) and other.stats()["pending"] == 0
            result = polyqueue.transfer(q, other, batch_size=2)
            assert (result.moved, result.processing) == (4, 1)
            assert result.by_status == {"pending": 2, "scheduled": 1, "dead": 1}
            assert {j.payload["name"] for j in other.claim(["default", "other"], limit=10)} == {"pending", "later"}
            assert other.stats() | {"processing": 0} == {
                "pending": 1, "scheduled": 1, "processing": 0, "done": 0, "dead": 1, "cancelled": 0,
            }  # fmt: skip
            left = q.stats()
            assert (left["pending"], left["dead"], left["done"], left["processing"]) == (0, 0, 1, 1)
            assert q.get(ids["done"]) is not None and q.get(ids["pending"]) is None
            rest = polyqueue.transfer(q, other, statuses=["done", "cancelled"])
            assert rest.moved == 2 and q.stats()["done"] == 0
            for bad in (["processing"], ["nope"], []):
                with pytest.raises(InvalidArgument):
                    polyqueue.transfer(q, other, statuses=bad)
            with pytest.raises(InvalidArgument):
                polyqueue.transfer(q, other, batch_size=0)
            with pytest.raises(polyqueue.ConfigurationError, match="same queue"):
                polyqueue.transfer(q, q)
        finally:
            drop_schema(other)


# ---------------------------------------------------------------------------
@requires(Capability.LIST_JOBS)
class TestListJobs:
    """``list_jobs``: keyset pages of jobs, newest first, filtered by queue, status and type."""

    def _mixed(self, q: polyqueue.Queue) -> dict[str, list[Any]]:
        """Jobs of two queues and two types in every status; their ids by status, oldest first."""
        ids: dict[str, list[Any]] = {s: [] for s in ("pending", "processing", "done", "dead", "cancelled")}
        specs = [{"job_type": "a" if i % 2 else "b", "queue": "q1" if i % 3 else "q2", "payload": i} for i in range(20)]
        all_ids = q.enqueue_many(specs)
        claimed = {job.id: job for job in q.claim(["q1", "q2"], limit=12)}
        for n, job_id in enumerate(all_ids):
            job = claimed.get(job_id)
            if job is None:
                if n % 4 == 0:
                    q.cancel(job_id)
                    ids["cancelled"].append(job_id)
                else:
                    ids["pending"].append(job_id)
            elif n % 3 == 0:
                q.complete(job)
                ids["done"].append(job_id)
            elif n % 3 == 1:
                q.fail(job, "broken", dead=True)
                ids["dead"].append(job_id)
            else:
                ids["processing"].append(job_id)
        return ids

    def _pages(self, q: polyqueue.Queue, limit: int, **filters: Any) -> list[list[Any]]:
        pages: list[list[Any]] = []
        after = None
        while True:
            page = q.list_jobs(after=after, limit=limit, **filters)
            if not page:
                return pages
            assert len(page) <= limit
            pages.append([job.id for job in page])
            after = page[-1].id

    def test_pages_cover_every_job_once_newest_first(self, queue: polyqueue.Queue) -> None:
        ids = self._mixed(queue)
        everything = [job_id for listed in ids.values() for job_id in listed]
        first = queue.list_jobs()
        assert len(first) == 20 and {job.id for job in first} == set(everything)
        pages = self._pages(queue, 3)
        flat = [job_id for page in pages for job_id in page]
        assert flat == [job.id for job in first], "pages are the full list, cut in order, none twice"
        assert [len(page) for page in pages] == [3] * 6 + [2]
        created = [job.created_at for job in first]
        assert created == sorted(created, reverse=True)  # type: ignore[type-var]

    def test_filters_by_queue_status_and_type(self, queue: polyqueue.Queue) -> None:
        ids = self._mixed(queue)
        jobs = {job.id: job for job in queue.list_jobs()}
        for status, expected in ids.items():
            listed = queue.list_jobs(status=status)
            assert {j.id for j in listed} == set(expected) and all(j.status == status for j in listed)
        both = queue.list_jobs(status=["dead", "done"])
        assert {j.id for j in both} == set(ids["dead"] + ids["done"])
        assert [j.id for j in both] == [i for i in jobs if i in set(ids["dead"] + ids["done"])], "newest first"
        for name in ("q1", "q2"):
            assert {j.id for j in queue.list_jobs(queue=name)} == {i for i, j in jobs.items() if j.queue == name}
        wanted = {i for i, j in jobs.items() if j.queue == "q1" and j.job_type == "a" and j.status == "pending"}
        assert {j.id for j in queue.list_jobs(queue="q1", status="pending", job_type="a")} == wanted
        assert {j.id for j in queue.list_jobs(job_type="b")} == {i for i, j in jobs.items() if j.job_type == "b"}
        assert queue.list_jobs(queue="nowhere") == []
        assert queue.list_jobs(status="done", job_type="nothing") == []

    def test_filtered_pages_are_keyset_pages(self, queue: polyqueue.Queue) -> None:
        ids = self._mixed(queue)
        whole = [j.id for j in queue.list_jobs(queue="q1", status=["pending", "dead", "done"])]
        pages = self._pages(queue, 2, queue="q1", status=["pending", "dead", "done"])
        assert [i for page in pages for i in page] == whole
        cut = whole[len(whole) // 2]
        newer = queue.enqueue("a", queue="q1")  # a job added meanwhile never shifts the pages after a cursor
        assert [j.id for j in queue.list_jobs(queue="q1", status=["pending", "dead", "done"], after=cut)] == (
            whole[whole.index(cut) + 1 :]
        )
        assert queue.list_jobs(queue="q1", status="pending")[0].id == newer
        assert len(ids["pending"]) > 0

    def test_the_listed_job_is_the_whole_job(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", {"x": [1, "y"]}, queue="full", max_attempts=2)
        [job] = queue.claim("full")
        queue.fail(job, "first failure")
        [listed] = queue.list_jobs(queue="full")
        got = queue.get(job_id)
        assert got is not None
        assert listed == got
        assert listed.payload == {"x": [1, "y"]} and listed.errors and listed.errors[-1]["error"] == "first failure"

    def test_bad_input_is_refused(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        bad: dict[str, Any]
        for bad in ({"status": "waiting"}, {"status": []}, {"status": ["done", "nope"]}, {"limit": 0},
                    {"limit": 1001}, {"limit": "5"}, {"queue": ""}, {"job_type": "x" * 256}):  # fmt: skip
            with pytest.raises(InvalidArgument):
                queue.list_jobs(**bad)
        with pytest.raises(InvalidArgument):
            queue.list_jobs(after=object())

    def test_async_queue_lists_the_same_pages(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        ids = self._mixed(queue)

        async def test(aq: polyqueue.AsyncQueue) -> None:
            first = await aq.list_jobs(status=("dead", "pending"), limit=4)
            assert [j.id for j in first] == [j.id for j in queue.list_jobs(status=["dead", "pending"], limit=4)]
            rest = await aq.list_jobs(status=("dead", "pending"), after=first[-1].id, limit=100)
            assert {j.id for j in first + rest} == set(ids["dead"] + ids["pending"])
            with pytest.raises(InvalidArgument):
                await aq.list_jobs(status="waiting")

        in_loop(queue_factory, test)


@requires(Capability.RETRY_NOW, Capability.DELAYED)
class TestRetryNow:
    """``retry_now``: a pending job waiting out its back-off becomes due now, and nothing else changes."""

    def test_a_waiting_retry_becomes_due(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", queue="rn")
        [job] = queue.claim("rn")
        queue.fail(job, "flaky", retry_in=3600)
        assert queue.claim("rn") == [] and queue.stats("rn")["scheduled"] == 1
        assert queue.retry_now(job_id) is True
        assert queue.retry_now(job_id) is False, "due already: nothing to do"
        [again] = queue.claim("rn")
        assert again.id == job_id and again.attempts == 2 and again.errors[-1]["error"] == "flaky"
        assert queue.retry_now(job_id) is False, "processing jobs are left alone"
        queue.complete(again)
        assert queue.retry_now(job_id) is False and queue.retry_now("no-such-job") is False

    def test_a_due_job_keeps_its_place(self, queue: polyqueue.Queue) -> None:
        first = queue.enqueue("t", queue="rn")
        second = queue.enqueue("t", queue="rn")
        assert queue.retry_now(first) is False
        assert [j.id for j in queue.claim("rn", limit=2)] == [first, second]

    def test_async_queue_mirrors_it(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        job_id = queue.enqueue("t", queue="rn", delay=3600)

        async def test(aq: polyqueue.AsyncQueue) -> None:
            assert await aq.retry_now(job_id) is True

        in_loop(queue_factory, test)
        assert [j.id for j in queue.claim("rn")] == [job_id]


@requires(Capability.THROUGHPUT)
class TestThroughput:
    """``throughput``: jobs finished per slice of the last hour, from the store's clock."""

    def test_counts_finished_jobs_per_queue_and_status(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "t", "queue": "tp"} for _ in range(4)] + [{"job_type": "t", "queue": "other"}])
        jobs = queue.claim(["tp", "other"], limit=5)
        for job in jobs[:3]:
            queue.complete(job)
        queue.fail(jobs[3], "nope", dead=True)
        queue.complete(jobs[4])
        seen = queue.throughput()
        assert seen.bucket_seconds == 60 and seen.db_now.tzinfo is not None
        assert sum(seen.counts["tp"]["done"]) == 3 and sum(seen.counts["tp"]["dead"]) == 1
        assert len(seen.counts["tp"]["done"]) == 60 and seen.counts["tp"]["done"][-1] == 3, "the newest slice is last"
        assert sum(seen.counts["other"]["done"]) == 1
        one = queue.throughput("tp", window="10m", buckets=5)
        assert set(one.counts) == {"tp"} and one.bucket_seconds == 120 and len(one.counts["tp"]["dead"]) == 5
        assert queue.throughput("nowhere").counts == {}
        for window, buckets in ((0, 60), (3600, 0), (3600, 1441)):
            with pytest.raises(InvalidArgument):
                queue.throughput(window=window, buckets=buckets)


# ---------------------------------------------------------------------------
class TestMigrate:
    """Schema creation."""

    def test_migrate_is_idempotent(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t")
        queue.migrate()
        queue.migrate()
        assert queue.get(job_id) is not None

    def test_unmigrated_store_says_to_migrate(self, queue_factory: QueueFactory) -> None:
        queue_factory()
        bare = queue_factory(table_prefix=unique_prefix())
        with pytest.raises(SchemaMissing, match="polyqueue migrate"):
            bare.enqueue("t")
        with pytest.raises(SchemaMissing):
            bare.claim()

    @requires(Capability.MULTI_PROCESS)
    def test_two_processes_migrating_at_once_both_succeed(self, queue_factory: QueueFactory) -> None:
        queue_factory()
        fresh = queue_factory(table_prefix=unique_prefix())
        try:
            procs = [spawn(fresh, "migrate") for _ in range(2)]
            assert [p.wait(60) for p in procs] == [0, 0]
            assert fresh.get(fresh.enqueue("t")) is not None
        finally:
            drop_schema(fresh)


# ---------------------------------------------------------------------------
HOSTILE_NAMES = [
    "it's",
    'say "hi"',
    "x'; DROP TABLE polyqueue_jobs; --",
    "`tick`",
    "😀 emoji queue",
    "q" * 255,
    "%s %(x)s ? :name $1",
    "back\\slash",
]


#: Ids of the wrong form or range: Unicode digits ('²'.isdigit() is true), beyond 64 bits, signs, floats, bytes.
ODD_JOB_IDS: list[Any] = ["²", "١٢", 2**70, str(2**70), 2**63, -1, 0, "-5", "1e3", "0x1", "", "abc", 1.5, None,
                          True, b"1", (1,), "9" * 40]  # fmt: skip


class TestBadInput:
    """Bad input fails clearly and stores nothing."""

    @pytest.mark.parametrize(
        "payload",
        [
            object(),
            {1, 2},
            b"bytes",
            float("nan"),
            float("inf"),
            {"k": (1, 2)},
            {1: "int key"},
            {"f": len},
            {"k": [{"deep": float("-inf")}]},
            {"text": "lone \ud800 surrogate"},
        ],
        ids=["object", "set", "bytes", "nan", "inf", "tuple", "int-key", "function", "nested-inf", "surrogate"],
    )
    def test_non_json_payload_is_rejected(self, queue: polyqueue.Queue, payload: Any) -> None:
        with pytest.raises(InvalidPayload):
            queue.enqueue("t", payload)
        assert queue.stats()["pending"] == 0

    def test_oversized_payload_is_rejected(self, queue_factory: QueueFactory) -> None:
        q = queue_factory()
        with pytest.raises(PayloadTooLarge):
            q.enqueue("t", "x" * (1 << 20))
        small = queue_factory(max_payload_bytes=1000)
        with pytest.raises(PayloadTooLarge):
            small.enqueue("t", {"blob": "é" * 600})
        assert q.stats()["pending"] == 0

    def test_one_bad_job_rejects_the_whole_batch(self, queue: polyqueue.Queue) -> None:
        with pytest.raises(InvalidPayload):
            queue.enqueue_many([{"job_type": "ok"}, {"job_type": "bad", "payload": {1, 2}}])
        with pytest.raises(InvalidArgument):
            queue.enqueue_many([{"job_type": "ok"}, {"job_type": "x", "queue": ""}])
        with pytest.raises(InvalidArgument):
            queue.enqueue_many([{"job_type": "ok"}, {"job_typo": "x"}])
        assert queue.stats()["pending"] == 0

    def test_hostile_queue_names_are_data(self, queue: polyqueue.Queue) -> None:
        ids = {name: queue.enqueue(name, {"q": name}, queue=name) for name in HOSTILE_NAMES}
        for name, job_id in ids.items():
            (job,) = queue.claim(name, limit=5)
            assert (job.id, job.queue, job.job_type, job.payload) == (job_id, name, name, {"q": name})
            assert queue.stats(name)["processing"] == 1
        assert queue.stats()["processing"] == len(HOSTILE_NAMES)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"queue": ""},
            {"queue": "q" * 256},
            {"queue": 5},
            {"queue": "nul\x00byte"},
            {"priority": "1"},
            {"priority": 2**40},
            {"max_attempts": 0},
            {"delay": -1},
            {"delay": "soon"},
            {"delay": 1e13},
            {"dedupe_key": ""},
            {"run_at": datetime(2030, 1, 1)},
        ],
    )
    def test_invalid_arguments_are_rejected(self, queue: polyqueue.Queue, kwargs: dict[str, Any]) -> None:
        with pytest.raises(InvalidArgument):
            queue.enqueue("t", **kwargs)
        assert queue.stats()["pending"] == 0

    def test_invalid_claim_and_job_arguments(self, queue: polyqueue.Queue) -> None:
        for limit, lease in ((0, 30.0), (10**6, 30.0), (1, 0.0), (1, -3.0)):
            with pytest.raises(InvalidArgument):
                queue.claim(limit=limit, lease=lease)
        with pytest.raises(InvalidArgument):
            queue.claim([])
        with pytest.raises(InvalidArgument):
            queue.complete("not a job")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            queue.enqueue("")

    def test_odd_job_ids_are_not_found_on_every_path(self, queue: polyqueue.Queue) -> None:
        """Ids no backend could have issued: one answer everywhere, never a driver's or int()'s exception."""
        real = queue.enqueue("t")
        for job_id in ODD_JOB_IDS:
            assert queue.get(job_id) is None, job_id
            with pytest.raises(polyqueue.JobNotFound):
                queue.require(job_id)
            assert queue.cancel(job_id) is False, job_id
        assert queue.replay_detailed(ODD_JOB_IDS).replayed == 0
        assert queue.require(real).status == "pending"  # nothing else was touched


# ---------------------------------------------------------------------------
@requires(Capability.TRANSACTIONAL_ENQUEUE)
class TestTransactionalEnqueue:
    """The job exists if and only if the caller's transaction commits."""

    def test_commit_makes_the_job_visible(self, queue: polyqueue.Queue) -> None:
        with caller_transaction(queue) as conn:
            job_id = queue.enqueue("t", {"n": 1}, connection=conn)
            ids = queue.enqueue_many([{"job_type": "t"}, {"job_type": "t"}], connection=conn)
        assert queue.get(job_id) is not None
        assert len(queue.claim(limit=5)) == 1 + len(ids)

    def test_rollback_leaves_no_job(self, queue: polyqueue.Queue) -> None:
        with pytest.raises(RuntimeError), caller_transaction(queue) as conn:
            job_id = queue.enqueue("t", connection=conn)
            raise RuntimeError("the application's transaction fails")
        assert queue.get(job_id) is None
        assert queue.claim() == []
        assert queue.stats()["pending"] == 0


# ---------------------------------------------------------------------------
#: How long an async test waits for something that should happen at once (a loaded machine is slow, never this slow).
_PATIENCE = 60.0


def in_loop(
    make_queue: QueueFactory, test: Callable[[polyqueue.AsyncQueue], Coroutine[Any, Any, Any]], **options: Any
) -> Any:
    """Run ``test`` on an AsyncQueue over a new Queue of the test's store (``queue_factory(**options)``).

    The AsyncQueue lives in one fresh event loop (``asyncio.run``), and is closed in it.
    """

    async def main() -> Any:
        aq = polyqueue.AsyncQueue(make_queue(**options))
        try:
            return await asyncio.wait_for(test(aq), _PATIENCE * 2)
        finally:
            await aq.close()

    return asyncio.run(main())


class TestAsyncQueue:
    """``AsyncQueue``: the Queue's methods as coroutines, with the same checks, errors and results."""

    def test_the_queue_methods_as_coroutines(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        async def test(aq: polyqueue.AsyncQueue) -> None:
            first = await aq.enqueue("send", {"to": "a"}, queue="mail")
            more = await aq.enqueue_many([{"job_type": "send", "payload": {"n": n}, "queue": "mail"} for n in range(3)])
            assert len({first, *more}) == 4
            job = await aq.get(first)
            assert job is not None and (job.queue, job.job_type, job.payload, job.status) == (
                "mail", "send", {"to": "a"}, "pending",
            )  # fmt: skip
            assert (await aq.require(first)).id == first
            assert await aq.depth("mail") == 4 and (await aq.stats("mail"))["pending"] == 4
            claimed = await aq.claim("mail", limit=3, lease=30, worker_id="async-1")
            assert [j.id for j in claimed] == [first, *more[:2]]
            assert all(j.locked_by == "async-1" and j.attempts == 1 for j in claimed)
            done, failing, given_back = claimed
            await aq.extend(done, 60)
            await aq.complete(done, {"sent": True})
            await aq.fail(failing, "boom", dead=True)
            await aq.release(given_back)
            assert await aq.cancel(more[2]) is True
            assert await aq.cancel("no-such-id") is False
            assert [j.id for j in await aq.dead_jobs("mail")] == [failing.id]
            assert await aq.replay([failing.id]) == 1
            assert (await aq.stats_by_queue())["mail"]["pending"] == 2
            assert (await aq.stats_by_type("mail"))["mail"]["send"]["done"] == 1
            await asyncio.sleep(0.05)
            assert await aq.purge("done", older_than=0) == 1
            assert await aq.get(first) is None

        in_loop(queue_factory, test)
        assert queue.stats("mail") == {**queue.stats("nothing"), "pending": 2, "cancelled": 1}

    def test_bad_input_raises_the_queues_errors_and_stores_nothing(
        self, queue: polyqueue.Queue, queue_factory: QueueFactory
    ) -> None:
        async def test(aq: polyqueue.AsyncQueue) -> None:
            with pytest.raises(InvalidPayload):
                await aq.enqueue("t", {1, 2})
            with pytest.raises(PayloadTooLarge):
                await aq.enqueue("t", "x" * (1 << 20))
            with pytest.raises(InvalidArgument):
                await aq.enqueue("", None)
            with pytest.raises(InvalidArgument):
                await aq.enqueue("t", queue="q" * 256)
            with pytest.raises(InvalidArgument):
                await aq.enqueue_many([{"job_type": "ok"}, {"job_typo": "x"}])
            with pytest.raises(InvalidArgument):
                await aq.claim(limit=0)
            with pytest.raises(InvalidArgument):
                await aq.complete("not a job")  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument):
                await aq.purge("pending", older_than=0)
            with pytest.raises(polyqueue.JobNotFound):
                await aq.require(987654321)

        in_loop(queue_factory, test)
        assert queue.stats()["pending"] == 0

    def test_a_claim_that_lost_its_job_is_lease_lost(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        async def test(aq: polyqueue.AsyncQueue) -> Any:
            await aq.enqueue("t")
            (stale,) = await aq.claim(lease=0.3, worker_id="stale")
            await asyncio.to_thread(sleep_past, queue, stale.lease_expires_at)
            (fresh,) = await aq.claim(lease=30, worker_id="fresh")
            for settle in (aq.complete(stale), aq.fail(stale, "late"), aq.extend(stale, 60), aq.release(stale)):
                with pytest.raises(LeaseLost):
                    await settle
            await aq.complete(fresh, "ok")
            return fresh.id

        job = queue.get(in_loop(queue_factory, test))
        assert job is not None and (job.status, job.attempts, job.result, job.locked_by) == ("done", 2, "ok", None)

    def test_concurrent_enqueues_from_one_loop_each_store_one_job(
        self, queue: polyqueue.Queue, queue_factory: QueueFactory
    ) -> None:
        async def test(aq: polyqueue.AsyncQueue) -> list[Any]:
            return await asyncio.gather(*(aq.enqueue("t", {"i": i}) for i in range(100)))

        ids = in_loop(queue_factory, test)
        assert len(set(ids)) == 100
        claimed = queue.claim(limit=200)
        assert sorted(j.payload["i"] for j in claimed) == list(range(100))
        assert {j.id for j in claimed} == set(ids)

    def test_a_closed_async_queue_refuses_calls(self, queue_factory: QueueFactory) -> None:
        queue_factory()  # the test's store; the AsyncQueue below closes a second queue on it, not this one

        async def test() -> None:
            aq = polyqueue.AsyncQueue(queue_factory())
            await aq.enqueue("t")
            await aq.close()
            await aq.close()
            with pytest.raises(polyqueue.PolyqueueError, match="closed"):
                await aq.enqueue("t")

        asyncio.run(test())


@requires(Capability.TRANSACTIONAL_ENQUEUE)
class TestAsyncTransactionalEnqueue:
    """On an asyncio connection, the job exists if and only if the caller's transaction commits."""

    @staticmethod
    def _in_transaction(queue: polyqueue.Queue, queue_factory: QueueFactory, work: Callable[..., Any]) -> Any:
        async def test(aq: polyqueue.AsyncQueue) -> Any:
            try:
                transaction = async_caller_transaction(queue)
                async with transaction as conn:
                    return await work(aq, conn)
            except NotImplementedError as exc:
                pytest.skip(f"no asyncio caller transaction: {exc}")

        return in_loop(queue_factory, test)

    def test_commit_makes_the_jobs_visible(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        async def work(aq: polyqueue.AsyncQueue, conn: Any) -> list[Any]:
            one = await aq.enqueue("t", {"n": 1}, connection=conn)
            return [one, *await aq.enqueue_many([{"job_type": "t"}, {"job_type": "t"}], connection=conn)]

        ids = self._in_transaction(queue, queue_factory, work)
        assert {j.id for j in queue.claim(limit=5)} == set(ids) and len(ids) == 3

    def test_rollback_leaves_no_job(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        async def work(aq: polyqueue.AsyncQueue, conn: Any) -> None:
            await aq.enqueue("t", connection=conn)
            raise RuntimeError("the application's transaction fails")

        with pytest.raises(RuntimeError):
            self._in_transaction(queue, queue_factory, work)
        assert queue.claim() == [] and queue.stats()["pending"] == 0


class TestAsyncWorker:
    """``async def`` handlers: awaited on one event loop, many in flight, the same policy, graceful shutdown."""

    def test_async_handlers_are_awaited_and_their_results_stored(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many([{"job_type": "square", "payload": {"n": n}} for n in range(20)])
        worker = polyqueue.Worker(queue, concurrency=5)

        @worker.handler("square")
        async def square(job: Job) -> int:
            await asyncio.sleep(0)
            return int(job.payload["n"]) ** 2

        assert worker.run(burst=True) == 20
        assert [queue.get(i).result for i in ids] == [n * n for n in range(20)]  # type: ignore[union-attr]

    def test_many_async_handlers_are_in_flight_at_once(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": "meet"} for _ in range(40)])
        worker = polyqueue.Worker(queue, concurrency=40)
        threads: set[int] = set()
        barrier: list[asyncio.Barrier] = []

        @worker.handler("meet")
        async def meet(job: Job) -> None:
            if not barrier:
                barrier.append(asyncio.Barrier(40))
            threads.add(threading.get_ident())
            # Passes only when all 40 handlers wait here at the same time, on one loop.
            await asyncio.wait_for(barrier[0].wait(), _PATIENCE)

        assert asyncio.run(worker.run_async(burst=True)) == 40
        assert len(threads) == 1 and threads == {threading.get_ident()}
        assert queue.stats()["done"] == 40

    def test_sync_and_async_handlers_share_the_concurrency(self, queue: polyqueue.Queue) -> None:
        queue.enqueue_many([{"job_type": t, "payload": {"i": i}} for i in range(12) for t in ("aio", "blocking")])
        worker = polyqueue.Worker(queue, concurrency=3, batch_size=10)
        lock = threading.Lock()
        running = [0]
        most = [0]

        def enter() -> None:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])

        def leave() -> None:
            with lock:
                running[0] -= 1

        @worker.handler("aio")
        async def aio(job: Job) -> None:
            enter()
            await asyncio.sleep(0.01)
            leave()

        @worker.handler("blocking")
        def blocking(job: Job) -> None:
            enter()
            time.sleep(0.01)
            leave()

        assert worker.run(burst=True) == 24
        assert 1 <= most[0] <= 3
        assert queue.stats()["done"] == 24

    def test_a_failing_async_handler_retries_then_dead_letters(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=0.01)
        flaky = q.enqueue("flaky", max_attempts=3)
        doomed = q.enqueue("doomed", max_attempts=2)
        worker = polyqueue.Worker(q, concurrency=2)

        @worker.handler("flaky")
        async def flaky_handler(job: Job) -> str:
            if job.attempts < 2:
                raise RuntimeError("first try fails")
            return "ok"

        @worker.handler("doomed")
        async def doomed_handler(job: Job) -> None:
            await asyncio.sleep(0)
            raise ValueError("never works")

        run_until_settled(worker, q)
        f, d = q.get(flaky), q.get(doomed)
        assert f is not None and (f.status, f.attempts, f.result) == ("done", 2, "ok")
        assert d is not None and (d.status, d.attempts) == ("dead", 2)
        assert "ValueError: never works" in (d.last_error or "") and len(d.errors) == 2

    def test_a_sync_handler_returning_a_coroutine_is_awaited(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("wrapped", {"n": 4})

        async def double(n: int) -> int:
            await asyncio.sleep(0)
            return n * 2

        worker = polyqueue.Worker(queue, concurrency=1)
        worker.register("wrapped", lambda job: double(job.payload["n"]))
        assert worker.run(burst=True) == 1
        job = queue.get(job_id)
        assert job is not None and (job.status, job.result) == ("done", 8)

    def test_heartbeats_keep_a_long_async_job_leased(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("long")
        # A 3 s lease heartbeated every second, held for 1.5 leases: a margin that holds on a loaded machine.
        worker = polyqueue.Worker(queue, concurrency=1, lease=3.0)
        stolen: list[Job] = []

        @worker.handler("long")
        async def long(job: Job) -> str:
            deadline = time.monotonic() + 4.5
            while time.monotonic() < deadline:
                stolen.extend(await asyncio.to_thread(queue.claim, lease=30))
                await asyncio.sleep(0.3)
            return "finished"

        worker.run(burst=True)
        job = queue.get(job_id)
        assert stolen == [] and job is not None and (job.status, job.attempts, job.result) == ("done", 1, "finished")

    def test_stop_lets_running_async_jobs_finish(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("wait")

        async def main() -> int:
            worker = polyqueue.Worker(queue, concurrency=2, shutdown_timeout=_PATIENCE)
            started, finish = asyncio.Event(), asyncio.Event()

            @worker.handler("wait")
            async def wait(job: Job) -> str:
                started.set()
                await finish.wait()
                return "finished"

            running = asyncio.create_task(worker.run_async())
            await asyncio.wait_for(started.wait(), _PATIENCE)
            worker.stop()
            await asyncio.sleep(0)
            finish.set()
            return await asyncio.wait_for(running, _PATIENCE)

        assert asyncio.run(main()) == 1
        job = queue.get(job_id)
        assert job is not None and (job.status, job.result) == ("done", "finished")

    def test_shutdown_cancels_async_jobs_past_the_timeout_and_releases_them_uncharged(
        self, queue: polyqueue.Queue
    ) -> None:
        job_id = queue.enqueue("stuck")
        cancelled = threading.Event()
        worker = polyqueue.Worker(queue, concurrency=1, shutdown_timeout=0.2)
        started = threading.Event()

        @worker.handler("stuck")
        async def stuck(job: Job) -> None:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        runner = threading.Thread(target=worker.run)
        runner.start()
        assert started.wait(_PATIENCE)
        worker.stop()
        runner.join(_PATIENCE)
        assert not runner.is_alive() and cancelled.is_set()
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempts) == ("pending", 0)

    def test_cancelling_run_async_stops_the_worker_gracefully(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("stuck")

        async def main() -> None:
            worker = polyqueue.Worker(queue, concurrency=1, shutdown_timeout=0.2)
            started = asyncio.Event()

            @worker.handler("stuck")
            async def stuck(job: Job) -> None:
                started.set()
                await asyncio.Event().wait()

            running = asyncio.create_task(worker.run_async())
            await asyncio.wait_for(started.wait(), _PATIENCE)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

        asyncio.run(main())
        job = queue.get(job_id)
        assert job is not None and (job.status, job.attempts) == ("pending", 0)

    def test_a_worker_runs_on_an_async_queue(self, queue: polyqueue.Queue, queue_factory: QueueFactory) -> None:
        async def test(aq: polyqueue.AsyncQueue) -> int:
            await aq.enqueue_many([{"job_type": "t", "payload": n} for n in range(5)])
            worker = polyqueue.Worker(aq, concurrency=5)

            @worker.handler("t")
            async def handle(job: Job) -> Any:
                return job.payload

            return await worker.run_async(burst=True)

        assert in_loop(queue_factory, test) == 5
        assert queue.stats()["done"] == 5

    @requires(Capability.PERIODIC)
    def test_periodic_schedules_fire_under_run_async(self, queue: polyqueue.Queue) -> None:
        ran = threading.Event()

        async def main() -> None:
            worker = polyqueue.Worker(queue, concurrency=2)

            @worker.periodic("* * * * * *", name="async-tick")
            async def tick(job: Job) -> None:
                ran.set()

            running = asyncio.create_task(worker.run_async())
            await asyncio.to_thread(ran.wait, _PATIENCE)
            worker.stop()
            await asyncio.wait_for(running, _PATIENCE)

        asyncio.run(main())
        assert ran.is_set() and queue.fire_history("async-tick")


# ---------------------------------------------------------------------------
# Runtime control: headers, timeouts, cancelling running jobs, process execution
# ---------------------------------------------------------------------------
#: Generous slack for the product's timing promises on a loaded machine (load 10 on 2 cores).
_LOAD_SLACK = 4.0


def _run_in_thread(worker: polyqueue.Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, name="suite-worker", daemon=True)
    thread.start()
    return thread


def _stop(worker: polyqueue.Worker, thread: threading.Thread) -> None:
    worker.stop()
    thread.join(60)
    assert not thread.is_alive(), "the worker did not stop"


def _finished(q: polyqueue.Queue, job_id: Any) -> Job | None:
    job = q.get(job_id)
    return job if job is not None and job.status not in ("pending", "processing") else None


def process_spin(job: Job) -> None:
    """A CPU-bound handler that never returns (process mode): writes its pid, then spins."""
    Path(job.payload["pidfile"]).write_text(str(os.getpid()))
    while True:
        pass


def process_square(job: Job) -> dict[str, int]:
    """Process mode: a result computed in the child, with the child's pid."""
    return {"square": int(job.payload["n"]) ** 2, "pid": os.getpid()}


def process_raise(job: Job) -> None:
    """Process mode: a failure raised in the child."""
    raise ValueError(f"child failed on {job.payload['n']}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True


@requires(Capability.HEADERS)
class TestHeaders:
    """Job.headers: a small str -> str dict carried with the job."""

    HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "ácme ✓", "e": ""}

    def test_headers_round_trip_through_get_and_claim(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", {"x": 1}, headers=self.HEADERS)
        plain = queue.enqueue("t")
        assert queue.get(job_id).headers == self.HEADERS  # type: ignore[union-attr]
        assert queue.get(plain).headers == {}  # type: ignore[union-attr]
        claimed = {job.id: job for job in queue.claim(limit=2)}
        assert claimed[job_id].headers == self.HEADERS and claimed[plain].headers == {}

    def test_enqueue_many_carries_each_jobs_headers(self, queue: polyqueue.Queue) -> None:
        ids = queue.enqueue_many([{"job_type": "t", "headers": {"n": str(n)}} for n in range(5)] + [{"job_type": "t"}])
        assert [queue.get(i).headers for i in ids] == [{"n": str(n)} for n in range(5)] + [{}]  # type: ignore[union-attr]

    def test_headers_kept_through_retries_and_replay(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", headers=self.HEADERS, max_attempts=2)
        (job,) = queue.claim()
        queue.fail(job, "first", retry_in=0)
        (job,) = wait_until(lambda: queue.claim(), what="the retry")
        assert job.headers == self.HEADERS
        queue.fail(job, "second")
        assert queue.get(job_id).status == "dead"  # type: ignore[union-attr]
        assert queue.replay([job_id]) == 1
        (job,) = queue.claim()
        assert job.headers == self.HEADERS and job.attempts == 1

    def test_lifecycle_hooks_see_headers(self, queue_factory: QueueFactory) -> None:
        seen: list[tuple[str, dict[str, str]]] = []

        class Tracing:
            @polyqueue.hookimpl
            def polyqueue_job_started(self, queue: Any, job: Job) -> None:
                seen.append(("started", dict(job.headers)))

            @polyqueue.hookimpl
            def polyqueue_job_succeeded(self, queue: Any, job: Job, duration: float) -> None:
                seen.append(("succeeded", dict(job.headers)))

        q = queue_factory(plugins=[Tracing()])
        q.enqueue("t", headers={"request_id": "r-1"})
        worker = polyqueue.Worker(q, concurrency=1)
        worker.register("t", lambda job: job.headers["request_id"])
        assert worker.run(burst=True) == 1
        assert seen == [("started", {"request_id": "r-1"}), ("succeeded", {"request_id": "r-1"})]

    def test_headers_a_plugin_adds_before_the_store_are_stored_with_the_callers_winning(
        self, queue_factory: QueueFactory
    ) -> None:
        stored: list[tuple[Any, str | None]] = []

        class Propagator:
            @polyqueue.hookimpl
            def polyqueue_enqueue_headers(self, queue: Any, job_type: str, queue_name: str, headers: Any) -> Any:
                return {"traceparent": f"for-{queue_name}-{job_type}", "tenant": "plugin"}

            @polyqueue.hookimpl
            def polyqueue_job_enqueued(self, job_ids: Any, jobs: Any) -> None:
                stored.extend((job_id, job.headers_json) for job_id, job in zip(job_ids, jobs, strict=True))

        q = queue_factory(plugins=[Propagator()])
        own = q.enqueue("a", queue="q1", headers={"tenant": "acme"})
        ids = q.enqueue_many([{"job_type": "b", "queue": "q2"}, {"job_type": "c", "queue": "q1"}])
        assert q.get(own).headers == {"traceparent": "for-q1-a", "tenant": "acme"}  # type: ignore[union-attr]
        assert [q.get(i).headers["traceparent"] for i in ids] == ["for-q2-b", "for-q1-c"]  # type: ignore[union-attr]
        # The enqueued hook is given the stored jobs in the order of their ids.
        assert [job_id for job_id, _ in stored] == [own, *ids]
        assert [json.loads(text or "{}") for _, text in stored] == [q.get(i).headers for i in [own, *ids]]  # type: ignore[union-attr]

    @requires(Capability.TIMEOUTS, Capability.CANCEL_RUNNING)
    def test_async_queue_takes_headers_and_timeouts_and_cancels_running_jobs(
        self, queue_factory: QueueFactory
    ) -> None:
        async def test(aq: polyqueue.AsyncQueue) -> None:
            job_id = await aq.enqueue("t", headers={"tenant": "acme"}, timeout=30)
            (other,) = await aq.enqueue_many([{"job_type": "t", "headers": {"n": "1"}}])
            (claimed,) = await aq.claim(job_types=["t"])
            assert (claimed.headers, claimed.timeout) == ({"tenant": "acme"}, 30.0)
            assert await aq.cancel(job_id) is True
            stored = await aq.get(job_id)
            assert stored is not None and stored.cancel_requested
            assert (await aq.require(other)).headers == {"n": "1"}

        in_loop(queue_factory, test)

    @requires(Capability.TRANSFER, Capability.TIMEOUTS)
    def test_transfer_carries_headers_and_timeouts(self, queue_factory: QueueFactory) -> None:
        q = queue_factory()
        other = queue_factory(table_prefix=unique_prefix())
        other.migrate()
        source = q.enqueue("t", headers=self.HEADERS, timeout=90)
        plain = q.enqueue("t")
        result = polyqueue.transfer(q, other)
        assert result.moved == 2
        jobs = other.claim(limit=10)
        assert sorted((job.headers == self.HEADERS, job.timeout or 0.0) for job in jobs) == [(False, 0.0), (True, 90.0)]
        assert q.get(source) is None and q.get(plain) is None

    @pytest.mark.parametrize(
        "headers",
        [
            {"k": 1},
            {"": "v"},
            {1: "v"},
            ["k", "v"],
            {"k": "a\x00b"},
            {f"k{i}": "v" for i in range(65)},
            {"big": "x" * 9000},
        ],
    )
    def test_bad_headers_store_nothing(self, queue: polyqueue.Queue, headers: Any) -> None:
        with pytest.raises(InvalidArgument):
            queue.enqueue("t", headers=headers)
        with pytest.raises(InvalidArgument):
            queue.enqueue_many([{"job_type": "t"}, {"job_type": "t", "headers": headers}])
        assert queue.stats()["pending"] == 0


class TestTimeouts:
    """Worker(timeout=S) and enqueue(..., timeout=S): an attempt that runs longer fails with a timeout error."""

    def test_hung_sync_handler_is_failed_and_its_late_completion_is_fenced(self, queue: polyqueue.Queue) -> None:
        lease = 3.0  # a heartbeat every second
        job_id = queue.enqueue("hang", max_attempts=1)
        release, started = threading.Event(), threading.Event()
        late: list[BaseException | None] = []
        began: list[float] = []
        worker = polyqueue.Worker(queue, concurrency=1, lease=lease, timeout=1, shutdown_timeout=30)

        @worker.handler("hang")
        def hang(job: Job) -> None:
            began.append(time.monotonic())
            started.set()
            release.wait(60)  # ignores job.check(): only the fence can stop its outcome
            try:
                queue.complete(job, "late")
                late.append(None)
            except LeaseLost as exc:
                late.append(exc)

        thread = _run_in_thread(worker)
        try:
            assert started.wait(30)
            failed = wait_until(lambda: _finished(queue, job_id), timeout=30, what="the timed-out job to be settled")
            elapsed = time.monotonic() - began[0]
            assert 1.0 <= elapsed <= 1.0 + lease / 3 + _LOAD_SLACK, elapsed
            assert failed.status == "dead" and "timeout" in (failed.last_error or "").lower()
            release.set()
            wait_until(lambda: late, timeout=30, what="the late completion")
            assert isinstance(late[0], LeaseLost)
            assert queue.get(job_id).status == "dead"  # type: ignore[union-attr]
        finally:
            release.set()
            _stop(worker, thread)

    def test_cooperative_sync_handler_stops_on_check_and_is_retried(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=0.01)
        job_id = q.enqueue("loop", max_attempts=2)
        attempts: list[int] = []
        worker = polyqueue.Worker(q, concurrency=1, lease=3, timeout=0.5)

        @worker.handler("loop")
        def loop(job: Job) -> str:
            attempts.append(job.attempts)
            if job.attempts == 1:
                while True:
                    job.check()
                    time.sleep(0.02)
            return "second try"

        run_until_settled(worker, q, timeout=60)
        done = q.get(job_id)
        assert done is not None and (done.status, done.result, done.attempts) == ("done", "second try", 2)
        assert "timeout" in done.errors[0]["error"].lower()
        assert attempts == [1, 2]

    def test_async_handler_is_cancelled_at_its_timeout(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("slow", max_attempts=1)
        cancelled = threading.Event()
        worker = polyqueue.Worker(queue, concurrency=2, lease=3, timeout=1)

        @worker.handler("slow")
        async def slow(job: Job) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        thread = _run_in_thread(worker)
        try:
            failed = wait_until(lambda: _finished(queue, job_id), timeout=30, what="the timed-out async job")
            assert failed.status == "dead" and "timeout" in (failed.last_error or "").lower()
            assert cancelled.wait(30), "the async handler was not cancelled"
        finally:
            _stop(worker, thread)

    @requires(Capability.TIMEOUTS)
    def test_a_jobs_own_timeout_wins_over_the_workers(self, queue: polyqueue.Queue) -> None:
        short = queue.enqueue("nap", {"s": 30}, timeout=1, max_attempts=1)
        free = queue.enqueue("nap", {"s": 0.2}, max_attempts=1)
        assert queue.get(short).timeout == 1.0  # type: ignore[union-attr]
        assert queue.get(free).timeout is None  # type: ignore[union-attr]
        worker = polyqueue.Worker(queue, concurrency=2, lease=3, timeout=120)

        @worker.handler("nap")
        def nap(job: Job) -> str:
            deadline = time.monotonic() + float(job.payload["s"])
            while time.monotonic() < deadline:
                job.check()
                time.sleep(0.02)
            return "rested"

        thread = _run_in_thread(worker)
        try:
            a = wait_until(lambda: _finished(queue, short), timeout=30, what="the short job")
            b = wait_until(lambda: _finished(queue, free), timeout=30, what="the free job")
            assert a.status == "dead" and "1s" in (a.last_error or "")
            assert (b.status, b.result) == ("done", "rested")
        finally:
            _stop(worker, thread)

    def test_bad_timeouts_are_refused(self, queue: polyqueue.Queue) -> None:
        bad_timeouts: list[Any] = [0, -1, "soon", float("nan")]
        for bad in bad_timeouts:
            with pytest.raises(InvalidArgument):
                polyqueue.Worker(queue, timeout=bad)
        with pytest.raises(InvalidArgument):
            polyqueue.Worker(queue, execution="fork")
        with pytest.raises(InvalidArgument):
            queue.enqueue("t", timeout=0)
        assert queue.stats()["pending"] == 0

    def test_process_mode_kills_a_cpu_bound_overrun(self, queue: polyqueue.Queue, tmp_path: Path) -> None:
        pidfile = tmp_path / "child.pid"
        job_id = queue.enqueue("spin", {"pidfile": str(pidfile)}, max_attempts=1)
        worker = polyqueue.Worker(queue, concurrency=1, lease=3, timeout=1, execution="process")
        worker.register("spin", process_spin)
        thread = _run_in_thread(worker)
        try:
            pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=60, what="the child"))
            failed = wait_until(lambda: _finished(queue, job_id), timeout=30, what="the overrun to be settled")
            assert failed.status == "dead" and "timeout" in (failed.last_error or "").lower()
            wait_until(lambda: not _pid_alive(pid), timeout=30, what="the spinning child to be killed")
        finally:
            _stop(worker, thread)

    def test_process_mode_runs_handlers_in_children(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=0.01)
        ok = q.enqueue("square", {"n": 7})
        bad = q.enqueue("boom", {"n": 3}, max_attempts=1)
        worker = polyqueue.Worker(q, concurrency=2, execution="process")
        worker.register("square", process_square)
        worker.register("boom", process_raise)
        run_until_settled(worker, q, timeout=120)
        done, dead = q.get(ok), q.get(bad)
        assert done is not None and done.status == "done" and done.result["square"] == 49
        assert done.result["pid"] != os.getpid()
        assert dead is not None and dead.status == "dead"
        assert "ValueError: child failed on 3" in (dead.last_error or "")

    def test_process_mode_refuses_handlers_it_cannot_send(self, queue: polyqueue.Queue) -> None:
        queue.enqueue("t")
        worker = polyqueue.Worker(queue, execution="process")
        worker.register("t", lambda job: None)
        with pytest.raises(ConfigurationError, match="module-level"):
            worker.run(burst=True)
        assert queue.stats()["pending"] == 1


@requires(Capability.CANCEL_RUNNING)
class TestCancelRunning:
    """cancel(id) on a processing job: its worker stops it, the job ends cancelled, never retried."""

    def test_cancel_flags_a_processing_job(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t")
        (job,) = queue.claim()
        assert job.cancel_requested is False
        assert queue.cancel(job_id) is True
        assert queue.cancel(job_id) is True  # idempotent
        stored = queue.get(job_id)
        assert stored is not None and stored.status == "processing" and stored.cancel_requested
        session = queue.consumer_session("w")
        assert session.cancel_requests([job]) == {job.id}

    def test_a_failure_or_release_after_a_cancel_request_ends_cancelled(self, queue: polyqueue.Queue) -> None:
        failing, released = queue.enqueue("t", max_attempts=5), queue.enqueue("t", max_attempts=5)
        jobs = {job.id: job for job in queue.claim(limit=2)}
        queue.cancel(failing)
        queue.cancel(released)
        queue.fail(jobs[failing], "boom", retry_in=0)
        queue.release(jobs[released])
        for job_id in (failing, released):
            stored = queue.get(job_id)
            assert stored is not None and stored.status == "cancelled" and stored.finished_at is not None
        assert queue.claim(limit=2) == []

    def test_an_expired_lease_after_a_cancel_request_ends_cancelled(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("t", max_attempts=5)
        (job,) = queue.claim(lease=0.5)
        queue.cancel(job_id)
        sleep_past(queue, job.lease_expires_at)
        assert queue.claim() == []
        stored = queue.get(job_id)
        assert stored is not None and stored.status == "cancelled"

    def test_cancelling_a_running_sync_handler_stops_it(self, queue_factory: QueueFactory) -> None:
        q = queue_factory(backoff_base=0.01)
        job_id = q.enqueue("work", max_attempts=5)
        started, stopped = threading.Event(), threading.Event()
        saw: list[bool] = []
        worker = polyqueue.Worker(q, concurrency=1, lease=3)  # a heartbeat every second

        @worker.handler("work")
        def work(job: Job) -> None:
            started.set()
            try:
                while True:
                    job.check()
                    time.sleep(0.02)
            except JobCancelled:
                saw.append(job.cancel_requested)
                stopped.set()
                raise

        thread = _run_in_thread(worker)
        try:
            assert started.wait(30)
            asked = time.monotonic()
            assert q.cancel(job_id) is True
            assert stopped.wait(30)
            assert time.monotonic() - asked <= 2.0 + _LOAD_SLACK
            ended = wait_until(lambda: _finished(q, job_id), timeout=30, what="the cancelled job")
            assert ended.status == "cancelled" and ended.attempts == 1 and saw == [True]
            time.sleep(0.5)
            assert q.get(job_id).status == "cancelled"  # type: ignore[union-attr]
        finally:
            _stop(worker, thread)

    def test_cancelling_a_running_async_handler_cancels_its_task(self, queue: polyqueue.Queue) -> None:
        job_id = queue.enqueue("wait")
        started, cancelled = threading.Event(), threading.Event()
        worker = polyqueue.Worker(queue, concurrency=2, lease=3)

        @worker.handler("wait")
        async def wait(job: Job) -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        thread = _run_in_thread(worker)
        try:
            assert started.wait(30)
            asked = time.monotonic()
            assert queue.cancel(job_id) is True
            assert cancelled.wait(30)
            assert time.monotonic() - asked <= 2.0 + _LOAD_SLACK
            ended = wait_until(lambda: _finished(queue, job_id), timeout=30, what="the cancelled job")
            assert ended.status == "cancelled"
        finally:
            _stop(worker, thread)

    def test_cancelling_a_process_mode_job_kills_its_child(self, queue: polyqueue.Queue, tmp_path: Path) -> None:
        pidfile = tmp_path / "child.pid"
        job_id = queue.enqueue("spin", {"pidfile": str(pidfile)})
        worker = polyqueue.Worker(queue, concurrency=1, lease=3, execution="process")
        worker.register("spin", process_spin)
        thread = _run_in_thread(worker)
        try:
            pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=60, what="the child"))
            assert queue.cancel(job_id) is True
            ended = wait_until(lambda: _finished(queue, job_id), timeout=30, what="the cancelled job")
            assert ended.status == "cancelled"
            wait_until(lambda: not _pid_alive(pid), timeout=30, what="the child to be killed")
        finally:
            _stop(worker, thread)

"""The wrapping backend: any backend, plus ready counts and wake-ups kept in Redis."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from .. import policy
from ..backends import base as spi
from ..backends.base import Backend, BackendOptions, Capability, WakeupSource
from ..errors import ConfigurationError, PolyqueueError
from ..job import Job, JobRecord, JobStatus, NewJob, QueueSettings, ReplayResult
from .client import CacheClient, database_identity
from .constants import DEFAULT_SAFETY_POLL, DEFAULT_TTL, KEEP, LATE, MARKER, REBUILD_LOCK, CachedCounts, Verdict
from .wakeups import RedisWakeups

__all__ = ["DepthCachedBackend"]

log = logging.getLogger("polyqueue.depth_cache")


class DepthCachedBackend(Backend):
    """Any backend plus the Redis depth cache; see the module docstring for what it keeps and why.

    Every call reaches the wrapped backend as before, with two differences:
    ``cached_depth`` answers from Redis, and ``seconds_until_due`` -- the idle
    worker's probe -- answers from Redis when the wrapped backend has no push
    wake-ups of its own (a hint, kept honest by the shared safety probe).
    ``count_ready`` and ``stats`` stay exact.
    """

    name = "depth-cached"
    #: What the wrapper adds; an instance also has everything its backend has.
    capabilities = frozenset({Capability.DEPTH_CACHE, Capability.NOTIFY})

    def __init__(self, inner: Backend, url: str, options: BackendOptions) -> None:
        self.inner = inner
        # Instance-level on purpose: the wrapper has its backend's name and features, plus the cache.
        self.__dict__["name"] = inner.name
        self.__dict__["capabilities"] = inner.capabilities | type(self).capabilities
        self.ttl = _positive_seconds(options.get("depth_cache_ttl", DEFAULT_TTL), "depth_cache_ttl")
        if Capability.NOTIFY not in inner.capabilities:
            # Workers read the same option. Their idle look at Redis costs the database nothing, so a few
            # seconds is the default rather than the slower safety poll of backends with their own push.
            options.setdefault("safety_poll", DEFAULT_SAFETY_POLL)
        self.safety_poll = _positive_seconds(options.get("safety_poll", DEFAULT_SAFETY_POLL), "safety_poll")
        self.redis = CacheClient(url)
        self.redis.on_heal = self._rebuild
        identity = f"{database_identity(inner)}|{options.get('table_prefix', '')}"
        if Capability.MULTI_PROCESS not in inner.capabilities:
            # A store private to this process (sqlite:///:memory:, memory://) must not share counts with others.
            identity += f"|{socket.gethostname()}:{os.getpid()}:{id(inner)}"
        digest = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:12]
        # The hash tag keeps every key of one queue database in one Redis Cluster slot, so scripts may use many.
        self.key_base = f"{options.get('table_prefix', 'polyqueue_')}cache:{{{digest}}}"

    def __repr__(self) -> str:
        return f"<DepthCachedBackend {self.describe()}>"

    # --- keys ------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        """A key of this queue database's cache: ``<base>:<part>:...`` (the base carries the cluster hash tag)."""
        return ":".join((self.key_base, *parts))

    def _counts_key(self, queue: str) -> str:
        return self._key("ready", queue)

    def _generation_key(self, queue: str) -> str:
        return self._key("generation", queue)

    def _queue_keys(self, queue: str) -> list[str]:
        """The counts hash, scheduled set and generation counter of ``queue`` (the scripts' KEYS)."""
        return [self._counts_key(queue), self._key("scheduled", queue), self._generation_key(queue)]

    def channel(self, queue: str) -> str:
        """The pub/sub channel an enqueue to ``queue`` publishes on after its commit."""
        return self._key("wake", queue)

    def _token(self, kind: str, name: str, seconds: float) -> bool:
        """Whether this process won the right to do ``kind`` for ``name`` for the next ``seconds``."""
        key = self._key(kind, name)
        got = self.redis.call(lambda r: r.set(key, os.getpid(), nx=True, px=max(1, int(seconds * 1000))))
        return bool(got)

    def _rebuild_if_first(self, queue: str) -> CachedCounts | None:
        """Reconcile ``queue`` unless another process is doing it right now; None if this one did not."""
        if not self._token("rebuild", queue, REBUILD_LOCK):
            return None
        try:
            return self._reconcile_quietly(queue)
        finally:
            # The lock's expiry only covers a holder that died; a finished rebuild frees it at once.
            key = self._key("rebuild", queue)
            self.redis.call(lambda r: r.delete(key))

    # --- lifecycle -------------------------------------------------------------
    def migrate(self) -> None:
        """Migrate the wrapped backend."""
        self.inner.migrate()

    def close(self) -> None:
        """Close the wrapped backend and the Redis connections. Idempotent."""
        try:
            self.inner.close()
        finally:
            self.redis.close()

    def describe(self) -> str:
        """The wrapped backend's description plus the cache's URL, passwords masked."""
        return f"{self.inner.describe()} (depth cache {self.redis.masked_url})"

    def server_version(self) -> str:
        """The wrapped backend's server version."""
        return self.inner.server_version()

    def drop_schema(self) -> None:
        """Drop the wrapped backend's schema (when it can) and this queue database's cache keys."""
        drop_inner = getattr(self.inner, "drop_schema", None)
        if drop_inner is None:
            raise NotImplementedError(f"{type(self.inner).__name__} cannot drop its schema")
        drop_inner()

        def drop_keys(r: Any) -> None:
            keys = list(r.scan_iter(match=f"{self.key_base}:*", count=500))
            for start in range(0, len(keys), 500):
                r.unlink(*keys[start : start + 500])

        self.redis.call(drop_keys)

    # --- producing -------------------------------------------------------------
    def enqueue(self, batch: spi.EnqueueBatch) -> list[Hashable]:
        """Store through the wrapped backend; count the jobs and publish once they are committed.

        With ``batch.connection`` that is after the caller's transaction
        commits, when the wrapped backend can watch it (``run_after_commit``);
        a rollback leaves the cache untouched. Jobs it cannot watch are not
        counted: reconciles find them.
        """
        began = time.monotonic()
        ids = self.inner.enqueue(batch)
        if not ids:
            return ids
        arrivals = list(zip(batch.jobs, ids, strict=True))

        def count() -> None:
            self._count_arrivals(arrivals, time.monotonic() - began)

        if batch.connection is None:
            count()
        else:
            self.inner.run_after_commit(batch.connection, count)
        return ids

    def run_after_commit(self, connection: Any, action: Callable[[], None]) -> bool:
        """The wrapped backend's after-commit hook."""
        return self.inner.run_after_commit(connection, action)

    # --- periodic jobs ---------------------------------------------------------
    def declare_schedules(self, request: spi.DeclareSchedules) -> spi.ScheduleState:
        """Declared on the wrapped backend."""
        return self.inner.declare_schedules(request)

    def fire(self, request: spi.FireRequest) -> spi.FireResult:
        """Fired on the wrapped backend; the job a fire creates is counted and wakes workers, as an enqueue's."""
        began = time.monotonic()
        result = self.inner.fire(request)
        if result.fired and result.job_id is not None:
            self._add(request.job.queue, [(result.job_id, 0.0, False)], time.monotonic() - began)
        return result

    def schedules(self, query: spi.ScheduleQuery) -> list[spi.ScheduleRecord]:
        """The wrapped backend's schedules."""
        return self.inner.schedules(query)

    def fire_history(self, query: spi.FireHistoryQuery) -> list[spi.FireRecord]:
        """The wrapped backend's fires."""
        return self.inner.fire_history(query)

    def _count_arrivals(self, arrivals: Sequence[tuple[NewJob, Hashable]], elapsed: float) -> None:
        by_queue: dict[str, list[tuple[Hashable, float, bool]]] = defaultdict(list)
        now = datetime.now(UTC)
        for job, job_id in arrivals:
            delay = (job.run_at - now).total_seconds() if job.run_at is not None else job.delay_seconds
            by_queue[job.queue].append((job_id, delay, job.dedupe_key is not None))
        for queue, items in by_queue.items():
            self._add(queue, items, elapsed)

    def _add(self, queue: str, items: Sequence[tuple[Hashable, float, bool]], elapsed: float) -> None:
        """Count jobs that became pending in ``queue``: (id, seconds until due, has a dedupe key)."""
        args: list[Any] = [f"{max(elapsed, 0.0):.6f}", self.channel(queue), queue, KEEP]
        for job_id, delay, deduped in items:
            args += [str(job_id), f"{delay:.6f}", "1" if deduped else "0"]
        keys = [*self._queue_keys(queue), self._key("seen"), self._key("queues")]
        self.redis.run(self.redis.add, keys, args, skews=[queue])

    # --- consuming -------------------------------------------------------------
    def claim(self, request: spi.ClaimRequest) -> spi.ClaimResult:
        """Claim through the wrapped backend and count the jobs out of the ready counts.

        An empty claim of every type where the cache promised work means the
        count is wrong: it is rebuilt. (A claim of some types only proves
        nothing about the others.)
        """
        result = self.inner.claim(request)
        by_queue: dict[str, list[Hashable]] = defaultdict(list)
        for job in result.jobs:
            by_queue[job.queue].append(job.id)
        for queue, ids in by_queue.items():
            self._take(queue, ids, count_absent=True)
        if not result.jobs and request.job_types is None:
            self._recheck_promises(request.queues)
        return result

    def _take(self, queue: str, ids: Sequence[Hashable], *, count_absent: bool) -> None:
        args: list[Any] = ["1" if count_absent else "0", KEEP, *(str(i) for i in ids)]
        keys = self._queue_keys(queue)
        self.redis.run(self.redis.take, keys, args, skews=[queue])

    def _recheck_promises(self, queues: Sequence[str]) -> None:
        """An empty claim: where the cache promised work it is wrong, so rebuild those counts now."""
        counts = self.read_counts(queues)
        if counts is None:
            return
        for queue, seen in counts.items():
            if seen.has_work:
                self._rebuild_if_first(queue)

    def settle(self, request: spi.SettleRequest) -> set[Hashable]:
        """Settle through the wrapped backend; what goes back to pending is counted (as scheduled when delayed).

        Released jobs count as ready again and wake workers; retries count as
        scheduled, due after their delay; finished jobs free their dedupe memory.
        """
        returning = [s.job for s in request.settlements if s.status == JobStatus.PENDING]
        # A job whose cancel was requested while it ran ends cancelled instead of pending (the policy's rule,
        # applied by the database): read the flags first, so such a job is not counted as ready again.
        flagged = set()
        if returning and Capability.CANCEL_RUNNING in self.inner.capabilities:
            flagged = self.inner.cancel_requests(spi.CancelCheck(returning))
        began = time.monotonic()
        lost = self.inner.settle(request)
        elapsed = time.monotonic() - began
        back: dict[str, list[tuple[Hashable, float, bool]]] = defaultdict(list)
        finished: list[Job] = []
        for settlement in request.settlements:
            job = settlement.job
            if job.id in lost:
                continue
            if policy.settled_status(settlement.status, job.id in flagged) == JobStatus.PENDING:
                back[job.queue].append((job.id, settlement.run_in or 0.0, False))
            elif not (settlement.hold_dedupe and job.dedupe_for) or job.id in flagged:
                finished.append(job)  # a job still holding its key is remembered: enqueues may return its id
        for queue, items in back.items():
            self._add(queue, items, elapsed)
        self._forget_dedupe(finished)
        return lost

    def _forget_dedupe(self, finished: Iterable[Job]) -> None:
        """Finished jobs free their dedupe keys: the memory of their ids is no longer needed."""
        ids = [str(job.id) for job in finished if job.dedupe_key is not None]
        if ids:
            key = self._key("seen")
            self.redis.call(lambda r: r.zrem(key, *ids))

    def extend(self, request: spi.ExtendRequest) -> set[Hashable]:
        """Extend through the wrapped backend."""
        return self.inner.extend(request)

    def cancel_requests(self, check: spi.CancelCheck) -> set[Hashable]:
        """Ask the wrapped backend (the flag lives in the database)."""
        return self.inner.cancel_requests(check)

    # --- inspecting and managing -------------------------------------------------
    def get(self, lookup: spi.JobLookup) -> Job | None:
        """The job, from the wrapped backend."""
        return self.inner.get(lookup)

    def cancel(self, request: spi.CancelRequest) -> bool:
        """Cancel through the wrapped backend; a cancelled job leaves the ready or scheduled count."""
        job = self.inner.get(spi.JobLookup(request.job_id))
        cancelled = self.inner.cancel(request)
        if cancelled and job is not None and job.status == JobStatus.PENDING:  # a running one is only flagged
            due = job.run_at is None or job.run_at <= datetime.now(UTC)
            self._take(job.queue, [job.id], count_absent=due)
            self._forget_dedupe([job])
        return cancelled

    def stats(self, request: spi.StatsRequest) -> dict[str, dict[str, Any]]:
        """Exact counts from the wrapped backend."""
        return self.inner.stats(request)

    def count_ready(self, request: spi.ReadyCount) -> int:
        """Exact count from the wrapped backend (``cached_depth`` is the fast one)."""
        return self.inner.count_ready(request)

    def cached_depth(self, queue: str) -> int | None:
        """Ready jobs of ``queue`` from Redis, rebuilt from the database first if the count expired.

        None when Redis is unavailable or another process is rebuilding the
        count right now (the caller then counts in the database).
        """
        counts = self.cached_counts(queue)
        return None if counts is None or counts.ready is None else max(0, counts.ready)

    def cached_counts(self, queue: str) -> CachedCounts | None:
        """The cache's view of ``queue`` (ready and known scheduled jobs), or None when Redis is unavailable."""
        counts = self.read_counts([queue])
        if counts is None:
            return None
        seen = counts[queue]
        if seen.ready is None:
            return self._rebuild_if_first(queue) or seen
        return seen

    def seconds_until_due(self, probe: spi.DueProbe) -> float | None:
        """The idle probe: from the cache when it knows every queue (a hint), else from the wrapped backend.

        A wrapped backend with its own push wake-ups is always asked: its probe
        is what its workers' safety poll relies on, and it sees every producer.
        The counts are per queue, so "jobs are ready" is confirmed by the
        wrapped backend when the probe asks about some job types only.
        """
        if Capability.NOTIFY in self.inner.capabilities:
            return self.inner.seconds_until_due(probe)
        counts = self.read_counts(probe.queues)
        if counts is None or any(seen.ready is None for seen in counts.values()):
            return self.inner.seconds_until_due(probe)
        if any(seen.ready for seen in counts.values()):
            return 0.0 if probe.job_types is None else self.inner.seconds_until_due(probe)
        upcoming = [seen.next_due_in for seen in counts.values() if seen.next_due_in is not None]
        return min(upcoming) if upcoming else None

    def caller_transaction(self) -> Any:
        """The wrapped backend's caller transaction, for the conformance suite (enqueues in it count on commit)."""
        open_transaction = getattr(self.inner, "caller_transaction", None)
        if open_transaction is None:
            raise NotImplementedError(f"{type(self.inner).__name__} has no caller transactions")
        return open_transaction()

    def async_caller_transaction(self) -> Any:
        """The wrapped backend's asyncio caller transaction, for the conformance suite."""
        open_transaction = getattr(self.inner, "async_caller_transaction", None)
        if open_transaction is None:
            raise NotImplementedError(f"{type(self.inner).__name__} has no asyncio caller transactions")
        return open_transaction()

    def db_now(self) -> datetime:
        """The database clock, from the wrapped backend."""
        return self.inner.db_now()

    def dead_jobs(self, query: spi.DeadJobsQuery) -> list[Job]:
        """Dead jobs, from the wrapped backend."""
        return self.inner.dead_jobs(query)

    def replay(self, request: spi.ReplayRequest) -> ReplayResult:
        """Replay through the wrapped backend; the affected counts are rebuilt and workers woken."""
        result = self.inner.replay(request)
        if result.replayed:
            if request.queue is not None:
                touched: Iterable[str] = [request.queue]
            else:
                touched = self.redis.call(lambda r: r.smembers(self._key("queues"))) or set()
            self._rebuild(set(touched))
        return result

    def purge(self, request: spi.PurgeRequest) -> int:
        """Purge through the wrapped backend (finished jobs are not counted)."""
        return self.inner.purge(request)

    # --- moving jobs ---------------------------------------------------------------
    def list_jobs(self, query: spi.ListQuery) -> list[Job]:
        """A page of jobs, from the wrapped backend."""
        return self.inner.list_jobs(query)

    def retry_now(self, request: spi.RetryNowRequest) -> bool:
        """Make the job due in the wrapped backend; its queue's counts are then rebuilt and its workers woken."""
        done = self.inner.retry_now(request)
        if done:
            job = self.inner.get(spi.JobLookup(request.job_id))
            if job is not None:
                self._rebuild({job.queue})
        return done

    def throughput(self, query: spi.ThroughputQuery) -> spi.Throughput:
        """Throughput, from the wrapped backend."""
        return self.inner.throughput(query)

    def export_jobs(self, query: spi.ExportQuery) -> list[JobRecord]:
        """Export from the wrapped backend."""
        return self.inner.export_jobs(query)

    def import_jobs(self, batch: spi.ImportBatch) -> spi.ImportResult:
        """Import through the wrapped backend; the counts of the queues it filled are rebuilt and workers woken."""
        result = self.inner.import_jobs(batch)
        records = batch.records
        stored = {r.queue for i, r in enumerate(records) if result.ids[i] is not None and i not in result.existing}
        self._rebuild(stored)
        return result

    def delete_jobs(self, request: spi.DeleteRequest) -> set[Hashable]:
        """Delete through the wrapped backend; the counts of the queues it emptied are rebuilt."""
        deleted = self.inner.delete_jobs(request)
        self._rebuild({r.queue for r in request.records if r.id in deleted})
        return deleted

    # --- runtime control -------------------------------------------------------------
    def control_queue(self, request: spi.QueueControl) -> QueueSettings:
        """Change the settings in the wrapped backend, then rebuild the queue's counts and wake its workers.

        A paused queue is also flagged in Redis, and :meth:`read_counts`
        reports a flagged queue as empty: so the cached depth and the idle
        workers' verdict agree with the claim (nothing while paused; the
        backlog, and a wake-up, on resume).
        """
        settings = self.inner.control_queue(request)
        key = self._key("paused", request.queue)
        if settings.paused:
            self.redis.call(lambda r: r.set(key, "1"))
        else:
            self.redis.call(lambda r: r.delete(key))
        self._rebuild({request.queue})
        return settings

    def queue_settings(self, query: spi.QueueSettingsQuery) -> list[QueueSettings]:
        """The wrapped backend's stored settings."""
        return self.inner.queue_settings(query)

    # --- the cache itself ----------------------------------------------------------
    def read_counts(self, queues: Sequence[str]) -> dict[str, CachedCounts] | None:
        """One Redis round trip: each queue's cached counts (scheduled jobs now due move to ready first)."""
        keys = [key for queue in queues for key in self._queue_keys(queue)]
        raw = self.redis.run(self.redis.read, keys, [KEEP, MARKER])
        if raw is None:
            return None
        out: dict[str, CachedCounts] = {}
        paused = self._paused(queues)
        for index, queue in enumerate(queues):
            ready, next_due, known, generation = raw[4 * index : 4 * index + 4]
            if queue in paused:  # claimable by no one: empty, as the wrapped backend counts it
                out[queue] = CachedCounts(ready=0, next_due_in=None, scheduled=0, generation=int(generation))
                continue
            out[queue] = CachedCounts(
                ready=int(ready) if ready != "" else None,
                next_due_in=float(next_due) if next_due != "" else None,
                scheduled=int(known),
                generation=int(generation),
            )
        return out

    def _paused(self, queues: Sequence[str]) -> set[str]:
        """The queues among ``queues`` flagged paused in Redis (none when the backend cannot pause)."""
        if Capability.PAUSE not in self.inner.capabilities or not queues:
            return set()
        keys = [self._key("paused", queue) for queue in queues]
        flags = self.redis.call(lambda r: r.mget(keys), skews=queues) or []
        return {queue for queue, flag in zip(queues, flags, strict=False) if flag}

    def reconcile(self, queue: str) -> CachedCounts | None:
        """Rebuild ``queue``'s counts from the database; None if Redis failed or kept changing meanwhile.

        The database is asked when a job of the queue may next become
        claimable (a due job or an expired lease) and, only if one may be now,
        how many are ready. The answer is written only if no change was counted
        since just before the database was asked, so it never erases one. A
        claimable moment with nothing ready is an expired lease: the counts then
        say so (``next_due_in`` <= 0) until a claim has rescued it.
        """
        keys = self._queue_keys(queue)
        for _ in range(3):
            snapshot = self.redis.run(self.redis.snapshot, keys[2:], [])
            if snapshot is None:
                return None
            generation, redis_now = snapshot
            due_in = self.inner.seconds_until_due(spi.DueProbe([queue]))
            nothing_pending = due_in is None
            ready = 0 if due_in is None or due_in > 0 else self.inner.count_ready(spi.ReadyCount(queue))
            upcoming = due_in if due_in is not None and (due_in > 0 or not ready) else None
            args: list[Any] = [
                generation,
                ready,
                redis_now,
                "" if upcoming is None else f"{upcoming:.6f}",
                "1" if nothing_pending else "0",
                max(1, int(self.ttl * 1000)),
                MARKER,
                KEEP,
                LATE,
            ]
            written = self.redis.run(self.redis.reconcile, keys, args)
            if written is None:
                return None
            if written:
                if ready:
                    self.redis.call(lambda r: r.publish(self.channel(queue), ""))
                if upcoming is not None and upcoming <= 0:
                    # An expired lease: claimable now. Its marker is due already, so reading it back would
                    # only drop the count again; the caller gets the answer as is.
                    return CachedCounts(0, upcoming, 0)
                fresh = self.read_counts([queue])
                return fresh[queue] if fresh is not None else CachedCounts(ready, upcoming, 0)
        return None

    def _reconcile_quietly(self, queue: str) -> CachedCounts | None:
        """``reconcile`` for background callers: a database outage is the worker's to report, not ours."""
        try:
            return self.reconcile(queue)
        except PolyqueueError as exc:
            log.debug("could not reconcile queue %r: %s", queue, exc)
            return None

    def _rebuild(self, queues: set[str]) -> None:
        """Drop the counts of ``queues`` (rebuilt by their next reader) and wake their workers."""
        if not queues:
            return

        def drop(r: Any) -> None:
            with r.pipeline(transaction=True) as pipe:
                for queue in queues:
                    pipe.delete(self._counts_key(queue))
                    pipe.incr(self._generation_key(queue))
                    pipe.expire(self._generation_key(queue), KEEP)
                    pipe.publish(self.channel(queue), "")
                pipe.execute()

        self.redis.call(drop, skews=queues)

    # --- waiting -------------------------------------------------------------------
    def wakeup_source(self, request: spi.WakeupRequest) -> WakeupSource | None:
        """The wrapped backend's push source if it has one (it sees every producer), else Redis pub/sub."""
        if Capability.NOTIFY in self.inner.capabilities:
            return self.inner.wakeup_source(request)
        return RedisWakeups(self, request.queues, request.job_types)

    def idle_verdict(self, queues: Sequence[str]) -> tuple[str, float | None, tuple[int, ...] | None]:
        """What the cache says to an idle worker, seconds until the next moment it knows of, and the generations.

        Also where the shared safety probe happens: the first idle process to
        look after ``safety_poll`` seconds reconciles each queue from the
        database, which finds what the cache cannot see (producers without
        the cache, expired leases, a lost count).
        """
        counts = self.read_counts(queues)
        if counts is None:
            verdict, due_in = self._verdict_without_redis(queues)
            return verdict, due_in, None
        for queue in queues:
            seen = counts[queue]
            if seen.ready is None:
                counts[queue] = seen = self._rebuild_if_first(queue) or seen
            if seen.has_work:
                return Verdict.WORK, 0.0, self._generations(counts, queues)
        for queue in queues:
            if self._token("safety", queue, self.safety_poll):
                rebuilt = self._reconcile_quietly(queue)
                if rebuilt is not None:
                    counts[queue] = rebuilt
                    if rebuilt.has_work:
                        return Verdict.WORK, 0.0, self._generations(counts, queues)
        upcoming = [seen.next_due_in for seen in counts.values() if seen.next_due_in is not None]
        return Verdict.IDLE, (min(upcoming) if upcoming else None), self._generations(counts, queues)

    @staticmethod
    def _generations(counts: dict[str, CachedCounts], queues: Sequence[str]) -> tuple[int, ...]:
        return tuple(counts[queue].generation for queue in queues)

    def _verdict_without_redis(self, queues: Sequence[str]) -> tuple[str, float | None]:
        """Redis is unreachable: the idle look becomes the database's own cheap probe."""
        try:
            due_in = self.inner.seconds_until_due(spi.DueProbe(queues))
        except PolyqueueError:
            return Verdict.WORK, 0.0  # the worker's claim meets the outage and reports it
        if due_in is not None and due_in <= 0:
            return Verdict.WORK, 0.0
        return Verdict.DOWN, due_in


def _positive_seconds(value: Any, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigurationError(f"{what} must be a positive number of seconds")
    return seconds

"""The optional Redis depth cache: O(1) ``Queue.depth`` and Redis wake-ups, over any backend.

:class:`DepthCachedBackend` wraps whatever backend ``connect`` opened -- built
in or from a plugin -- through the backend interface alone. Per queue it keeps
in Redis:

* the number of ready (pending and due) jobs, in a hash that expires
  ``depth_cache_ttl`` seconds after it was last reconciled from the database;
* the scheduled jobs it saw (delayed enqueues, retries) in a sorted set scored
  by due time, so a cached zero never hides a job that becomes due; a marker
  member records when the database said a job may next become claimable
  (a due job the cache never saw, or an expiring lease);
* a generation counter that every change bumps, so a reconcile never writes
  a count over a change it could not see;
* the ids of live jobs enqueued with a dedupe key, so an enqueue that returns
  an existing live job is not counted twice.

The cache is a hint, never the truth. The database commits first; each
counter change follows it as one atomic Lua script (increment, expiry and
publish together). What the wrapper cannot see -- producers without the cache,
lease rescue, a flushed or restarted Redis -- is corrected by reconciles from
the database: when a count has expired or vanished, when a claim finds less
than the cache promised, when a count rebuilt while jobs were ready drains to
zero, and every ``safety_poll`` seconds by one idle process per queue.

Wake-ups: an enqueue publishes on the queue's channel after its commit. Idle
workers on backends without their own push wake-ups listen there, and their
idle probe (``seconds_until_due``) and a look once a second are answered from
Redis, so an idle pool costs the database one cheap probe per queue every
``safety_poll`` seconds, made by whichever process comes first. That probe
also sees expired leases (a crashed worker's jobs) and wakes a worker to
claim them.

Redis trouble never fails a call: every operation falls back to the database,
a warning is logged once per outage, and when Redis answers again the counts
the outage may have skewed are dropped and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from .backends.base import Backend, BackendOptions, Capability, WakeupSource
from .errors import ConfigurationError, PolyqueueError
from .job import Job, NewJob, ReplayResult

__all__ = [
    "CHECK_INTERVAL",
    "DEFAULT_SAFETY_POLL",
    "DEFAULT_TTL",
    "CachedCounts",
    "DepthCachedBackend",
    "RedisWakeups",
]

log = logging.getLogger("polyqueue.depth_cache")
T = TypeVar("T")

#: Seconds a reconciled count lives before the next reader rebuilds it from the database.
DEFAULT_TTL = 10.0
#: Seconds between database checks of an idle queue (one process per queue does it for everyone).
DEFAULT_SAFETY_POLL = 5.0
#: Seconds between an idle worker's reads of the cached counts (covers lost wake-up messages).
CHECK_INTERVAL = 1.0
#: Seconds a process may hold the right to rebuild a vanished count before another may try.
REBUILD_LOCK = 5.0
#: Seconds that generation counters, the dedupe memory and scheduled sets outlive their last change.
KEEP = 86_400
#: Seconds an idle worker polls the database between Redis retries while Redis is unreachable.
OUTAGE_POLL = 1.0
#: Sorted-set member marking when the database said a job may next become claimable (due or lease expired).
MARKER = "~db"
#: Seconds a scheduled job's cached due time may trail its real one (the Redis call after the commit).
LATE = 0.05
_SUPPORTED_SCHEMES = ("redis://", "rediss://", "unix://")

# KEYS: counts hash, scheduled zset, generation, dedupe memory, queue set.
# ARGV: seconds the change took, channel, queue name, KEEP, then (id, delay, has-dedupe-key) per job.
# New jobs that are due count as ready; delayed ones go to the scheduled set, dated from when the change
# began, so they look due no later than they are but for this call's own trip (LATE). A job id the dedupe
# memory has seen is not counted twice.
_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local began = now - tonumber(ARGV[1])
local keep = tonumber(ARGV[4])
local ready, latest = 0, nil
for i = 5, #ARGV, 3 do
  local fresh = 1
  if ARGV[i + 2] == '1' then
    fresh = redis.call('ZADD', KEYS[4], 'NX', now, ARGV[i])
  end
  if fresh == 1 then
    local delay = tonumber(ARGV[i + 1])
    if delay <= 0 then
      ready = ready + 1
    else
      local due = began + delay
      redis.call('ZADD', KEYS[2], due, ARGV[i])
      if latest == nil or due > latest then latest = due end
    end
  end
end
if ready > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'ready', ready)
end
if latest ~= nil then
  local want = math.ceil(latest - now) + keep
  if redis.call('TTL', KEYS[2]) < want then redis.call('EXPIRE', KEYS[2], want) end
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - keep)
  redis.call('EXPIRE', KEYS[4], keep)
end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], keep)
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('EXPIRE', KEYS[5], keep)
if ready > 0 and ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[2], '') end
return ready
"""

# KEYS: counts hash, scheduled zset, generation. ARGV: '1' to count ids absent from the scheduled set as
# ready ones that left, KEEP, then the ids. Returns the ready count left ('' when unknown).
# A count rebuilt while jobs were ready could not learn when unseen scheduled jobs fall due, so when it
# drains to zero it is dropped: the next reader's rebuild asks the database, and a cached zero hides nothing.
_TAKE = """
local gone = 0
for i = 3, #ARGV do
  if redis.call('ZREM', KEYS[2], ARGV[i]) == 0 then gone = gone + 1 end
end
if ARGV[1] == '1' and gone > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  local left = redis.call('HINCRBY', KEYS[1], 'ready', -gone)
  if left <= 0 and redis.call('HGET', KEYS[1], 'recheck') == '1' then redis.call('DEL', KEYS[1]) end
end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[2])
return redis.call('HGET', KEYS[1], 'ready') or ''
"""

# KEYS: (counts hash, scheduled zset, generation) per queue. ARGV: KEEP, MARKER.
# Scheduled jobs that have fallen due move into the ready count; a due marker means jobs the cache never saw
# are due, so the count is dropped to be rebuilt. Returns per queue: ready ('' unknown), seconds until the
# next scheduled job or marker ('' none), scheduled jobs known.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i = 1, #KEYS, 3 do
  local counts, sched = KEYS[i], KEYS[i + 1]
  local due = redis.call('ZCOUNT', sched, '-inf', now)
  if due > 0 then
    local mark = redis.call('ZSCORE', sched, ARGV[2])
    local stale = mark and tonumber(mark) <= now
    redis.call('ZREMRANGEBYSCORE', sched, '-inf', now)
    if stale then
      redis.call('DEL', counts)
    elseif redis.call('EXISTS', counts) == 1 then
      redis.call('HINCRBY', counts, 'ready', due)
    end
    redis.call('INCR', KEYS[i + 2])
    redis.call('EXPIRE', KEYS[i + 2], ARGV[1])
  end
  local first = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
  local known = redis.call('ZCARD', sched)
  if redis.call('ZSCORE', sched, ARGV[2]) then known = known - 1 end
  out[#out + 1] = redis.call('HGET', counts, 'ready') or ''
  out[#out + 1] = first[2] and tostring(tonumber(first[2]) - now) or ''
  out[#out + 1] = known
end
return out
"""

# KEYS: generation. Returns the generation and Redis's clock, read before the database is asked.
_SNAPSHOT = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[1]) or '0', tostring(tonumber(t[1]) + tonumber(t[2]) / 1000000)}
"""

# KEYS: counts hash, scheduled zset, generation. ARGV: generation seen before asking the database, ready
# count, Redis clock then, seconds until the next due job per the database ('' none), '1' when nothing is
# pending at all, TTL in ms, MARKER, KEEP, LATE. Writes only if nothing changed meanwhile; returns 1 if written.
# Scheduled jobs due before the database was asked are in its count, so they leave the set. When it counted
# ready jobs, jobs falling due while it was asked may be in that count too: they leave as well, and a marker
# at the latest of their times has the count rebuilt once they are surely due, so none is counted twice.
_RECONCILE = """
if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local asked, now = tonumber(ARGV[3]), tonumber(t[1]) + tonumber(t[2]) / 1000000
local ready = tonumber(ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'ready', ready)
if ready > 0 then redis.call('HSET', KEYS[1], 'recheck', '1') end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[7])
local mark = nil
if ARGV[4] ~= '' then mark = asked + tonumber(ARGV[4]) end
if ready > 0 then
  local cut = now + tonumber(ARGV[9])
  local unsure = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[3], cut, 'WITHSCORES')
  if #unsure > 0 then
    local latest = tonumber(unsure[#unsure])
    if mark == nil or latest < mark then mark = latest end
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cut)
else
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
end
if mark ~= nil then
  redis.call('ZADD', KEYS[2], mark, ARGV[7])
  local want = math.ceil(mark - now) + tonumber(ARGV[8])
  if redis.call('TTL', KEYS[2]) < want then redis.call('EXPIRE', KEYS[2], want) end
end
return 1
"""


@dataclass(slots=True)
class CachedCounts:
    """One queue as the cache sees it: ``ready`` None when unknown (expired, flushed)."""

    ready: int | None
    #: Seconds until the next scheduled job (or database marker) falls due, <= 0 if one has; None when none is known.
    next_due_in: float | None
    #: Scheduled jobs the cache knows of (delayed enqueues and retries it saw).
    scheduled: int

    @property
    def has_work(self) -> bool:
        """Whether a job may be ready now by these counts."""
        return bool(self.ready) or (self.next_due_in is not None and self.next_due_in <= 0)


class _Verdict:
    """What an idle worker's look at the cache says."""

    WORK = "work"  #: a job may be claimable: claim from the database
    IDLE = "idle"  #: nothing is claimable as far as the cache and the shared safety probe know
    DOWN = "down"  #: Redis is unreachable and the database's own probe says nothing is claimable yet


def _mask(url: str) -> str:
    """The Redis URL without its password (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + "://…"


def _database_identity(backend: Backend) -> str:
    """The database a backend stores in, spelt the same whichever driver or option a process chose."""
    from sqlalchemy.engine import make_url

    described = backend.describe()
    try:
        url = make_url(described)
    except Exception:
        return described
    scheme = url.drivername.split("+", 1)[0]
    database = url.database or ""
    if scheme == "sqlite" and database not in ("", ":memory:"):
        database = os.path.abspath(database)
    return f"{scheme}://{url.host or ''}:{url.port or ''}/{database}"


class _Redis:
    """The Redis connection, its scripts, and the outage policy: never raise, warn once, heal."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or not url.startswith(_SUPPORTED_SCHEMES):
            raise ConfigurationError("depth_cache must be a redis://, rediss:// or unix:// URL")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ConfigurationError("the depth cache needs redis-py: pip install 'polyqueue[redis]'") from exc
        self.masked_url = _mask(url)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        try:
            # One quick retry lets a pooled connection that died with a restarted Redis reconnect; more would
            # stall every call of an outage.
            self.client = redis.Redis.from_url(
                url,
                socket_connect_timeout=0.5,
                socket_timeout=2.0,
                retry=Retry(NoBackoff(), 1),
                decode_responses=True,
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid depth_cache URL {self.masked_url}") from exc
        self.add = self.client.register_script(_ADD)
        self.take = self.client.register_script(_TAKE)
        self.read = self.client.register_script(_READ)
        self.snapshot = self.client.register_script(_SNAPSHOT)
        self.reconcile = self.client.register_script(_RECONCILE)
        self._lock = threading.Lock()
        self._down = False
        self._failures = 0
        self._retry_at = 0.0
        self._skewed: set[str] = set()
        self.on_heal: Callable[[set[str]], None] = lambda queues: None

    @property
    def paused(self) -> bool:
        """Whether Redis failed recently and the pause before the next try has not passed."""
        return self._down and time.monotonic() < self._retry_at

    def call(self, work: Callable[[Any], T], *, skews: Iterable[str] = ()) -> T | None:
        """Run ``work(client)``; None if Redis failed (then ``skews`` names queues whose counts are now off)."""
        if self._down and time.monotonic() < self._retry_at:
            self._note_skew(skews)
            return None
        try:
            result = work(self.client)
        except self.errors as exc:
            self.failed(exc, skews)
            return None
        if self._down:
            self._healed()
        return result

    def run(self, script: Any, keys: Sequence[str], args: Sequence[Any], *, skews: Iterable[str] = ()) -> Any:
        """Run a Lua script through :meth:`call`."""
        return self.call(lambda r: script(keys=keys, args=args, client=r), skews=skews)

    def _note_skew(self, queues: Iterable[str]) -> None:
        with self._lock:
            self._skewed.update(queues)

    def failed(self, exc: BaseException, skews: Iterable[str] = ()) -> None:
        """Record a Redis failure: warn once per outage, pause before the next try, remember skewed queues."""
        with self._lock:
            self._skewed.update(skews)
            first = not self._down
            self._down = True
            self._failures += 1
            self._retry_at = time.monotonic() + min(5.0, 0.25 * 2 ** min(self._failures, 5))
        if first:
            log.warning(
                "Redis depth cache %s unavailable (%s: %s); continuing on the database alone",
                self.masked_url,
                type(exc).__name__,
                str(exc)[:200],
            )

    def _healed(self) -> None:
        with self._lock:
            if not self._down:
                return
            self._down = False
            self._failures = 0
            skewed, self._skewed = self._skewed, set()
        log.warning("Redis depth cache %s reachable again; rebuilding the counts it missed", self.masked_url)
        self.on_heal(skewed)

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self.client.close()
        except self.errors:
            pass


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
        self.redis = _Redis(url)
        self.redis.on_heal = self._rebuild
        identity = f"{_database_identity(inner)}|{options.get('table_prefix', '')}"
        if Capability.MULTI_PROCESS not in inner.capabilities:
            # A store private to this process (sqlite:///:memory:, memory://) must not share counts with others.
            identity += f"|{socket.gethostname()}:{os.getpid()}:{id(inner)}"
        digest = hashlib.sha1(identity.encode("utf-8")).hexdigest()[:12]
        # The hash tag keeps every key of one queue database in one Redis Cluster slot, so scripts may use many.
        self.key_base = f"{options.get('table_prefix', 'polyqueue_')}cache:{{{digest}}}"
        self._after_commit = _AfterCommit()

    def __repr__(self) -> str:
        return f"<DepthCachedBackend {self.describe()}>"

    # --- keys ------------------------------------------------------------------
    def _counts_key(self, queue: str) -> str:
        return f"{self.key_base}:ready:{queue}"

    def _scheduled_key(self, queue: str) -> str:
        return f"{self.key_base}:scheduled:{queue}"

    def _generation_key(self, queue: str) -> str:
        return f"{self.key_base}:generation:{queue}"

    def _queue_keys(self, queue: str) -> list[str]:
        return [self._counts_key(queue), self._scheduled_key(queue), self._generation_key(queue)]

    def channel(self, queue: str) -> str:
        """The pub/sub channel an enqueue to ``queue`` publishes on after its commit."""
        return f"{self.key_base}:wake:{queue}"

    @property
    def _known_queues_key(self) -> str:
        return f"{self.key_base}:queues"

    @property
    def _dedupe_memory_key(self) -> str:
        return f"{self.key_base}:seen"

    def _token_key(self, kind: str, name: str) -> str:
        return f"{self.key_base}:{kind}:{name}"

    def _token(self, kind: str, name: str, seconds: float) -> bool:
        """Whether this process won the right to do ``kind`` for ``name`` for the next ``seconds``."""
        key = self._token_key(kind, name)
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
            key = self._token_key("rebuild", queue)
            self.redis.call(lambda r: r.delete(key))

    # --- lifecycle -------------------------------------------------------------
    def migrate(self) -> None:
        """Migrate the wrapped backend."""
        self.inner.migrate()

    def close(self) -> None:
        """Close the wrapped backend and the Redis connections. Idempotent."""
        self._after_commit.close()
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
        """Drop the wrapped backend's schema and this queue database's cache keys."""
        self.inner.drop_schema()

        def drop(r: Any) -> None:
            keys = list(r.scan_iter(match=f"{self.key_base}:*", count=500))
            for start in range(0, len(keys), 500):
                r.unlink(*keys[start : start + 500])

        self.redis.call(drop)

    # --- producing -------------------------------------------------------------
    def enqueue_many(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Hashable]:
        """Store through the wrapped backend; count the jobs and publish once they are committed.

        With ``connection`` that is after the caller's transaction commits
        (SQLAlchemy connections); a rollback leaves the cache untouched.
        Other connection types are not counted: reconciles find those jobs.
        """
        began = time.monotonic()
        ids = self.inner.enqueue_many(jobs, connection=connection)
        if not ids:
            return ids
        arrivals = list(zip(jobs, ids, strict=True))

        def count() -> None:
            self._count_arrivals(arrivals, time.monotonic() - began)

        if connection is None:
            count()
        else:
            self._after_commit.add(connection, count)
        return ids

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
        keys = [*self._queue_keys(queue), self._dedupe_memory_key, self._known_queues_key]
        self.redis.run(self.redis.add, keys, args, skews=[queue])

    # --- consuming -------------------------------------------------------------
    def claim(self, queues: Sequence[str], limit: int, lease: float, worker_id: str) -> list[Job]:
        """Claim through the wrapped backend and count the jobs out of the ready counts."""
        jobs = self.inner.claim(queues, limit, lease, worker_id)
        by_queue: dict[str, list[Hashable]] = defaultdict(list)
        for job in jobs:
            by_queue[job.queue].append(job.id)
        for queue, ids in by_queue.items():
            self._take(queue, ids, count_absent=True)
        if not jobs:
            self._recheck_promises(queues)
        return jobs

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

    def complete_many(self, jobs: Sequence[tuple[Job, str | None]]) -> set[Hashable]:
        """Complete through the wrapped backend (ready counts do not change)."""
        lost = self.inner.complete_many(jobs)
        self._forget_dedupe([job for job, _ in jobs if job.id not in lost])
        return lost

    def _forget_dedupe(self, finished: Iterable[Job]) -> None:
        """Finished jobs free their dedupe keys: the memory of their ids is no longer needed."""
        ids = [str(job.id) for job in finished if job.dedupe_key is not None]
        if ids:
            key = self._dedupe_memory_key
            self.redis.call(lambda r: r.zrem(key, *ids))

    def fail(self, job: Job, *, error: str, errors_json: str, retry_in: float | None) -> bool:
        """Fail through the wrapped backend; a retry counts as scheduled, due after ``retry_in``."""
        began = time.monotonic()
        held = self.inner.fail(job, error=error, errors_json=errors_json, retry_in=retry_in)
        if held and retry_in is not None:
            self._add(job.queue, [(job.id, retry_in, False)], time.monotonic() - began)
        elif held:
            self._forget_dedupe([job])
        return held

    def extend_many(self, jobs: Sequence[Job], lease: float) -> set[Hashable]:
        """Extend through the wrapped backend."""
        return self.inner.extend_many(jobs, lease)

    def release_many(self, jobs: Sequence[Job]) -> set[Hashable]:
        """Release through the wrapped backend; released jobs count as ready again and wake workers."""
        lost = self.inner.release_many(jobs)
        by_queue: dict[str, list[tuple[Hashable, float, bool]]] = defaultdict(list)
        for job in jobs:
            if job.id not in lost:
                by_queue[job.queue].append((job.id, 0.0, False))
        for queue, items in by_queue.items():
            self._add(queue, items, 0.0)
        return lost

    # --- inspecting and managing -------------------------------------------------
    def get(self, job_id: Hashable) -> Job | None:
        """The job, from the wrapped backend."""
        return self.inner.get(job_id)

    def cancel(self, job_id: Hashable) -> bool:
        """Cancel through the wrapped backend; a cancelled job leaves the ready or scheduled count."""
        job = self.inner.get(job_id)
        cancelled = self.inner.cancel(job_id)
        if cancelled and job is not None:
            due = job.run_at is None or job.run_at <= datetime.now(UTC)
            self._take(job.queue, [job.id], count_absent=due)
            self._forget_dedupe([job])
        return cancelled

    def stats(self, queue: str | None = None) -> dict[str, dict[str, int]]:
        """Exact counts from the wrapped backend."""
        return self.inner.stats(queue)

    def count_ready(self, queue: str) -> int:
        """Exact count from the wrapped backend (``cached_depth`` is the fast one)."""
        return self.inner.count_ready(queue)

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

    def seconds_until_due(self, queues: Sequence[str]) -> float | None:
        """The idle probe: from the cache when it knows every queue (a hint), else from the wrapped backend.

        A wrapped backend with its own push wake-ups is always asked: its probe
        is what its workers' safety poll relies on, and it sees every producer.
        """
        if Capability.NOTIFY in self.inner.capabilities:
            return self.inner.seconds_until_due(queues)
        counts = self.read_counts(queues)
        if counts is None or any(seen.ready is None for seen in counts.values()):
            return self.inner.seconds_until_due(queues)
        if any(seen.ready for seen in counts.values()):
            return 0.0
        upcoming = [seen.next_due_in for seen in counts.values() if seen.next_due_in is not None]
        return min(upcoming) if upcoming else None

    def caller_transaction(self) -> Any:
        """The wrapped backend's caller transaction (enqueues inside it are counted once it commits)."""
        return self.inner.caller_transaction()

    def db_now(self) -> datetime:
        """The database clock, from the wrapped backend."""
        return self.inner.db_now()

    def dead_jobs(self, queue: str | None, limit: int) -> list[Job]:
        """Dead jobs, from the wrapped backend."""
        return self.inner.dead_jobs(queue, limit)

    def replay(self, ids: Iterable[Hashable] | None, queue: str | None) -> ReplayResult:
        """Replay through the wrapped backend; the affected counts are rebuilt and workers woken."""
        result = self.inner.replay(ids, queue)
        if result.replayed:
            if queue is not None:
                touched: Iterable[str] = [queue]
            else:
                touched = self.redis.call(lambda r: r.smembers(self._known_queues_key)) or set()
            self._rebuild(set(touched))
        return result

    def purge(self, status: str, older_than: float, batch_size: int) -> int:
        """Purge through the wrapped backend (finished jobs are not counted)."""
        return self.inner.purge(status, older_than, batch_size)

    # --- the cache itself ----------------------------------------------------------
    def read_counts(self, queues: Sequence[str]) -> dict[str, CachedCounts] | None:
        """One Redis round trip: each queue's cached counts (scheduled jobs now due move to ready first)."""
        keys = [key for queue in queues for key in self._queue_keys(queue)]
        raw = self.redis.run(self.redis.read, keys, [KEEP, MARKER])
        if raw is None:
            return None
        out: dict[str, CachedCounts] = {}
        for index, queue in enumerate(queues):
            ready, next_due, known = raw[3 * index : 3 * index + 3]
            out[queue] = CachedCounts(
                ready=int(ready) if ready != "" else None,
                next_due_in=float(next_due) if next_due != "" else None,
                scheduled=int(known),
            )
        return out

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
            due_in = self.inner.seconds_until_due([queue])
            nothing_pending = due_in is None
            ready = 0 if due_in is None or due_in > 0 else self.inner.count_ready(queue)
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
    def wakeup_source(self, queues: Sequence[str]) -> WakeupSource | None:
        """The wrapped backend's push source if it has one (it sees every producer), else Redis pub/sub."""
        if Capability.NOTIFY in self.inner.capabilities:
            return self.inner.wakeup_source(queues)
        return RedisWakeups(self, queues)

    def idle_verdict(self, queues: Sequence[str]) -> tuple[str, float | None]:
        """What the cache says to an idle worker, and seconds until the next moment it knows of.

        Also where the shared safety probe happens: the first idle process to
        look after ``safety_poll`` seconds reconciles each queue from the
        database, which finds what the cache cannot see (producers without
        the cache, expired leases, a lost count).
        """
        counts = self.read_counts(queues)
        if counts is None:
            return self._verdict_without_redis(queues)
        for queue in queues:
            seen = counts[queue]
            if seen.ready is None:
                counts[queue] = seen = self._rebuild_if_first(queue) or seen
            if seen.has_work:
                return _Verdict.WORK, 0.0
        for queue in queues:
            if self._token("safety", queue, self.safety_poll):
                rebuilt = self._reconcile_quietly(queue)
                if rebuilt is not None:
                    counts[queue] = rebuilt
                    if rebuilt.has_work:
                        return _Verdict.WORK, 0.0
        upcoming = [seen.next_due_in for seen in counts.values() if seen.next_due_in is not None]
        return _Verdict.IDLE, (min(upcoming) if upcoming else None)

    def _verdict_without_redis(self, queues: Sequence[str]) -> tuple[str, float | None]:
        """Redis is unreachable: the idle look becomes the database's own cheap probe."""
        try:
            due_in = self.inner.seconds_until_due(queues)
        except PolyqueueError:
            return _Verdict.WORK, 0.0  # the worker's claim meets the outage and reports it
        if due_in is not None and due_in <= 0:
            return _Verdict.WORK, 0.0
        return _Verdict.DOWN, due_in


class RedisWakeups:
    """An idle worker's wake-up source: the queues' Redis channels plus a look at the cached counts each second.

    ``wait`` returns True as soon as a message arrives or the counts (or the
    shared safety probe) show work, else False at its timeout. While Redis is
    unreachable the look every :data:`OUTAGE_POLL` seconds is the database's
    own probe instead.
    """

    def __init__(self, backend: DepthCachedBackend, queues: Sequence[str]) -> None:
        self.backend = backend
        self.queues = list(queues)
        self._pubsub: Any = None
        self._next_look = 0.0

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if work may be claimable."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            if now >= self._next_look:
                verdict, next_due = self.backend.idle_verdict(self.queues)
                if verdict == _Verdict.WORK:
                    return True
                interval = CHECK_INTERVAL
                if verdict == _Verdict.DOWN:
                    self._unsubscribe()
                    interval = OUTAGE_POLL
                # Look again after the interval, or when the next known job falls due if that is sooner.
                self._next_look = now + (interval if next_due is None else min(interval, max(next_due, 0.001)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause = min(remaining, max(self._next_look - time.monotonic(), 0.001))
            if self.backend.redis.paused:
                time.sleep(pause)
            elif self._listen(pause):
                self._next_look = 0.0
                return True

    def _listen(self, seconds: float) -> bool:
        """Wait for a message on the queues' channels; True if one came."""
        end = time.monotonic() + seconds
        try:
            if self._pubsub is None:
                self._subscribe()
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                if self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left) is not None:
                    # Debounce: one wake-up covers every message already queued.
                    while self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.0) is not None:
                        pass
                    return True
        except self.backend.redis.errors as exc:
            self.backend.redis.failed(exc)
            self._unsubscribe()
            time.sleep(max(0.0, end - time.monotonic()))
            return False

    def _subscribe(self) -> None:
        pubsub = self.backend.redis.client.pubsub()
        try:
            pubsub.subscribe(*(self.backend.channel(queue) for queue in self.queues))
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub

    def _unsubscribe(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except self.backend.redis.errors:
                pass
            self._pubsub = None

    def close(self) -> None:
        """Close the subscription; idempotent."""
        self._unsubscribe()


def _positive_seconds(value: Any, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number of seconds") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigurationError(f"{what} must be a positive number of seconds")
    return seconds


@dataclass(slots=True)
class _Pending:
    connection: Any
    transaction: Any
    action: Callable[[], None]
    #: When it was added, then when its commit began.
    since: float


class _AfterCommit:
    """Runs actions once a caller's SQLAlchemy transaction has committed; drops them if it rolls back.

    SQLAlchemy's ``commit`` event fires *before* the database commits, so an
    action waits (on a small thread) until the transaction has left its
    connection without a rollback: only then has the commit succeeded. A
    transaction abandoned for :data:`ABANDONED` seconds drops its actions.
    """

    ABANDONED = 600.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: weakref.WeakKeyDictionary[Any, list[_Pending]] = weakref.WeakKeyDictionary()
        self._committing: list[_Pending] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, connection: Any, action: Callable[[], None]) -> bool:
        """Run ``action`` after ``connection``'s current transaction commits; False if that cannot be seen."""
        from sqlalchemy import event
        from sqlalchemy.engine import Connection

        if not isinstance(connection, Connection):
            return False
        transaction = connection.get_transaction()
        if transaction is None:
            return False
        with self._lock:
            pending = self._watched.get(connection)
            if pending is None:
                pending = self._watched[connection] = []
                event.listen(connection, "commit", self._on_commit)
                event.listen(connection, "rollback", self._on_rollback)
            pending[:] = [p for p in pending if time.monotonic() - p.since < self.ABANDONED]
            pending.append(_Pending(connection, transaction, action, time.monotonic()))
        return True

    def _on_commit(self, connection: Any) -> None:
        current = connection.get_transaction()
        with self._lock:
            pending = self._watched.get(connection, [])
            ready = [p for p in pending if p.transaction is current]
            pending[:] = [p for p in pending if p.transaction is not current]
            for p in ready:
                p.since = time.monotonic()
            self._committing.extend(ready)
            if ready and self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="polyqueue-after-commit", daemon=True)
                self._thread.start()
        if ready:
            self._wake.set()

    def _on_rollback(self, connection: Any) -> None:
        current = connection.get_transaction()
        with self._lock:
            pending = self._watched.get(connection, [])
            pending[:] = [p for p in pending if p.transaction is not current]
            # A failed commit is rolled back while its transaction is still the connection's current one.
            self._committing = [p for p in self._committing if p.transaction is not current]

    def _run(self) -> None:
        while not self._closed:
            with self._lock:
                done = [p for p in self._committing if p.connection.get_transaction() is not p.transaction]
                expired = [p for p in self._committing if time.monotonic() - p.since > self.ABANDONED]
                finished = {id(p) for p in done + expired}
                self._committing = [p for p in self._committing if id(p) not in finished]
                idle = not self._committing
                # A commit returns within milliseconds; one that failed waits for its rollback, so look less often.
                fresh = any(time.monotonic() - p.since < 1.0 for p in self._committing)
            for p in done:
                try:
                    p.action()
                except Exception:
                    log.exception("depth cache: counting a committed transactional enqueue failed")
            if idle:
                self._wake.wait(1.0)
                self._wake.clear()
            else:
                time.sleep(0.0002 if fresh else 0.05)

    def close(self) -> None:
        """Stop the thread; actions still waiting for their commit are dropped (reconciles correct the counts)."""
        self._closed = True
        self._wake.set()

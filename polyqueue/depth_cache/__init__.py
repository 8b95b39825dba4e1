"""The optional Redis depth cache: O(1) ``Queue.depth`` and Redis wake-ups, over any backend.

The package: :mod:`.scripts` (the Lua), :mod:`.client` (the Redis
connection and outage rule), :mod:`.backend` (the wrapping backend),
:mod:`.wakeups` (idle workers' wake-ups), :mod:`.constants`.


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

from .backend import DepthCachedBackend
from .constants import CHECK_INTERVAL, DEFAULT_SAFETY_POLL, DEFAULT_TTL, CachedCounts
from .wakeups import RedisWakeups

__all__ = [
    "CHECK_INTERVAL",
    "DEFAULT_SAFETY_POLL",
    "DEFAULT_TTL",
    "CachedCounts",
    "DepthCachedBackend",
    "RedisWakeups",
]

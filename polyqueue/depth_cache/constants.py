"""The depth cache's timings, the shape of what it reads, and what an idle look concludes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CHECK_INTERVAL",
    "DEFAULT_SAFETY_POLL",
    "DEFAULT_TTL",
    "KEEP",
    "LATE",
    "MARKER",
    "OUTAGE_POLL",
    "REBUILD_LOCK",
    "CachedCounts",
    "Verdict",
]

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


@dataclass(slots=True)
class CachedCounts:
    """One queue as the cache sees it: ``ready`` None when unknown (expired, flushed)."""

    ready: int | None
    #: Seconds until the next scheduled job (or database marker) falls due, <= 0 if one has; None when none is known.
    next_due_in: float | None
    #: Scheduled jobs the cache knows of (delayed enqueues and retries it saw).
    scheduled: int
    #: Bumped by every change the cache counts: equal generations mean nothing was counted in between.
    generation: int = 0

    @property
    def has_work(self) -> bool:
        """Whether a job may be ready now by these counts."""
        return bool(self.ready) or (self.next_due_in is not None and self.next_due_in <= 0)


class Verdict:
    """What an idle worker's look at the cache says."""

    WORK = "work"  #: a job may be claimable: claim from the database
    IDLE = "idle"  #: nothing is claimable as far as the cache and the shared safety probe know
    DOWN = "down"  #: Redis is unreachable and the database's own probe says nothing is claimable yet

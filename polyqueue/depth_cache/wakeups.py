"""Idle workers' wake-ups through the depth cache: Redis pub/sub plus a look at the cached counts each second."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from ..backends.base import DueProbe
from .client import CacheClient
from .constants import CHECK_INTERVAL, OUTAGE_POLL, Verdict

__all__ = ["CacheView", "RedisWakeups"]


class CacheView(Protocol):
    """What wake-ups need of the depth-cached backend."""

    redis: CacheClient

    def idle_verdict(self, queues: Sequence[str]) -> tuple[str, float | None, tuple[int, ...] | None]:
        """The cache's verdict for idle workers of ``queues``, the next known moment, and the generations."""

    def seconds_until_due(self, probe: DueProbe) -> float | None:
        """The idle probe (typed probes are answered by the database)."""

    def channel(self, queue: str) -> str:
        """The pub/sub channel of ``queue``."""


class RedisWakeups:
    """An idle worker's wake-up source: the queues' Redis channels plus a look at the cached counts each second.

    ``wait`` returns True as soon as a message arrives or the counts (or the
    shared safety probe) show work, else False at its timeout. While Redis is
    unreachable the look every :data:`OUTAGE_POLL` seconds is the database's
    own probe instead.
    """

    def __init__(
        self, backend: CacheView, queues: Sequence[str], job_types: frozenset[str] | None = None
    ) -> None:
        self.backend = backend
        self.queues = list(queues)
        self.job_types = job_types
        self._pubsub: Any = None
        self._next_look = 0.0
        #: The queues' generations when the database last said none of this worker's types was claimable.
        self._idle_at: tuple[int, ...] | None = None

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if work may be claimable."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            if now >= self._next_look:
                verdict, next_due = self._look()
                if verdict == Verdict.WORK:
                    return True
                interval = CHECK_INTERVAL
                if verdict == Verdict.DOWN:
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

    def _look(self) -> tuple[str, float | None]:
        """The cache's verdict; for a worker of some job types, "work" is confirmed by the database once per change.

        The counts are per queue, not per type: a queue full of jobs this
        worker has no handler for looks busy. The database's typed probe then
        decides, and its "nothing for you" holds until a queue's generation
        moves (something was enqueued, claimed or rebuilt).
        """
        verdict, next_due, generations = self.backend.idle_verdict(self.queues)
        if verdict != Verdict.WORK or self.job_types is None:
            return verdict, next_due
        if generations is not None and generations == self._idle_at:
            return Verdict.IDLE, None
        due_in = self.backend.seconds_until_due(DueProbe(self.queues, self.job_types))
        if due_in is not None and due_in <= 0:
            self._idle_at = None
            return Verdict.WORK, 0.0
        self._idle_at = generations
        return Verdict.IDLE, due_in

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

"""Idle workers' wake-ups: sharded pub/sub (``SSUBSCRIBE``) on each queue's channel, in its queue's slot.

Every script that makes jobs ready (enqueue, a retry, a release, a replay)
publishes the job types it touched on the queue's channel with
``SPUBLISH``. A :class:`RedisWakeups` subscribes on the master serving each
channel -- before its constructor returns, so nothing published afterwards
is missed -- and one listener thread per master sets a flag that ``wait``
reads. A signal that arrives while nobody waits stays set for the next
``wait``. When a connection breaks (a failover), the listener wakes the
worker at once (a message may have been missed), re-reads the slot map and
subscribes again after the policy's back-off.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from polyqueue import policy

from .store import RedisStore

__all__ = ["RedisWakeups"]

log = logging.getLogger("polyqueue.redis")
#: How long a listener blocks on its connection before looking whether it was closed.
_LISTEN_SLICE = 1.0


class RedisWakeups:
    """A wake-up source over the channels of some queues, for jobs of ``job_types`` (None: every type)."""

    def __init__(self, store: RedisStore, channels: Sequence[str], job_types: frozenset[str] | None) -> None:
        self._store = store
        self._types = job_types
        self._signal = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[_Listener] = []
        try:
            groups = self._groups(list(dict.fromkeys(channels)))
        except store.errors:
            groups = [(None, list(channels))]  # unreachable now: the listener keeps trying
            self._signal.set()
        for node, names in groups:
            self._start(node, names)

    def _groups(self, channels: list[str]) -> list[tuple[Any, list[str]]]:
        """The channels grouped by the master serving them: ``[(redis.Redis, channels), ...]``."""
        grouped: dict[str, tuple[Any, list[str]]] = {}
        for channel in channels:
            name, node = self._store.node_for(channel)
            grouped.setdefault(name, (node, []))[1].append(channel)
        return list(grouped.values())

    def _start(self, node: Any, channels: list[str]) -> None:
        listener = _Listener(self, channels)
        if node is not None:
            try:
                listener.subscribe(node)
            except self._store.errors:
                self._signal.set()
        with self._lock:
            if self._closed.is_set():
                listener.drop()
                return
            self._listeners.append(listener)
        listener.start()

    def notify(self, payload: Any) -> None:
        """A message arrived: wake the waiter if it names a job type this source waits for."""
        if self._types is not None:
            try:
                types = json.loads(payload)
            except (TypeError, ValueError):
                types = None
            if isinstance(types, list) and not self._types.intersection(types):
                return
        self._signal.set()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if work may be ready (a message, or a connection that broke)."""
        if self._closed.is_set():
            return False
        if self._signal.wait(max(0.0, timeout)):
            self._signal.clear()
            return not self._closed.is_set()
        return False

    def close(self) -> None:
        """Unsubscribe and stop the listeners; idempotent."""
        with self._lock:
            self._closed.set()
            listeners, self._listeners = self._listeners, []
        self._signal.set()
        for listener in listeners:
            listener.drop()

    # --- for the listeners ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed.is_set()

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the source is closed meanwhile."""
        self._closed.wait(seconds)

    def lost_connection(self) -> None:
        """A listener's connection broke: wake the worker (a message may have been missed)."""
        self._signal.set()

    def regroup(self, channels: list[str]) -> tuple[Any, list[str]]:
        """Where ``channels`` live now; a group on another master gets a listener of its own."""
        self._store.refresh()
        groups = self._groups(channels)
        for node, names in groups[1:]:
            self._start(node, names)
        return groups[0]


class _Listener(threading.Thread):
    """Listens to the channels one master serves; on a broken connection re-subscribes wherever they moved."""

    def __init__(self, owner: RedisWakeups, channels: list[str]) -> None:
        super().__init__(name="polyqueue-redis-wakeups", daemon=True)
        self.owner = owner
        self.channels = channels
        self.pubsub: Any = None

    def subscribe(self, node: Any) -> None:
        """Subscribe on ``node`` (one SSUBSCRIBE per channel: channels of one command must share a slot)."""
        pubsub = _pubsub_class()(connection_pool=node.connection_pool, ignore_subscribe_messages=True)
        try:
            for channel in self.channels:
                pubsub.ssubscribe(channel)
        except BaseException:
            pubsub.close()
            raise
        self.pubsub = pubsub

    def drop(self) -> None:
        """Close the subscription (the thread notices and ends)."""
        pubsub, self.pubsub = self.pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may raise anything; it is gone either way
                pass

    def run(self) -> None:
        failures = 0
        while not self.owner.closed:
            try:
                if self.pubsub is None:
                    node, self.channels = self.owner.regroup(self.channels)
                    self.subscribe(node)
                    failures = 0
                message = self.pubsub.get_message(timeout=_LISTEN_SLICE)
                if message is not None and message.get("type") == "smessage":
                    self.owner.notify(message.get("data"))
            except Exception as exc:  # any failure of the subscription: wake the worker, back off, subscribe again
                if self.owner.closed:
                    return
                failures += 1
                if failures == 1:
                    log.warning("Redis wake-up subscription lost (%s); re-subscribing", type(exc).__name__)
                self.owner.lost_connection()
                self.drop()
                self.owner.pause(policy.LISTEN_RECONNECT.delay(failures))
        self.drop()


def _pubsub_class() -> type:
    """redis-py's PubSub, re-subscribing after a reconnect one channel per ``SSUBSCRIBE``.

    redis-py re-subscribes every shard channel in one command, which a
    cluster refuses (``CROSSSLOT``) when the channels are in different slots
    of one master -- as the channels of several queues usually are.
    """
    from redis.client import PubSub

    class ShardedPubSub(PubSub):
        def _resubscribe_shard_channels(self) -> None:
            for channel in list(self.shard_channels):
                self.ssubscribe(channel)

    return ShardedPubSub

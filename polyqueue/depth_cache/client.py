"""The depth cache's Redis connection and its outage rule: Redis trouble never fails a call.

Every operation goes through :meth:`CacheClient.call`: on a Redis error it
returns None (the caller falls back to the database), logs one warning per
outage, pauses before the next try with the policy's back-off, remembers
which queues' counts the outage may have skewed, and rebuilds them when
Redis answers again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .. import policy
from ..backends.base import Backend
from ..errors import ConfigurationError
from . import scripts

__all__ = ["CacheClient", "database_identity", "mask"]

log = logging.getLogger("polyqueue.depth_cache")
T = TypeVar("T")
_SUPPORTED_SCHEMES = ("redis://", "rediss://", "unix://")


def mask(url: str) -> str:
    """The Redis URL without its password (for messages)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + "://…"


def database_identity(backend: Backend) -> str:
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


class CacheClient:
    """The Redis connection, its scripts, and the outage rule: never raise, warn once, heal."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or not url.startswith(_SUPPORTED_SCHEMES):
            raise ConfigurationError("depth_cache must be a redis://, rediss:// or unix:// URL")
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise ConfigurationError("the depth cache needs redis-py: pip install 'polyqueue[redis]'") from exc
        self.masked_url = mask(url)
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
        self.add = self.client.register_script(scripts.ADD)
        self.take = self.client.register_script(scripts.TAKE)
        self.read = self.client.register_script(scripts.READ)
        self.snapshot = self.client.register_script(scripts.SNAPSHOT)
        self.reconcile = self.client.register_script(scripts.RECONCILE)
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
            self._retry_at = time.monotonic() + policy.CACHE_OUTAGE.delay(self._failures)
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

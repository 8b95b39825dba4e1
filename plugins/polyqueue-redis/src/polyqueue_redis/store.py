"""The connection to a Redis deployment (a cluster or one node) and how scripts and commands reach it.

Scripts go to the node serving their queue's slot, one pipeline per node,
written to every node before any reply is read (so a call touching several
queues costs one round trip, with the masters working in parallel), followed
by ``WAIT`` on the same connection when the call must be acknowledged by
replicas. Errors are handled here, once:

* redirections and a cluster that is reconfiguring (``MOVED``, ``ASK``,
  ``TRYAGAIN``, ``CLUSTERDOWN``, ``READONLY``, a slot no node serves) refresh
  the slot map and send the scripts again -- they did not run;
* a lost connection or a timeout may have come before or after a script
  ran: the script is sent again marked as *resent* (``ARGV[2] = '1'``), and
  every state-changing script recognises its own earlier run (a batch id, a
  claim's token, a settlement's token, a cancel nonce), so nothing is done
  twice;
* ``NOSCRIPT`` (a restarted or promoted node) loads the scripts and retries;
* after ``reconnect_seconds`` of such trouble the call raises
  :class:`~polyqueue.errors.BackendUnavailable`, masked of any password.

The redis-py clients never retry on their own (``retries=0``): a silent
resend without the *resent* mark could run a claim twice.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from polyqueue import policy
from polyqueue.errors import BackendUnavailable, ConfigurationError, PolyqueueError

from .scripts import SCRIPTS

__all__ = ["Call", "Outcome", "RedisStore", "Unreached"]

log = logging.getLogger("polyqueue.redis")
T = TypeVar("T")
#: How often at most a topology refresh is attempted while errors keep coming.
_REFRESH_INTERVAL = 0.25


@dataclass
class Call:
    """One script run: which script, the key that routes it (its queue's meta key) and its ARGV."""

    script: str
    key: str
    args: list[Any]

    def mark_resent(self) -> None:
        """Flag the call as a resend of one whose reply was lost (``ARGV[2]``)."""
        self.args[1] = "1"


class Unreached:
    """The reply slot of a call that could not be run in time (``run(..., partial=True)``)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"<Unreached {type(self.error).__name__}>"


@dataclass
class Outcome:
    """The replies of a batch of calls, in order, and whether every write was acknowledged by the replicas asked for."""

    replies: list[Any]
    acknowledged: bool = True
    shortfall: list[str] = field(default_factory=list)


class RedisStore:
    """A cluster (redis-py's ``RedisCluster``) or one node (``Redis``), with scripts loaded per node.

    Connects lazily, on first use. Thread-safe: the clients pool their
    connections; each call takes one per node for the length of a pipeline.
    """

    def __init__(
        self,
        *,
        cluster: bool,
        nodes: Sequence[tuple[str, int]],
        db: int,
        username: str | None,
        password: str | None,
        socket_timeout: float,
        reconnect_seconds: float,
        wait_replicas: int,
        wait_timeout: float,
        described: str,
    ) -> None:
        self.cluster = cluster
        self.nodes = list(nodes)
        self.db = db
        self._username = username
        self._password = password
        self.socket_timeout = socket_timeout
        self.reconnect_seconds = reconnect_seconds
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.described = described
        self.shas = {name: hashlib.sha1(source.encode("utf-8")).hexdigest() for name, source in SCRIPTS.items()}
        self._client: Any = None
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        self._last_refresh = 0.0
        self._closed = False
        self._errors: tuple[type[BaseException], ...] = ()

    # --- connecting ---------------------------------------------------------------------------------------
    def _redis(self) -> Any:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the package depends on redis
            raise ConfigurationError("polyqueue-redis needs redis-py: pip install 'polyqueue-redis'") from exc
        return redis

    @property
    def client(self) -> Any:
        """The redis-py client (``RedisCluster`` or ``Redis``), created on first use."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:
                if self._closed:
                    raise BackendUnavailable(f"the queue on {self.described} is closed")
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        redis = self._redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        common: dict[str, Any] = {
            "username": self._username,
            "password": self._password,
            # A WAIT may block for wait_timeout before it answers: reading its reply must not time out first.
            "socket_timeout": self.socket_timeout + (self.wait_timeout if self.wait_replicas else 0.0),
            "socket_connect_timeout": min(self.socket_timeout, 2.0),
            "decode_responses": True,
        }
        try:
            if not self.cluster:
                host, port = self.nodes[0]
                return redis.Redis(host=host, port=port, db=self.db, retry=Retry(NoBackoff(), 0), **common)
            from redis.cluster import ClusterNode, RedisCluster

            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
                require_full_coverage=False,
                retry=Retry(NoBackoff(), 1),
                **common,
            )
        except self.errors as exc:
            raise self.unavailable(exc) from exc

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What redis-py raises when the deployment cannot be reached or is reconfiguring."""
        if not self._errors:
            redis = self._redis()
            from redis.exceptions import RedisClusterException

            self._errors = (redis.RedisError, RedisClusterException, OSError)
        return self._errors

    def error_kind(self, exc: BaseException) -> str:
        """The :class:`polyqueue.policy.ErrorKind` of a redis-py error: a refused login or unknown host is the URL's.

        A failed name lookup (the error's context is a ``socket.gaierror``)
        is asked of DNS again: a name that does not exist is a wrong URL, a
        lookup that could not be answered now an outage.
        """
        from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError

        if isinstance(exc, (AuthenticationError, AuthenticationWrongNumberOfArgsError, NoPermissionError)):
            return policy.ErrorKind.CONFIGURATION
        lookup_failed = isinstance(exc.__context__, socket.gaierror) or isinstance(exc, socket.gaierror)
        if lookup_failed and any(policy.host_name_unknown(host) for host, _port in self.nodes):
            return policy.ErrorKind.CONFIGURATION
        return policy.ErrorKind.DISCONNECT

    def refuse_if_misconfigured(self, exc: BaseException) -> None:
        """Raise the policy's :class:`ConfigurationError` at once for an error no retry can cure."""
        if self.error_kind(exc) == policy.ErrorKind.CONFIGURATION:
            raise policy.error_for(
                policy.ErrorKind.CONFIGURATION, f"Redis at {self.described}", self._scrubbed(exc)
            ) from exc

    def _scrubbed(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}"
        return (text.replace(self._password, "***") if self._password else text)[:300]

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        """A :class:`BackendUnavailable` for ``exc`` that names the deployment but never its password."""
        text = str(exc)
        if self._password:
            text = text.replace(self._password, "***")
        return BackendUnavailable(f"Redis at {self.described} unavailable: {type(exc).__name__}: {text[:300]}")

    def close(self) -> None:
        """Close every connection. Idempotent; a closed store refuses further calls."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            self._loaded.clear()
        if client is not None:
            try:
                client.close()
            except self.errors:
                pass

    def refresh(self) -> None:
        """Re-read the cluster's slot map (after a failover or a redirection); at most every 0.25 s."""
        if not self.cluster or self._client is None:
            return
        now = time.monotonic()
        if now - self._last_refresh < _REFRESH_INTERVAL:
            return
        self._last_refresh = now
        try:
            self._client.nodes_manager.initialize()
        except self.errors as exc:
            log.debug("cluster slot map refresh failed: %s", exc)

    # --- routing --------------------------------------------------------------------------------------------
    def node_for(self, key: str) -> tuple[str, Any]:
        """``(node name, redis.Redis)`` of the master serving ``key``'s slot."""
        client = self.client
        if not self.cluster:
            return "single", client
        node = client.get_node_from_key(key)
        return node.name, client.get_redis_connection(node)

    def masters(self) -> list[Any]:
        """A ``redis.Redis`` per master (the one node when not a cluster)."""
        client = self.client
        if not self.cluster:
            return [client]
        return [client.get_redis_connection(node) for node in client.get_primaries()]

    def _load_scripts(self, name: str, node: Any) -> None:
        if name in self._loaded:
            return
        pipe = node.pipeline(transaction=False)
        for source in SCRIPTS.values():
            pipe.script_load(source)
        pipe.execute()
        self._loaded.add(name)

    # --- running --------------------------------------------------------------------------------------------
    def run(
        self, calls: Sequence[Call], *, wait: bool = False, partial: bool = False, patience: float | None = None
    ) -> Outcome:
        """Run ``calls`` (one pipeline per node, ``WAIT`` after each when ``wait``); replies in order.

        Calls that cannot be run within ``patience`` seconds (default
        ``reconnect_seconds``) raise :class:`BackendUnavailable` -- or, with
        ``partial``, get an :class:`Unreached` reply while the others keep
        theirs (it still raises when none could run). Raises
        :class:`PolyqueueError` when Redis refuses a script for a reason
        retrying cannot cure.
        """
        from redis.exceptions import (
            AskError,
            BusyLoadingError,
            ClusterDownError,
            NoScriptError,
            ReadOnlyError,
            ResponseError,
            TryAgainError,
        )

        reroute = (AskError, TryAgainError, ClusterDownError, ReadOnlyError, BusyLoadingError)
        outcome = Outcome([None] * len(calls))
        todo = list(range(len(calls)))
        deadline: float | None = None
        attempt = 0
        last: BaseException | None = None
        wanted = self.wait_replicas if wait else 0
        while todo:
            again: list[int] = []
            try:
                groups = self._group(calls, todo)
            except self.errors as exc:
                self.refuse_if_misconfigured(exc)
                last, again = exc, todo
                self.refresh()
                groups = {}
            # Write every master's pipeline first, then read the replies: the masters work in parallel.
            sent: list[tuple[str, Any, list[int], Any]] = []
            for name, (node, indexes) in groups.items():
                commands: list[tuple[Any, ...]] = [
                    ("EVALSHA", self.shas[calls[i].script], 1, calls[i].key, *calls[i].args) for i in indexes
                ]
                if wanted:
                    commands.append(("WAIT", wanted, max(1, round(self.wait_timeout * 1000))))
                try:
                    self._load_scripts(name, node)
                    sent.append((name, node, indexes, _send(node, commands)))
                except self.errors as exc:
                    self.refuse_if_misconfigured(exc)
                    last = exc
                    self._resend(calls, indexes, again)
            for name, node, indexes, connection in sent:
                try:
                    replies = _receive(node, connection, len(indexes) + (1 if wanted else 0))
                except self.errors as exc:
                    self.refuse_if_misconfigured(exc)
                    last = exc
                    self._resend(calls, indexes, again)
                    continue
                if wanted:
                    acked = replies.pop()
                    if isinstance(acked, int) and acked < wanted:
                        outcome.acknowledged = False
                        outcome.shortfall.append(f"{name}: {acked} of {wanted} replica(s)")
                for i, reply in zip(indexes, replies, strict=True):
                    if isinstance(reply, NoScriptError):
                        self._loaded.discard(name)
                        again.append(i)
                    elif isinstance(reply, reroute):
                        last = reply
                        again.append(i)
                        self.refresh()
                    elif isinstance(reply, ResponseError) and str(reply).startswith(("OOM", "BUSY", "MASTERDOWN")):
                        last = reply
                        again.append(i)
                    elif isinstance(reply, Exception):
                        raise PolyqueueError(f"Redis at {self.described} refused a polyqueue script: {reply}")
                    else:
                        outcome.replies[i] = reply
            todo = again
            if todo:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + (self.reconnect_seconds if patience is None else patience)
                if now >= deadline:
                    assert last is not None
                    if not partial or len(todo) == len(calls):
                        raise self.unavailable(last)
                    for i in todo:
                        outcome.replies[i] = Unreached(last)
                    return outcome
                attempt += 1
                time.sleep(min(policy.RECONNECT.delay(attempt), max(0.0, deadline - now)))
        return outcome

    def _resend(self, calls: Sequence[Call], indexes: list[int], again: list[int]) -> None:
        """The connection broke: the scripts may have run before it did, so send them again marked as resent."""
        for i in indexes:
            calls[i].mark_resent()
        again.extend(indexes)
        self.refresh()

    def _group(self, calls: Sequence[Call], todo: Sequence[int]) -> dict[str, tuple[Any, list[int]]]:
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i in todo:
            name, node = self.node_for(calls[i].key)
            groups.setdefault(name, (node, []))[1].append(i)
        return groups

    def command(self, work: Callable[[Any], T]) -> T:
        """``work(client)`` with a plain (idempotent) command, retried while the deployment reconfigures."""
        return self._retrying(lambda: work(self.client))

    def on_node(self, key: str, work: Callable[[Any], T], *, wait: bool = False) -> tuple[T, bool]:
        """``work(pipeline)`` on the node serving ``key`` (idempotent commands), then ``WAIT`` when ``wait``.

        Returns the pipeline's replies and whether the replicas acknowledged them.
        """

        def once() -> tuple[T, bool]:
            _name, node = self.node_for(key)
            pipe = node.pipeline(transaction=False)
            work(pipe)
            if wait and self.wait_replicas:
                pipe.wait(self.wait_replicas, max(1, round(self.wait_timeout * 1000)))
            replies = pipe.execute()
            if wait and self.wait_replicas:
                acked = replies.pop()
                return replies, acked >= self.wait_replicas  # type: ignore[return-value]
            return replies, True  # type: ignore[return-value]

        return self._retrying(once)

    def _retrying(self, work: Callable[[], T]) -> T:
        from redis.exceptions import ResponseError

        deadline: float | None = None
        attempt = 0
        while True:
            try:
                return work()
            except self.errors as exc:
                self.refuse_if_misconfigured(exc)
                if isinstance(exc, ResponseError) and not _transient(exc):
                    raise PolyqueueError(f"Redis at {self.described} refused a command: {exc}") from exc
                self.refresh()
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.reconnect_seconds
                if now >= deadline:
                    raise self.unavailable(exc) from exc
                attempt += 1
                time.sleep(min(policy.RECONNECT.delay(attempt), max(0.0, deadline - now)))


def _send(node: Any, commands: list[tuple[Any, ...]]) -> Any:
    """Write ``commands`` as one pipeline on a connection of ``node``'s pool; returns the connection (still taken)."""
    pool = node.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands(commands))
    except BaseException:
        connection.disconnect()
        pool.release(connection)
        raise
    return connection


def _receive(node: Any, connection: Any, count: int) -> list[Any]:
    """Read ``count`` replies from ``connection`` (error replies as exception objects) and give it back to the pool."""
    from redis.exceptions import ResponseError

    replies: list[Any] = []
    try:
        for _ in range(count):
            try:
                replies.append(connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        connection.disconnect()
        raise
    finally:
        node.connection_pool.release(connection)
    return replies


def _transient(exc: BaseException) -> bool:
    """Whether a Redis error reply means "try again" (redirection, failover, loading, busy) rather than a bug."""
    from redis.exceptions import AskError, BusyLoadingError, ClusterDownError, ReadOnlyError, TryAgainError

    if isinstance(exc, (AskError, TryAgainError, ClusterDownError, ReadOnlyError, BusyLoadingError)):
        return True
    return str(exc).startswith(("OOM", "BUSY", "MASTERDOWN", "LOADING", "CLUSTERDOWN"))

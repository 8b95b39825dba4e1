"""The ``redis+cluster://`` and ``redis://`` backend: polyqueue's backend interface on Redis Cluster (or one Redis).

A queue database is a key prefix (``table_prefix``); each queue of it lives
in one cluster slot (see :mod:`polyqueue_redis.layout`), and every change to
a queue is one Lua script (:mod:`polyqueue_redis.scripts`) on the server's
clock. What the policy decides reaches the scripts as values (settlements)
or as Lua rendered from :mod:`polyqueue.policy` (the lease-expiry rule, the
attempt cap, the fence, the claim order).

**Claims over several queues.** Queues live in different slots, so one
claim cannot take from all of them atomically. A claim of one queue is one
script. A claim of several runs in two steps, each one pipeline per node:
*peek* (each queue rescues its expired leases, promotes its due delayed jobs
and shows its best ``limit`` ready jobs), then the peeked jobs are merged in
Python by :func:`polyqueue.policy.claim_order_key` and each queue is asked to
*claim* as many as the merge gave it. Priority order across queues is
therefore exact as of the peek; a job made ready between the two steps waits
for the next claim, and a queue emptied meanwhile by another worker gives
fewer jobs (the claim returns fewer than ``limit``, never a worse order
within a queue).

**Expired leases of other queues.** A claim rescues the expired leases of
the queues it claims from inside its own script, exactly when they expire.
The contract also asks any claim to rescue expired leases of *other* queues;
for that the database keeps a lease index (``{PREFIX}:leases``: per queue, a
moment at or before its earliest lease expiry), and a claim looks at it at
most every :data:`SWEEP_INTERVAL` seconds and rescues the queues it names
as due, one script per queue.

**Periodic jobs.** A fire is one script in the slot of the job's queue: the
``(schedule, slot)`` record (kept with that queue) and the job are stored
together, once, on that master's clock. The declared schedules are one hash
of the database (``{PREFIX}:schedules``); listings and fire histories read
every queue's records and merge them.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy.engine import URL

from polyqueue import policy
from polyqueue.backends import base as spi
from polyqueue.backends.base import Backend, BackendOptions, Capability
from polyqueue.errors import BackendUnavailable, ConfigurationError, InvalidArgument, SchemaMissing
from polyqueue.job import Job, JobRecord, JobStatus, ReplayResult
from polyqueue.testing import server_url

from .layout import (
    FIELDS,
    MAX_TIME_US,
    Layout,
    decode_job,
    decode_record,
    from_us,
    job_id,
    parse_job_id,
    queue_tag,
    to_us,
)
from .store import Call, RedisStore, Unreached
from .wakeups import RedisWakeups

__all__ = ["EXPORT_PROBES", "SCHEMA_VERSION", "SWEEP_INTERVAL", "RedisBackend"]

log = logging.getLogger("polyqueue.redis")

#: The key layout's version, written by ``migrate``.
SCHEMA_VERSION = "1"
#: How often (seconds) at most one backend's claims look for expired leases of queues they do not claim from.
SWEEP_INTERVAL = 0.2
#: How many queues one such look rescues at most.
SWEEP_QUEUES = 16
#: Due delayed jobs one claim moves to the ready sets at most (more wait for the next claim).
PROMOTE_BATCH = 10_000
#: Seconds a claim over several queues waits for an unreachable master before leaving its queues out.
PEEK_PATIENCE = 0.5
#: Seconds a settle request that raised is remembered as interrupted.
INTERRUPTED_MEMORY = 600.0
#: Jobs one replay script handles.
REPLAY_BATCH = 500
#: Job numbers one export script looks at, at most (a page of an export is one or more such scripts).
EXPORT_PROBES = 5000
#: Jobs, and payload characters, per enqueue script at most (a bigger batch is several scripts in one pipeline).
ENQUEUE_CHUNK = 1000
ENQUEUE_CHUNK_CHARS = 8 << 20


def _option_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number

    return parse


def _option_seconds(value: Any) -> float:
    seconds = float(value)
    if not 0 <= seconds <= 3600:
        raise ValueError("must be between 0 and 3600 seconds")
    return seconds


class RedisBackend(Backend):
    """Jobs in Redis: ``redis+cluster://h1:7000,h2:7001/`` (a cluster) or ``redis://host:6379/0`` (one node).

    Options (keywords or URL query parameters): ``wait_replicas`` (replicas
    that must acknowledge every enqueue and settlement with ``WAIT``; default
    1 on a cluster, 0 on one node; 0 turns ``WAIT`` off), ``wait_timeout``
    (seconds, default 5), ``reconnect_seconds`` (how long a call rides out a
    failover or a lost connection before raising ``BackendUnavailable``,
    default 10) and ``socket_timeout`` (seconds, default 5).
    """

    name = "redis"
    capabilities = frozenset(
        {
            Capability.DEDUPE,
            Capability.PRIORITIES,
            Capability.DELAYED,
            Capability.NOTIFY,
            Capability.MULTI_PROCESS,
            Capability.PERIODIC,
            Capability.TRANSFER,
        }
    )
    connect_options: ClassVar[dict[str, Any]] = {
        "wait_replicas": _option_int(0, 16),
        "wait_timeout": _option_seconds,
        "reconnect_seconds": _option_seconds,
        "socket_timeout": _option_seconds,
    }
    #: Where ``polyqueue compat`` runs its Redis Cluster column: the cluster ``.ci/services`` starts, or
    #: ``$POLYQUEUE_TEST_REDIS_CLUSTER_URL`` when set (read when this module is imported).
    conformance_url: ClassVar[str | None] = server_url("redis_cluster")
    #: The compat matrix's heading for that column.
    conformance_label: ClassVar[str] = "Redis Cluster"

    def __init__(self, url: URL, options: BackendOptions) -> None:
        self.scheme = url.drivername
        if self.scheme not in ("redis", "redis+cluster"):
            raise ConfigurationError(f"unknown Redis URL form {self.scheme}://; use redis:// or redis+cluster://")
        self.is_cluster = self.scheme == "redis+cluster"
        query = dict(url.query)
        hosts = query.pop("host", ())
        if query:
            known = sorted(self.connect_options)
            raise ConfigurationError(f"unknown option(s) for {self.scheme}://: {sorted(query)}; known: {known}")
        self.nodes = self._nodes(url, (hosts,) if isinstance(hosts, str) else tuple(hosts))
        self.db = self._database(url)
        self.layout = Layout(options["table_prefix"])
        self.options = options
        wait_replicas = options.get("wait_replicas")
        self.wait_replicas = (1 if self.is_cluster else 0) if wait_replicas is None else int(wait_replicas)
        user = f"{url.username}:***@" if url.username else (":***@" if url.password else "")
        shown_hosts = ",".join(f"{host}:{port}" for host, port in self.nodes)
        self._described = f"{self.scheme}://{user}{shown_hosts}/" + ("" if self.is_cluster else str(self.db))
        self.store = RedisStore(
            cluster=self.is_cluster,
            nodes=self.nodes,
            db=self.db,
            username=url.username,
            password=None if url.password is None else str(url.password),
            socket_timeout=float(options.get("socket_timeout") or 5.0),
            reconnect_seconds=float(options.get("reconnect_seconds", 10.0)),
            wait_replicas=self.wait_replicas,
            wait_timeout=float(options.get("wait_timeout") or 5.0),
            described=self._described,
        )
        self._schema_checked_at = float("-inf")
        self._known_queues: dict[str, str] = {}  # tag -> queue name, of queues this process has seen in the registry
        self._next_sweep = 0.0
        self._sweep_lock = threading.Lock()
        #: Tokens of settle requests that raised BackendUnavailable, and when (a retry of one is a resend).
        self._interrupted: dict[int, float] = {}
        #: Fires that raised BackendUnavailable: (schedule, slot, queue tag) -> (nonce, when). Firing that slot
        #: again here is a resend with the same nonce, so it reports the fire if the first attempt made it.
        self._interrupted_fires: dict[tuple[str, str, str], tuple[str, float]] = {}
        self._next_wait_warning = 0.0

    def _nodes(self, url: URL, hosts: tuple[str, ...]) -> list[tuple[str, int]]:
        if url.host and hosts:
            raise ConfigurationError("give the nodes either in the URL's host part or as host= parameters, not both")
        if hosts and not self.is_cluster:
            raise ConfigurationError("redis:// names one node; several nodes are a cluster: redis+cluster://h1,h2/")
        if not hosts:
            return [(url.host or "127.0.0.1", url.port or (7000 if self.is_cluster else 6379))]
        nodes = []
        for text in hosts:
            host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
            if not host or (port and not port.isdigit()) or (port and not 0 < int(port) < 65536):
                raise ConfigurationError(f"a cluster node must be host:port, not {text[:80]!r}")
            nodes.append((host.strip("[]"), int(port) if port else 6379))
        return nodes

    def _database(self, url: URL) -> int:
        database = (url.database or "").strip("/")
        if not database:
            return 0
        if not database.isdigit() or int(database) > 1_000_000:
            raise ConfigurationError("the path of a Redis URL is a database number (redis://host:6379/0)")
        if self.is_cluster and int(database) != 0:
            raise ConfigurationError("a Redis Cluster has only database 0")
        return int(database)

    def describe(self) -> str:
        """The URL with the password masked."""
        return self._described

    def server_version(self) -> str:
        """``Redis 7.0.15`` (or ``Valkey …``), with the number of masters in a cluster."""
        info = self.store.command(lambda client: self.store.masters()[0].info("server"))
        name = "Valkey" if "valkey_version" in info else "Redis"
        version = info.get("valkey_version") or info.get("redis_version", "?")
        if not self.is_cluster:
            return f"{name} {version}"
        masters = len(self.store.command(lambda client: client.get_primaries()))
        return f"{name} {version} (cluster, {masters} masters)"

    # --- lifecycle ----------------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Write the schema version (the keys themselves appear with the jobs). Idempotent; races are harmless."""
        schema = self.layout.schema
        replies, _acked = self.store.on_node(
            schema, lambda pipe: (pipe.set(schema, SCHEMA_VERSION, nx=True), pipe.get(schema)), wait=True
        )
        stored = replies[1]
        if stored != SCHEMA_VERSION:
            raise ConfigurationError(
                f"the polyqueue keys {self.layout.prefix!r} on {self._described} have layout version {stored!r}; "
                f"this polyqueue-redis writes version {SCHEMA_VERSION}"
            )
        self._schema_checked_at = time.monotonic()

    def drop_schema(self) -> None:
        """Delete every key of this prefix on every master (SCAN + UNLINK); other prefixes are untouched."""

        def drop(client: Any) -> None:
            for node in self.store.masters():
                for pattern in self.layout.patterns():
                    batch = []
                    for key in node.scan_iter(match=pattern, count=1000):
                        batch.append(key)
                        if len(batch) >= 500:
                            _unlink(node, batch)
                            batch = []
                    _unlink(node, batch)

        self.store.command(drop)
        self._known_queues.clear()
        self._schema_checked_at = float("-inf")

    def close(self) -> None:
        """Close the connections. Idempotent."""
        self.store.close()

    # --- schema and queues ----------------------------------------------------------------------------------
    def _require_schema(self, *, fresh: bool = False) -> None:
        """SchemaMissing unless ``migrate`` ran (checked once a second at most, or now when ``fresh``)."""
        if not fresh and time.monotonic() - self._schema_checked_at < 1.0:
            return
        if self.store.command(lambda client: client.get(self.layout.schema)) is None:
            raise SchemaMissing(
                f"the polyqueue keys {self.layout.prefix!r} do not exist on {self._described}: "
                "run `polyqueue migrate` (or Queue.migrate())"
            )
        self._schema_checked_at = time.monotonic()

    def _create_queue(self, name: str) -> None:
        """Register a queue that had no jobs yet (after checking the schema): registry entry, then its meta hash."""
        self._require_schema(fresh=True)
        tag = queue_tag(name)
        self.store.on_node(self.layout.queues, lambda pipe: pipe.hset(self.layout.queues, tag, name), wait=True)
        [held] = self.store.run([Call("init", self.layout.meta(tag), [self.layout.base(tag), "0", name])]).replies
        if held != name:
            raise ConfigurationError(f"queue names {name!r} and {held!r} share the Redis key tag {tag!r}; rename one")
        self._known_queues[tag] = name

    def _registered(self) -> dict[str, str]:
        """Every queue of this database: tag -> name."""
        found = self.store.command(lambda client: client.hgetall(self.layout.queues))
        self._known_queues.update(found)
        return dict(found)

    def _queue_tags(self, queue: str | None) -> list[str]:
        """The tags of one queue (by name) or of every registered queue."""
        self._require_schema()
        return [queue_tag(queue)] if queue is not None else sorted(self._registered())

    def _call(self, script: str, tag: str, *args: Any) -> Call:
        """A call of ``script`` on the queue with ``tag``: routed by its meta key, ARGV = (base, resent, *args)."""
        return Call(script, self.layout.meta(tag), [self.layout.base(tag), "0", *args])

    # --- producing ------------------------------------------------------------------------------------------
    def enqueue(self, batch: spi.EnqueueBatch) -> list[Hashable]:
        """Store the batch: one script per queue (and per 1000 jobs or 8 MiB of payloads), pipelined per node.

        Each script is atomic; if Redis stays unavailable part-way through a
        batch of several, the jobs already stored (not yet claimed) are taken
        back before ``BackendUnavailable`` is raised.
        """
        if batch.connection is not None:
            raise ConfigurationError("the Redis backend has no transactions to enqueue into (connection=)")
        if not batch.jobs:
            return []
        positions: dict[str, list[int]] = defaultdict(list)
        names: dict[str, str] = {}
        for index, job in enumerate(batch.jobs):
            tag = queue_tag(job.queue)
            positions[tag].append(index)
            names[tag] = job.queue
        calls: list[Call] = []
        owners: list[list[int]] = []
        batch_id = uuid.uuid4().hex
        ttl = str(max(60, int(self.store.reconnect_seconds * 3)))
        for tag, indexes in positions.items():
            for chunk in _chunks(indexes, [len(batch.jobs[i].payload_json) for i in indexes]):
                args: list[Any] = [names[tag], f"{batch_id}.{len(calls)}", ttl]
                for i in chunk:
                    args.extend(self._job_args(batch.jobs[i]))
                calls.append(self._call("enqueue", tag, *args))
                owners.append(chunk)
        replies = self._run_creating(calls, names, wait=True, on_failure=self._withdraw)
        ids: list[Hashable] = [None] * len(batch.jobs)
        for call, chunk, reply in zip(calls, owners, replies.replies, strict=True):
            tag = queue_tag(call.args[2])
            for i, number in zip(chunk, reply[1].split(","), strict=True):
                ids[i] = job_id(tag, number)
        if not replies.acknowledged:
            raise BackendUnavailable(
                f"the job(s) were stored on {self._described} but not acknowledged by {self.wait_replicas} replica(s) "
                f"within {self.store.wait_timeout:g}s ({'; '.join(replies.shortfall)}): a failover now could lose "
                "them. (wait_replicas=0 turns the replica acknowledgement off.)"
            )
        return ids

    def _job_args(self, job: Any) -> list[Any]:
        if job.run_at is not None:
            at = max(0, to_us(job.run_at))
            if at > MAX_TIME_US:
                raise InvalidArgument("run_at is beyond the year 5138, the Redis backend's last moment")
            run_at = str(at)
        else:
            run_at = ""
        delay = str(round(job.delay_seconds * 1_000_000))
        dedupe = job.dedupe_key or ""
        hold = "" if job.dedupe_for is None or not dedupe else repr(float(job.dedupe_for))
        return [job.job_type, job.payload_json, str(job.priority), str(job.max_attempts), delay, run_at, dedupe, hold]

    def _withdraw(self, calls: Sequence[Call], replies: Sequence[Any]) -> None:
        """Take back what the succeeded enqueue scripts of an interrupted batch stored (jobs nobody claimed yet)."""
        undo = []
        for call, reply in zip(calls, replies, strict=True):
            if reply is None or reply[0] != "OK":
                continue
            stored = [n for n, fresh in zip(reply[1].split(","), reply[2], strict=True) if fresh == "1"]
            tag = queue_tag(call.args[2])
            undo.append(self._call("withdraw", tag, call.args[3], *stored))
        if not undo:
            return
        try:
            kept = self.store.run(undo).replies
        except BackendUnavailable:
            log.error("an interrupted enqueue could not take back the jobs it stored on %s", self._described)
            return
        for call, numbers in zip(undo, kept, strict=True):
            if numbers:
                tag = _tag_of(call, self.layout)
                log.error("an interrupted enqueue left jobs already claimed: %s", [job_id(tag, n) for n in numbers])

    def _run_creating(
        self,
        calls: list[Call],
        names: dict[str, str],
        *,
        wait: bool = False,
        on_failure: Callable[[Sequence[Call], Sequence[Any]], None] | None = None,
    ) -> Any:
        """Run calls, creating the queues that do not exist yet (``NOQUEUE``) and running theirs again."""
        outcome = self.store.run(calls, wait=wait)
        for _ in range(3):
            missing = [i for i, reply in enumerate(outcome.replies) if _status(reply) == "NOQUEUE"]
            collisions = [reply for reply in outcome.replies if _status(reply) == "COLLISION"]
            if collisions:
                raise ConfigurationError(f"a queue name shares its Redis key tag with queue {collisions[0][1]!r}")
            if not missing:
                return outcome
            try:
                for tag in {queue_tag(calls[i].args[2]) for i in missing}:
                    self._create_queue(names[tag])
                retry = self.store.run([calls[i] for i in missing], wait=wait)
            except (BackendUnavailable, SchemaMissing):
                if on_failure is not None:
                    on_failure(calls, outcome.replies)
                raise
            for i, reply in zip(missing, retry.replies, strict=True):
                outcome.replies[i] = reply
            outcome.acknowledged = outcome.acknowledged and retry.acknowledged
            outcome.shortfall.extend(retry.shortfall)
        raise BackendUnavailable(f"queues on {self._described} keep disappearing while being created (drop_schema?)")

    # --- consuming ------------------------------------------------------------------------------------------
    def claim(self, request: spi.ClaimRequest) -> spi.ClaimResult:
        """Rescue expired leases, then take up to ``limit`` ready jobs in claim order (see the module docstring)."""
        types = sorted(request.job_types) if request.job_types is not None else []
        tags = [queue_tag(name) for name in request.queues]
        dead: list[Job] = []
        if len(tags) == 1:
            plan = {tags[0]: request.limit}
        else:
            plan = self._plan(tags, types, request.limit, dead)
        cap = "" if request.max_attempts is None else str(request.max_attempts)
        lease_us = str(max(1, round(request.lease * 1_000_000)))
        calls = [
            self._call(
                "claim", tag, str(n), lease_us, request.worker_id, str(request.token), cap,
                str(policy.RESCUE_BATCH), str(PROMOTE_BATCH), *types,
            )
            for tag, n in plan.items()
        ]  # fmt: skip
        keyed: list[tuple[tuple[Any, ...], Job]] = []
        lowered: dict[str, str] = {}
        missing = False
        # Several queues: a master that stays unreachable leaves its queues out of this claim, not the others.
        for call, reply in zip(calls, self.store.run(calls, partial=len(tags) > 1).replies, strict=True):
            tag = _tag_of(call, self.layout)
            if isinstance(reply, Unreached):
                log.warning("claim skipped queue tag %s on %s: %s", tag, self._described, reply.error)
                continue
            if _status(reply) == "NOQUEUE":
                missing = True
                continue
            _ok, _now, jobs, dead_rows, was_lowered, earliest = reply
            for row in jobs:
                job = decode_job(tag, row[0], row[1:])
                keyed.append((_order_key(tag, job), job))
            dead.extend(decode_job(tag, row[0], row[1:]) for row in dead_rows)
            if was_lowered == "1" and earliest:
                lowered[tag] = earliest
        if missing:
            self._require_schema()
        try:
            # Housekeeping for the lease index: a failure here must not lose the jobs just claimed.
            if lowered:
                self._note_leases(lowered)
            dead.extend(self._sweep())
        except BackendUnavailable as exc:
            log.warning("could not update the lease index on %s: %s", self._described, exc)
        keyed.sort(key=lambda pair: pair[0])
        return spi.ClaimResult([job for _key, job in keyed], dead)

    def _plan(self, tags: list[str], types: list[str], limit: int, dead: list[Job]) -> dict[str, int]:
        """How many jobs to claim from each queue: every queue's best ``limit``, merged in claim order.

        Each queue shows its jobs in claim order already, so the merge reads
        them lazily and stops after ``limit``.
        """
        calls = [
            self._call("peek", tag, str(limit), str(policy.RESCUE_BATCH), str(PROMOTE_BATCH), *types) for tag in tags
        ]
        shown: list[Iterator[tuple[tuple[Any, ...], str]]] = []
        missing = 0
        patience = min(PEEK_PATIENCE, self.store.reconnect_seconds)
        for call, reply in zip(calls, self.store.run(calls, partial=True, patience=patience).replies, strict=True):
            tag = _tag_of(call, self.layout)
            if isinstance(reply, Unreached):
                log.debug("claim could not look at queue tag %s: %s", tag, reply.error)
                continue
            if _status(reply) == "NOQUEUE":
                missing += 1
                continue
            _ok, _now, members, dead_rows = reply
            dead.extend(decode_job(tag, row[0], row[1:]) for row in dead_rows)
            shown.append(_candidates(tag, members))
        if missing == len(tags):
            self._require_schema()
        merged = heapq.merge(*shown, key=lambda pair: pair[0])
        return dict(Counter(tag for _key, tag in itertools.islice(merged, limit)))

    def _note_leases(self, earliest: dict[str, str]) -> None:
        """Lower the lease index of queues whose earliest lease expiry moved earlier (``ZADD LT``)."""
        mapping = {tag: int(moment) for tag, moment in earliest.items()}
        self.store.command(lambda client: client.zadd(self.layout.leases, mapping, lt=True))

    def _sweep(self) -> list[Job]:
        """Rescue expired leases of queues the lease index says are due (at most every SWEEP_INTERVAL seconds).

        The index entry of a queue is a moment at or before its earliest
        lease expiry. After a rescue it is raised to the queue's new earliest
        expiry, then the queue is read again and the entry lowered (``LT``) to
        what it holds now: a claim that took a lease in between is never
        hidden, whichever order the two processes' writes arrive in.
        """
        now = time.monotonic()
        with self._sweep_lock:
            if now < self._next_sweep:
                return []
            self._next_sweep = now + SWEEP_INTERVAL
        clock_us = to_us(self.db_now())
        due = self.store.command(
            lambda client: client.zrangebyscore(self.layout.leases, "-inf", clock_us, start=0, num=SWEEP_QUEUES)
        )
        dead: list[Job] = []
        for tag in due:
            dead.extend(self._rescue_queue(tag))
        return dead

    def _rescue_queue(self, tag: str) -> list[Job]:
        """Rescue one queue's expired leases for the sweep, then bring its lease index entry up to date."""
        leases, base = self.layout.leases, self.layout.base(tag)
        [reply] = self.store.run([self._call("rescue", tag, str(policy.RESCUE_BATCH))]).replies
        if _status(reply) == "NOQUEUE":
            self.store.command(lambda client: client.zrem(leases, tag))
            return []
        _ok, _now, dead_rows, earliest = reply
        if earliest:
            self.store.command(lambda client: client.zadd(leases, {tag: int(earliest)}))
        else:
            self.store.command(lambda client: client.zrem(leases, tag))
        again = self.store.command(lambda client: client.zrange(base + ":l", 0, 0, withscores=True))
        if again:
            self._note_leases({tag: str(int(again[0][1]))})
        return [decode_job(tag, row[0], row[1:]) for row in dead_rows]

    def settle(self, request: spi.SettleRequest) -> set[Hashable]:
        """Apply each settlement fenced on its claim's token; one script per queue, ``WAIT`` for the replicas."""
        if not request.settlements:
            return set()
        groups: dict[str, list[Any]] = defaultdict(list)
        lost: set[Hashable] = set()
        for settlement in request.settlements:
            parsed = parse_job_id(settlement.job.id)
            if parsed is None:
                lost.add(settlement.job.id)
                continue
            tag, number = parsed
            values = {"r": settlement.result_json, "e": settlement.last_error, "h": settlement.errors_json}
            given = "".join(letter for letter, value in values.items() if value is not None)
            groups[tag].extend(
                [
                    number,
                    str(settlement.job.lease_token),
                    settlement.status,
                    "1" if settlement.finished else "0",
                    "" if settlement.run_in is None else str(round(settlement.run_in * 1_000_000)),
                    "1" if settlement.refund_attempt else "0",
                    given,
                    settlement.result_json or "",
                    settlement.last_error or "",
                    settlement.errors_json or "",
                    "1" if settlement.hold_dedupe else "0",
                ]
            )
        calls = [self._call("settle", tag, str(request.token), *args) for tag, args in groups.items()]
        if self._was_interrupted(request.token):
            # The same request again after it raised: parts of it may have been applied; those are not "lost".
            for call in calls:
                call.mark_resent()
        try:
            outcome = self.store.run(calls, wait=True)
        except BackendUnavailable:
            self._interrupted[request.token] = time.monotonic()
            raise
        for call, numbers in zip(calls, outcome.replies, strict=True):
            tag = _tag_of(call, self.layout)
            lost.update(job_id(tag, number) for number in numbers)
        if not outcome.acknowledged and time.monotonic() >= self._next_wait_warning:
            self._next_wait_warning = time.monotonic() + 10.0
            log.warning(
                "settlements on %s not acknowledged by %d replica(s) (%s): a failover now could run those jobs again",
                self._described, self.wait_replicas, "; ".join(outcome.shortfall),
            )  # fmt: skip
        return lost

    def _was_interrupted(self, token: int) -> bool:
        """Whether a settle request with this token raised before (then its retry may find itself applied)."""
        if not self._interrupted:
            return False
        horizon = time.monotonic() - INTERRUPTED_MEMORY
        for stale in [t for t, at in self._interrupted.items() if at < horizon]:
            self._interrupted.pop(stale, None)
        return self._interrupted.pop(token, None) is not None

    def extend(self, request: spi.ExtendRequest) -> set[Hashable]:
        """Push held leases out to now + ``lease``; returns the lost ids."""
        if not request.jobs:
            return set()
        groups: dict[str, list[str]] = defaultdict(list)
        lost: set[Hashable] = set()
        for job in request.jobs:
            parsed = parse_job_id(job.id)
            if parsed is None:
                lost.add(job.id)
                continue
            groups[parsed[0]].extend([parsed[1], str(job.lease_token)])
        lease_us = str(max(1, round(request.lease * 1_000_000)))
        calls = [self._call("extend", tag, lease_us, *args) for tag, args in groups.items()]
        lowered: dict[str, str] = {}
        for call, (numbers, was_lowered, earliest) in zip(calls, self.store.run(calls).replies, strict=True):
            tag = _tag_of(call, self.layout)
            lost.update(job_id(tag, number) for number in numbers)
            if was_lowered == "1" and earliest:
                lowered[tag] = earliest
        if lowered:
            try:
                self._note_leases(lowered)
            except BackendUnavailable as exc:
                log.warning("could not update the lease index on %s: %s", self._described, exc)
        return lost

    # --- inspecting and managing ------------------------------------------------------------------------
    def get(self, lookup: spi.JobLookup) -> Job | None:
        """The job with this id (``TAG:N``), or None for ids this backend could not have issued."""
        self._require_schema()
        parsed = parse_job_id(lookup.job_id)
        if parsed is None:
            return None
        tag, number = parsed
        key = self.layout.base(tag) + ":j:" + number
        fields = self.store.command(lambda client: client.hmget(key, list(FIELDS)))
        return None if fields[0] is None else decode_job(tag, number, fields)

    def cancel(self, request: spi.CancelRequest) -> bool:
        """Cancel a pending job (due or scheduled), releasing its dedupe key; False if it is not pending."""
        self._require_schema()
        parsed = parse_job_id(request.job_id)
        if parsed is None:
            return False
        tag, number = parsed
        [reply] = self.store.run([self._call("cancel", tag, number, uuid.uuid4().hex)], wait=True).replies
        return bool(reply)

    def stats(self, request: spi.StatsRequest) -> dict[str, dict[str, Any]]:
        """Counts per queue (and job type) by status, plus ``scheduled``; queues without jobs are absent.

        Pending, scheduled and processing are the sizes of the queue's sorted
        sets; finished counts are the finished sets' sizes (by type: a counter
        per status and type).
        """
        tags = self._queue_tags(request.queue)
        calls = [self._call("stats", tag) for tag in tags]
        out: dict[str, dict[str, Any]] = {}
        names = {**self._known_queues}
        if request.queue is not None:
            names[queue_tag(request.queue)] = request.queue
        for call, reply in zip(calls, self.store.run(calls).replies, strict=True):
            if _status(reply) == "NOQUEUE":
                continue
            tag = _tag_of(call, self.layout)
            name = names.get(tag) or self._registered().get(tag, tag)
            _ok, _now, live, finished, finished_by_type = reply
            by_type: dict[str, dict[str, int]] = {}
            for i in range(0, len(live), 4):
                counts = by_type.setdefault(live[i], dict.fromkeys((*_STATUSES, "scheduled"), 0))
                counts["pending"], counts["scheduled"], counts["processing"] = map(int, live[i + 1 : i + 4])
            if request.by_type:
                for key, value in _pairs(finished_by_type).items():
                    status, _, job_type = key.partition("|")
                    by_type.setdefault(job_type, dict.fromkeys((*_STATUSES, "scheduled"), 0))[status] = value
                kept = {t: c for t, c in by_type.items() if any(c[s] for s in _STATUSES)}
                if kept:
                    out[name] = kept
                continue
            totals = dict.fromkeys((*_STATUSES, "scheduled"), 0)
            for counts in by_type.values():
                for key in ("pending", "scheduled", "processing"):
                    totals[key] += counts[key]
            for status, value in zip(_FINISHED, finished, strict=True):
                totals[status] = int(value)
            if any(totals[s] for s in _STATUSES):
                out[name] = totals
        return out

    def count_ready(self, request: spi.ReadyCount) -> int:
        """Pending jobs of the queue (of the request's types) that are due now: O(log n) from the sorted sets."""
        self._require_schema()
        types = sorted(request.job_types) if request.job_types is not None else []
        [reply] = self.store.run([self._call("ready", queue_tag(request.queue), *types)]).replies
        return int(reply)

    def cached_depth(self, queue: str) -> int | None:
        """The ready count, read natively in O(log n): Redis is its own depth cache."""
        return self.count_ready(spi.ReadyCount(queue))

    def seconds_until_due(self, probe: spi.DueProbe) -> float | None:
        """Seconds until a job of the probe's queues (and types) may be claimable; one read script per queue."""
        self._require_schema()
        types = sorted(probe.job_types) if probe.job_types is not None else []
        calls = [self._call("due", queue_tag(name), *types) for name in probe.queues]
        waits = [
            (int(moment) - int(now)) / 1e6
            for now, moment in self.store.run(calls).replies
            if moment
        ]  # fmt: skip
        return min(waits) if waits else None

    def db_now(self) -> datetime:
        """The clock of the master serving the database's keys (each queue's scripts use their own master's)."""
        seconds, micros = self.store.command(lambda client: self.store.node_for(self.layout.schema)[1].time())
        now = from_us(int(seconds) * 1_000_000 + int(micros))
        assert now is not None
        return now

    def dead_jobs(self, query: spi.DeadJobsQuery) -> list[Job]:
        """Dead jobs, most recently finished first: each queue's newest, merged."""
        tags = self._queue_tags(query.queue)
        calls = [self._call("dead", tag, str(query.limit)) for tag in tags]
        jobs: list[Job] = []
        for call, rows in zip(calls, self.store.run(calls).replies, strict=True):
            tag = _tag_of(call, self.layout)
            jobs.extend(decode_job(tag, row[0], row[1:]) for row in rows)
        jobs.sort(key=lambda job: (job.finished_at, _order_key_of_id(job.id)), reverse=True)
        return jobs[: query.limit]

    def replay(self, request: spi.ReplayRequest) -> ReplayResult:
        """Dead jobs back to pending with attempts 0, error history kept; held dedupe keys skip their job."""
        wanted: dict[str, list[str]] = defaultdict(list)
        if request.ids is None:
            for tag in self._queue_tags(request.queue):
                wanted[tag].extend(self._dead_numbers(tag))
        else:
            self._require_schema()
            for value in request.ids:
                parsed = parse_job_id(value)
                if parsed is not None:
                    wanted[parsed[0]].append(parsed[1])
        result = ReplayResult(0)
        for tag, numbers in wanted.items():
            unique = list(dict.fromkeys(numbers))
            for start in range(0, len(unique), REPLAY_BATCH):
                chunk = unique[start : start + REPLAY_BATCH]
                [reply] = self.store.run([self._call("replay", tag, request.queue or "", *chunk)], wait=True).replies
                replayed, skipped = reply
                result.replayed += int(replayed)
                for number, holder in zip(skipped[::2], skipped[1::2], strict=True):
                    result.skipped[job_id(tag, number)] = f"its dedupe key is held by job {job_id(tag, holder)}"
        return result

    def _dead_numbers(self, tag: str) -> list[str]:
        key = self.layout.base(tag) + ":f:dead"
        return list(self.store.command(lambda client: client.zrange(key, 0, -1)))

    def purge(self, request: spi.PurgeRequest) -> int:
        """Delete jobs of the status finished more than ``older_than`` seconds ago, a paced batch per script.

        A job still holding its dedupe key (within its ``dedupe_for``) is kept until the hold ends.

        A purge of ``done`` jobs also deletes each queue's fire records as old, keeping each schedule's newest.
        A script blocks the server while it runs, so every batch, of jobs or of fires, is sized and followed
        by a rest as :class:`~polyqueue.policy.PurgePace` says.
        """
        older_us = str(round(request.older_than * 1_000_000))
        sizes = policy.PurgePace(request.batch_size, self.lock_poll_seconds, self.pause).sizes()
        deleted = 0
        for tag in self._queue_tags(None):
            kept = 0  # jobs still holding their dedupe keys stay: the next batch starts past them
            while True:
                size = next(sizes)
                call = self._call("purge", tag, request.status, older_us, str(size), str(kept))
                [(gone, looked, held)] = self.store.run([call]).replies
                deleted += int(gone)
                kept += int(held)
                if int(looked) < size:
                    break
            if request.status == JobStatus.DONE:
                self._purge_fires(tag, older_us, sizes)
        return deleted

    def _purge_fires(self, tag: str, older_us: str, sizes: Iterator[int]) -> None:
        """Delete the queue's fire records older than ``older_us``, a batch per script, each schedule's newest kept."""
        names_key = self.layout.base(tag) + ":sn"
        for name in sorted(self.store.command(lambda client: client.smembers(names_key))):
            after = ""
            while True:
                size = next(sizes)
                call = self._call("purge_fires", tag, name, older_us, str(size), after)
                [(_gone, looked, last)] = self.store.run([call]).replies
                if int(looked) < size:
                    break
                after = last

    # --- moving jobs (the ``transfer`` capability) ------------------------------------------------------------
    def export_jobs(self, query: spi.ExportQuery) -> list[JobRecord]:
        """One page of jobs with every stored field, in id order: by queue tag, then job number.

        Each queue's job numbers after ``query.after`` are looked at in order,
        :data:`EXPORT_PROBES` per script (read only), so a page costs what it
        looks at; numbers whose jobs were purged or moved are looked at too.
        """
        statuses = sorted(set(query.statuses) - {JobStatus.PROCESSING})
        start_tag, start = "", 0
        if query.after is not None:
            parsed = parse_job_id(query.after)
            if parsed is None:
                raise InvalidArgument(f"{query.after!r} is not a job id of {self._described}")
            start_tag, start = parsed[0], int(parsed[1])
        records: list[JobRecord] = []
        if not statuses or query.limit < 1:
            return records
        for tag in self._queue_tags(query.queue):
            if tag < start_tag:
                continue
            after = start if tag == start_tag else 0
            while len(records) < query.limit:
                want = str(query.limit - len(records))
                call = self._call("export", tag, str(after), want, str(EXPORT_PROBES), *statuses)
                [(rows, last, seq)] = self.store.run([call]).replies
                records.extend(decode_record(tag, row[0], row[1:]) for row in rows)
                after = int(last)
                if after >= int(seq):
                    break
            if len(records) >= query.limit:
                break
        return records

    def import_jobs(self, batch: spi.ImportBatch) -> spi.ImportResult:
        """Store each record with every field as given, once per import key: one script per queue (and chunk).

        Each script is atomic and waits for the replicas like an enqueue. A
        batch spanning several queues (or more than one script's worth of
        jobs) is several scripts, so a failure part-way can leave the first
        ones stored; the import keys make the rerun of a transfer find them
        (``existing``) instead of storing them again. Import keys are unique
        per queue (a key is derived from its job's queue, so that is per database).
        """
        records = batch.records
        result = spi.ImportResult([None] * len(records))
        if not records:
            return result
        positions: dict[str, list[int]] = defaultdict(list)
        names: dict[str, str] = {}
        arguments: list[list[str]] = []
        for index, record in enumerate(records):
            arguments.append(self._record_args(record))
            tag = queue_tag(record.queue)
            positions[tag].append(index)
            names[tag] = record.queue
        self._require_schema()
        calls: list[Call] = []
        owners: list[list[int]] = []
        for tag, indexes in positions.items():
            for chunk in _chunks(indexes, [len(records[i].payload_json) for i in indexes]):
                calls.append(self._call("import", tag, names[tag], *(a for i in chunk for a in arguments[i])))
                owners.append(chunk)
        outcome = self._run_creating(calls, names, wait=True)
        for call, chunk, reply in zip(calls, owners, outcome.replies, strict=True):
            tag = queue_tag(call.args[2])
            pairs = reply[1]
            for i, what, number in zip(chunk, pairs[::2], pairs[1::2], strict=True):
                if what == "held":
                    held_by = job_id(tag, number)
                    result.skipped[i] = f"its dedupe key {records[i].dedupe_key!r} is held here by job {held_by}"
                    continue
                result.ids[i] = job_id(tag, number)
                if what == "existing":
                    result.existing.add(i)
        if not outcome.acknowledged:
            raise BackendUnavailable(
                f"the imported job(s) were stored on {self._described} but not acknowledged by {self.wait_replicas} "
                f"replica(s) within {self.store.wait_timeout:g}s ({'; '.join(outcome.shortfall)}): a failover now "
                "could lose them (a rerun of the transfer finds the ones that survived by their import keys)"
            )
        return result

    def _record_args(self, record: JobRecord) -> list[str]:
        """The 18 values of a record the import script reads (see ``scripts.IMPORT``), checked."""
        if record.import_key is None:
            raise InvalidArgument("every imported record needs an import_key")
        if record.status not in _STATUSES or record.status == JobStatus.PROCESSING:
            raise InvalidArgument(f"cannot import a job with status {record.status!r}")
        times = [record.run_at, record.created_at, record.finished_at, record.dedupe_held_until]
        if any(moment is not None and to_us(moment) > MAX_TIME_US for moment in times):
            raise InvalidArgument("a job's times must be before the year 5138 on the Redis backend")
        values = {"e": record.last_error, "h": record.errors_json, "r": record.result_json}
        given = "".join(letter for letter, value in values.items() if value is not None)
        dedupe_for = record.dedupe_for if record.dedupe_key else None
        held = record.dedupe_held_until if record.dedupe_key else None
        return [
            record.import_key, record.job_type, record.payload_json, str(record.priority), record.status,
            str(record.attempts), str(record.max_attempts), str(max(0, to_us(record.run_at))),
            str(max(0, to_us(record.created_at))),
            "" if record.finished_at is None else str(max(0, to_us(record.finished_at))),
            given, record.last_error or "", record.errors_json or "", record.result_json or "",
            record.dedupe_key or "", "" if dedupe_for is None else repr(float(dedupe_for)),
            "" if held is None else str(max(0, to_us(held))), str(record.lease_token),
        ]  # fmt: skip

    def delete_jobs(self, request: spi.DeleteRequest) -> set[Hashable]:
        """Delete each record's job while its status and lease token are the record's: one script per queue.

        Each queue's deletes are one atomic script; a resend after a lost
        reply reports what its first run deleted.
        """
        groups: dict[str, list[str]] = defaultdict(list)
        for record in request.records:
            parsed = parse_job_id(record.id)
            if parsed is None or record.status == JobStatus.PROCESSING:
                continue
            groups[parsed[0]].extend([parsed[1], record.status, str(record.lease_token)])
        if not groups:
            return set()
        self._require_schema()
        ttl = str(max(60, int(self.store.reconnect_seconds * 3)))
        calls = [self._call("delete", tag, uuid.uuid4().hex, ttl, *args) for tag, args in groups.items()]
        deleted: set[Hashable] = set()
        for call, numbers in zip(calls, self.store.run(calls, wait=True).replies, strict=True):
            tag = _tag_of(call, self.layout)
            deleted.update(job_id(tag, number) for number in numbers)
        return deleted

    # --- periodic jobs ----------------------------------------------------------------------------------------
    def declare_schedules(self, request: spi.DeclareSchedules) -> spi.ScheduleState:
        """Record the schedules by name (one script on the database's keys) and read each one's newest fire."""
        self._require_schema()
        args: list[str] = []
        for spec in request.schedules:
            args.extend([spec.name, _declaration(spec, request.worker_id)])
        call = Call("declare", self.layout.schedules, [self.layout.database, "0", *args])
        [now] = self.store.run([call], wait=True).replies
        db_now = from_us(now)
        assert db_now is not None
        newest = self._fires([spec.name for spec in request.schedules], 1)
        return spi.ScheduleState(db_now, {name: fires[0] for name, fires in newest.items()})

    def fire(self, request: spi.FireRequest) -> spi.FireResult:
        """Fire one slot: one script in the job's queue stores the ``(schedule, slot)`` record and the job, once.

        Waits for the replicas like an enqueue (a fire that returned survives
        a failover; one not acknowledged raises ``BackendUnavailable``).
        A call whose reply was lost is resent with the same nonce and reports
        the fire its first run made; so does the next fire of the same slot
        from this backend after one that raised.
        """
        job = request.job
        tag = queue_tag(job.queue)
        slot_at = to_us(request.slot_at)
        if not 0 <= slot_at <= MAX_TIME_US:
            raise InvalidArgument("a slot must fall due between 1970 and the year 5138 on the Redis backend")
        key = (request.schedule, request.slot, tag)
        nonce = self._interrupted_fire(key)
        resent = nonce is not None
        nonce = nonce or uuid.uuid4().hex
        args = [job.queue, request.schedule, request.slot, f"{slot_at:017d}", nonce, *self._job_args(job)]
        call = self._call("fire", tag, *args)
        if resent:
            call.mark_resent()
        try:
            outcome = self._run_creating([call], {tag: job.queue}, wait=True)
        except BackendUnavailable:
            self._interrupted_fires[key] = (nonce, time.monotonic())
            raise
        _ok, now, what, number = outcome.replies[0]
        db_now = from_us(now)
        assert db_now is not None
        if what != "fired":
            return spi.FireResult(fired=False, due=what != "early", job_id=None, db_now=db_now)
        if not outcome.acknowledged:
            self._interrupted_fires[key] = (nonce, time.monotonic())
            raise BackendUnavailable(
                f"slot {request.slot} of schedule {request.schedule!r} fired on {self._described} but was not "
                f"acknowledged by {self.wait_replicas} replica(s) within {self.store.wait_timeout:g}s "
                f"({'; '.join(outcome.shortfall)}): a failover now could lose the fire and its job, and fire it again"
            )
        return spi.FireResult(fired=True, due=True, job_id=job_id(tag, number), db_now=db_now)

    def _interrupted_fire(self, key: tuple[str, str, str]) -> str | None:
        """The nonce of an earlier fire of this slot that raised (taken: only the next fire reuses it), or None."""
        if not self._interrupted_fires:
            return None
        horizon = time.monotonic() - INTERRUPTED_MEMORY
        for stale in [k for k, (_nonce, at) in list(self._interrupted_fires.items()) if at < horizon]:
            self._interrupted_fires.pop(stale, None)
        remembered = self._interrupted_fires.pop(key, None)
        return None if remembered is None else remembered[0]

    def schedules(self, query: spi.ScheduleQuery) -> list[spi.ScheduleRecord]:
        """The declared schedules (the database's schedules hash) with their newest fires, by name."""
        self._require_schema()
        key = self.layout.schedules
        if query.names is None:
            stored: dict[str, str] = self.store.command(lambda client: client.hgetall(key))
        else:
            names = list(dict.fromkeys(query.names))
            values = self.store.command(lambda client: client.hmget(key, names)) if names else []
            stored = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        newest = self._fires(sorted(stored), 1)
        records = []
        for name in sorted(stored):
            at, _, text = stored[name].partition(",")
            fields = json.loads(text)
            declared_by = fields.pop("declared_by")
            declared_at = from_us(at)
            assert declared_at is not None
            last = newest.get(name, [None])[0]
            records.append(spi.ScheduleRecord(spi.ScheduleSpec(name, **fields), declared_at, declared_by, last))
        return records

    def fire_history(self, query: spi.FireHistoryQuery) -> list[spi.FireRecord]:
        """The schedule's fires, newest slot first, from every queue it fired into."""
        self._require_schema()
        return self._fires([query.schedule], query.limit).get(query.schedule, [])

    def _fires(self, names: Sequence[str], limit: int) -> dict[str, list[spi.FireRecord]]:
        """The newest ``limit`` fires of each named schedule, newest slot first: one read script per queue."""
        if not names:
            return {}
        calls = [self._call("fires", tag, str(limit), *names) for tag in self._queue_tags(None)]
        found: dict[str, list[spi.FireRecord]] = defaultdict(list)
        for call, reply in zip(calls, self.store.run(calls).replies, strict=True):
            tag = _tag_of(call, self.layout)
            for name, rows in zip(reply[::2], reply[1::2], strict=True):
                for member, record in zip(rows[::2], rows[1::2], strict=True):
                    if not record:
                        continue
                    fired_at, number, _nonce = record.split(",", 2)
                    slot_at, when = from_us(member[:17]), from_us(fired_at)
                    assert slot_at is not None and when is not None
                    found[name].append(spi.FireRecord(name, member[17:], slot_at, when, job_id(tag, number)))
        for fires in found.values():
            fires.sort(key=lambda fire: (fire.slot_at, fire.slot), reverse=True)
            del fires[limit:]
        return dict(found)

    # --- waiting ----------------------------------------------------------------------------------------------
    def wakeup_source(self, request: spi.WakeupRequest) -> RedisWakeups:
        """Sharded pub/sub (``SSUBSCRIBE``) on the queues' channels; wakes for the request's job types only."""
        channels = [self.layout.channel(queue_tag(name)) for name in request.queues]
        return RedisWakeups(self.store, channels, request.job_types)


_STATUSES = (JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED)
#: The finished statuses, in the order the stats script counts them.
_FINISHED = (JobStatus.DONE, JobStatus.DEAD, JobStatus.CANCELLED)


def _declaration(spec: spi.ScheduleSpec, worker_id: str) -> str:
    """A schedule's stored declaration: its spec (but the name, the hash field) and who declared it, as JSON."""
    fields = {
        "cron": spec.cron, "timezone": spec.timezone, "job_type": spec.job_type, "queue": spec.queue,
        "priority": spec.priority, "payload_json": spec.payload_json, "catch_up": spec.catch_up,
        "declared_by": worker_id,
    }  # fmt: skip
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _status(reply: Any) -> str | None:
    """The leading status word of a script reply (``OK``, ``NOQUEUE``, ``COLLISION``), if it has one."""
    if isinstance(reply, list) and reply and isinstance(reply[0], str):
        return reply[0]
    return None


def _tag_of(call: Call, layout: Layout) -> str:
    """The queue tag a call is routed to (from its key base ``{PREFIX:TAG}``)."""
    base: str = call.args[0]
    return base[len(layout.prefix) + 2 : -1]


def _chunks(indexes: list[int], sizes: list[int]) -> Iterator[list[int]]:
    """``indexes`` in runs of at most ENQUEUE_CHUNK jobs and ENQUEUE_CHUNK_CHARS payload characters (at least one)."""
    chunk: list[int] = []
    chars = 0
    for index, size in zip(indexes, sizes, strict=True):
        if chunk and (len(chunk) >= ENQUEUE_CHUNK or chars + size > ENQUEUE_CHUNK_CHARS):
            yield chunk
            chunk, chars = [], 0
        chunk.append(index)
        chars += size
    if chunk:
        yield chunk


def _candidates(tag: str, members: Sequence[str]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """A queue's peeked ready jobs (member, score, ...), in claim order, as (claim order key, tag)."""
    for i in range(0, len(members), 2):
        member = members[i]
        yield policy.claim_order_key(-int(float(members[i + 1])), int(member[:17]), (tag, int(member[17:]))), tag


def _pairs(flat: Sequence[Any]) -> dict[str, int]:
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _order_key(tag: str, job: Job) -> tuple[Any, ...]:
    """Claim order of a job of this backend: ids order by (queue tag, job number) where the policy says "then id"."""
    return policy.claim_order_key(job.priority, job.run_at, (tag, int(job.id.rpartition(":")[2])))  # type: ignore[attr-defined]


def _order_key_of_id(value: Hashable) -> tuple[str, int]:
    parsed = parse_job_id(value)
    return ("", 0) if parsed is None else (parsed[0], int(parsed[1]))


def _unlink(node: Any, keys: list[str]) -> None:
    if keys:
        pipe = node.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        pipe.execute()

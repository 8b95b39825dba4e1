"""Moving jobs between any two backends: :func:`transfer`, behind ``polyqueue transfer SRC_URL DST_URL``.

The protocol, one page of jobs at a time, in the source's id order (keyset
pagination: each page costs the same however far the transfer has got):

1. **read** a page of the chosen jobs from the source (``export_jobs``), every
   stored field included (:class:`~polyqueue.job.JobRecord`);
2. **write** it into the destination (``import_jobs``) in one transaction,
   each job carrying an *import key* derived from its identity in the source
   (:func:`import_key`). The destination stores a key at most once and reports
   the job already carrying it;
3. **delete** the page from the source (``delete_jobs``), each job only if it
   is unchanged since step 1 (same status, same lease token).

Why it is resumable with nothing lost and nothing doubled: a job leaves the
source only after its copy is committed in the destination (step 3 after
step 2), so no crash loses one. A crash between 2 and 3 leaves the page on
both sides; the rerun reads the same jobs again, derives the same keys, finds
them in the destination instead of writing them again, and deletes them from
the source. Each step is one transaction on one database, so a crash inside a
step leaves it wholly done or not at all.

Processing jobs are never moved (their worker holds them in the source):
they are left, or with ``wait=True`` the transfer waits for them to end and
moves them if their new status is one of those chosen. A job that changes in
the source between steps 1 and 3 (a worker there claimed it) stays in the
source, and its fresh copy is taken back out of the destination when nothing
has touched it there yet. Stop the source's workers for a clean move: a job
claimed in the source while the transfer is killed between steps 2 and 3 is
on both sides until it finishes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .backends.base import Capability, DeleteRequest, ExportQuery, ImportBatch
from .errors import ConfigurationError, InvalidArgument
from .job import JobRecord, JobStatus
from .queue import Queue
from .validation import check_int, check_queue_name, check_seconds

__all__ = [
    "DEFAULT_STATUSES",
    "MOVABLE_STATUSES",
    "TransferResult",
    "TransferStep",
    "check_statuses",
    "import_key",
    "transfer",
]

log = logging.getLogger("polyqueue.transfer")

#: What ``transfer`` can move: ``pending`` (due now), ``scheduled`` (pending, not yet due), and finished jobs.
MOVABLE_STATUSES = ("pending", "scheduled", "dead", "done", "cancelled")
#: What it moves unless told otherwise: the work still to do, and the dead letters.
DEFAULT_STATUSES = ("pending", "scheduled", "dead")
#: Seconds between looks at the source while waiting for its processing jobs.
WAIT_POLL = 1.0


def import_key(record: JobRecord) -> str:
    """The idempotency marker of a job moved out of its source: 32 hex digits.

    Derived from what identifies the job there and never changes while it
    lives: its id, its creation time, queue, type and payload. A rerun
    derives the same key for the same job, whatever URL spelling reaches the
    source; a job that reuses a deleted job's id (SQLite may) has another
    creation time, so another key.
    """
    digest = hashlib.sha256()
    for part in (str(record.id), record.created_at.isoformat(), record.queue, record.job_type, record.payload_json):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


@dataclass(slots=True)
class TransferResult:
    """What a transfer did (or, with ``dry_run``, would do).

    ``moved`` counts jobs now in the destination and gone from the source,
    of which ``resumed`` had been written by an earlier, interrupted run;
    ``by_status`` splits ``moved`` by the statuses of :data:`MOVABLE_STATUSES`.
    ``skipped`` maps source ids left in the source to why: their dedupe key is
    held in the destination, or they changed in the source while moving.
    ``processing`` is how many processing jobs were left in the source.
    """

    moved: int = 0
    resumed: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    skipped: dict[Hashable, str] = field(default_factory=dict)
    processing: int = 0
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class TransferStep:
    """Where a transfer is, for progress displays and tests.

    ``phase`` is ``written`` once a page is committed in the destination,
    ``moved`` once it is also gone from the source, ``counted`` for a page a
    dry run counted. ``page`` is how many jobs the page held; ``result`` is
    the running total.
    """

    phase: str
    page: int
    result: TransferResult


def transfer(
    source: Queue,
    destination: Queue,
    *,
    queue: str | None = None,
    statuses: Iterable[str] = DEFAULT_STATUSES,
    batch_size: int = 1000,
    dry_run: bool = False,
    wait: bool = False,
    wait_timeout: float | None = None,
    on_step: Callable[[TransferStep], None] | None = None,
    migrate_destination: bool = False,
) -> TransferResult:
    """Move jobs from ``source`` to ``destination`` (two queues on any backends), resumably; see the module docstring.

    ``queue`` moves one queue only; ``statuses`` chooses among
    :data:`MOVABLE_STATUSES`; ``batch_size`` jobs travel per page. ``dry_run``
    only counts what would move. ``wait`` waits (up to ``wait_timeout``
    seconds, else until none is left) for the source's processing jobs to
    end, and moves those that end in a chosen status. ``on_step`` sees each
    :class:`TransferStep`. ``migrate_destination`` creates the destination's
    tables first (not on a dry run). Every field of a job travels: type,
    payload, priority, run_at, attempts, max_attempts, dedupe key and hold,
    error history, result and times; the destination issues new ids.
    Raises :class:`ConfigurationError` when either backend cannot move jobs
    or both name the same queue database, :class:`InvalidArgument` for bad
    arguments; nothing is moved (or created) then.
    """
    chosen = check_statuses(statuses)
    name = None if queue is None else check_queue_name(queue)
    size = check_int(batch_size, "batch_size", 1, 10_000)
    patience = None if wait_timeout is None else check_seconds(wait_timeout, "wait_timeout")
    for side, q in (("source", source), ("destination", destination)):
        if not isinstance(q, Queue):
            raise InvalidArgument(f"the {side} must be a polyqueue.Queue, got {type(q).__name__}")
        q.require_capability(Capability.TRANSFER, f"job transfers (as the {side})")
    if _identity(source) == _identity(destination):
        raise ConfigurationError(f"source and destination are the same queue database: {source.backend.describe()}")
    if migrate_destination and not dry_run:
        destination.migrate()
    mover = _Mover(source, destination, name, chosen, size, dry_run, on_step)
    mover.run_pass()
    deadline = None if patience is None else time.monotonic() + patience
    while wait and not dry_run and mover.processing_left():
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(WAIT_POLL if deadline is None else max(0.0, min(WAIT_POLL, deadline - time.monotonic())))
        mover.run_pass()
    mover.result.processing = mover.processing_left()
    return mover.result


def check_statuses(statuses: Iterable[str]) -> frozenset[str]:
    """The chosen statuses (an iterable, or comma-separated text) among :data:`MOVABLE_STATUSES`, checked."""
    if isinstance(statuses, str):
        statuses = [part.strip() for part in statuses.split(",") if part.strip()]
    chosen = frozenset(statuses)
    if not chosen:
        raise InvalidArgument("statuses must name at least one of " + ", ".join(MOVABLE_STATUSES))
    if JobStatus.PROCESSING in chosen:
        raise InvalidArgument("processing jobs are held by their workers and never moved; wait=True waits for them")
    unknown = sorted(str(s) for s in chosen - set(MOVABLE_STATUSES))
    if unknown:
        raise InvalidArgument(f"unknown status(es) {unknown}; choose from {', '.join(MOVABLE_STATUSES)}")
    return chosen


def _identity(q: Queue) -> tuple[str, str]:
    """What names one queue database: the backend's description (no password) and the table prefix."""
    return (q.backend.describe(), str(q.options.get("table_prefix", "")))


class _Mover:
    """One transfer's state: the running result, and one pass over the source at a time."""

    def __init__(
        self,
        source: Queue,
        destination: Queue,
        queue: str | None,
        chosen: frozenset[str],
        batch_size: int,
        dry_run: bool,
        on_step: Callable[[TransferStep], None] | None,
    ) -> None:
        self.src, self.dst = source.backend, destination.backend
        self.queue = queue
        self.chosen = chosen
        self.stored = frozenset({JobStatus.PENDING if s in ("pending", "scheduled") else s for s in chosen})
        self.batch_size = batch_size
        self.result = TransferResult(dry_run=dry_run)
        self.on_step = on_step
        self.source = source

    def processing_left(self) -> int:
        """Processing jobs of the chosen queue still in the source."""
        return int(self.source.stats(self.queue)["processing"])

    def _step(self, phase: str, page: int) -> None:
        if self.on_step is not None:
            self.on_step(TransferStep(phase, page, self.result))

    def _wanted(self, record: JobRecord, now: datetime) -> str | None:
        """The transfer status a record counts as (``pending`` splits by due time), or None if not chosen."""
        status = record.status
        if status == JobStatus.PENDING:
            status = "scheduled" if record.run_at > now else "pending"
        return status if status in self.chosen else None

    def run_pass(self) -> None:
        """Move every chosen job the source holds now, page by page from its first id."""
        after: Hashable | None = None
        while True:
            page = self.src.export_jobs(ExportQuery(self.stored, self.queue, after, self.batch_size))
            if not page:
                return
            after = page[-1].id
            now = self.src.db_now()
            kinds: dict[int, str] = {}
            records: list[JobRecord] = []
            for record in page:
                kind = self._wanted(record, now)
                if kind is not None:
                    kinds[len(records)] = kind
                    records.append(dataclasses.replace(record, import_key=import_key(record)))
            if not records:
                continue
            if self.result.dry_run:
                self.result.moved += len(records)
                self.result.by_status.update(kinds.values())
                self._step("counted", len(records))
                continue
            self._move(records, kinds)

    def _move(self, records: list[JobRecord], kinds: dict[int, str]) -> None:
        written = self.dst.import_jobs(ImportBatch(records))
        for i, reason in written.skipped.items():
            self.result.skipped[records[i].id] = reason
        self._step("written", len(records))
        landed = [i for i, dst_id in enumerate(written.ids) if dst_id is not None]
        deleted = self.src.delete_jobs(DeleteRequest([records[i] for i in landed]))
        changed: list[JobRecord] = []
        for i in landed:
            record = records[i]
            if record.id in deleted:
                self.result.moved += 1
                self.result.resumed += int(i in written.existing)
                self.result.by_status[kinds[i]] += 1
            else:
                changed.append(dataclasses.replace(record, id=written.ids[i]))
                self.result.skipped[record.id] = "it changed in the source while moving (a worker there claimed it)"
        if changed:
            self._take_back(changed)
        self._step("moved", len(records))

    def _take_back(self, copies: list[JobRecord]) -> None:
        """Remove the destination copies of jobs that stayed in the source, where nothing has touched them yet."""
        removed = self.dst.delete_jobs(DeleteRequest(copies))
        for copy in copies:
            if copy.id not in removed:
                log.warning(
                    "job %s of queue %r changed in the source while moving, and its copy %s in the destination "
                    "was already taken by a worker there: it may run on both sides",
                    copy.import_key, copy.queue, copy.id,
                )  # fmt: skip

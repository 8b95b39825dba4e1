"""Where a queue database keeps its data in Redis: key names, hash tags, job ids and the stored job fields.

Every key of one queue shares one hash tag, ``{PREFIX:TAG}``, so a queue
lives in one cluster slot and every change to it can be one Lua script.
``TAG`` is the queue name itself when it is short and plain
(``[A-Za-z0-9_.-]{1,64}``), else ``~`` and 20 hex digits of its BLAKE2b hash
(a queue's meta hash records the full name, and a second name with the same
hash is refused). The keys of the database as a whole (schema version, queue
registry, lease index, periodic schedules) share the tag ``{PREFIX}``.

Per queue, under ``{PREFIX:TAG}``:

========================  =====================================================================
``:m``                    meta hash: ``name`` (the queue name), ``seq`` (the last job number)
``:j:N``                  job N, a hash of the :data:`FIELDS`
``:types``                set: every job type the queue has had
``:r:TYPE``               ready jobs (pending, due): sorted set, score -priority, member
                          ``run_at`` (17 digits of microseconds) + N (19 digits), so Redis's
                          order (score, then member bytes) is the policy's claim order
``:d:TYPE``               delayed jobs (pending, not yet due): sorted set of N by ``run_at``
``:l``, ``:l:TYPE``       processing jobs: sorted set of N by ``lease_expires_at``
``:f:STATUS``             finished jobs (done, dead, cancelled): sorted set of N by ``finished_at``
``:ct``                   finished jobs by ``STATUS|TYPE`` (the other counts are the sets' sizes)
``:u:KEY``                a dedupe key, holding the number N of the job that holds it: a live
                          job, or a done or dead one until its ``dedupe_held_until``
                          (field ``hu``); an ended hold is taken over by the next taker
``:ik``                   hash: import key -> N of the jobs ``import_jobs`` stored
``:b:BATCH``              ids an enqueue batch got (expires): a resent enqueue returns them
``:k:TOKEN``              job numbers a claim took (expires with the lease): a resent claim returns them
``:x:NONCE``              job numbers a transfer's delete took (expires): a resent delete returns them
``:w``                    sharded pub/sub channel: the job types just made ready
``:sn``                   set: the periodic schedules that fired into this queue
``:sf:SCHEDULE``          hash: a fired slot of the schedule -> ``fired_at (us),job number,nonce``;
                          the field is what makes a ``(schedule, slot)`` fire once in the queue
``:ss:SCHEDULE``          sorted set (all scores 0): the schedule's fired slots as ``slot_at``
                          (17 digits of microseconds) + slot key, so lexical order is slot order
========================  =====================================================================

A schedule's fires live with the queue its jobs go to, so a fire stores its
record and its job in one script. The declared schedules are the database's:
``{PREFIX}:schedules``, a hash of schedule name -> ``declared_at (us),JSON``
(the spec and who declared it).

Ready and delayed jobs are kept per type only: a claim of some types never
touches the others, and a worker claims the types it has handlers for. A
claim, count or probe of every type goes over the queue's ``:types``.

Job ids are ``TAG:N`` (``emails:42``): text naming its queue's slot and its number.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from polyqueue import json_codec
from polyqueue.job import Job, JobRecord

__all__ = [
    "FIELDS",
    "MAX_TIME_US",
    "Layout",
    "decode_job",
    "decode_record",
    "from_us",
    "job_id",
    "parse_job_id",
    "queue_tag",
    "to_us",
]

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
_TAG = re.compile(r"(?:[A-Za-z0-9_.\-]{1,64}|~[0-9a-f]{20})\Z")
_NUMBER = re.compile(r"[1-9][0-9]{0,18}\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: Times are kept as microseconds since the epoch in 17 digits (until the year 5138).
MAX_TIME_US = 10**17 - 1

#: The fields of a stored job, in the order every script returns them (HMGET).
FIELDS = (
    "q",  # queue name
    "t",  # job type
    "p",  # payload (JSON text)
    "pr",  # priority
    "s",  # status
    "a",  # attempts
    "ma",  # max_attempts
    "ra",  # run_at (us)
    "ca",  # created_at (us)
    "fa",  # finished_at (us)
    "lb",  # locked_by
    "le",  # lease_expires_at (us)
    "er",  # last_error
    "dk",  # dedupe_key
    "rs",  # result (JSON text)
    "tk",  # lease token (decimal text)
    "eh",  # error history (JSON text)
    "df",  # dedupe_for (seconds, decimal text)
    "hu",  # dedupe_held_until (us): a done or dead job holds its dedupe key until then
    "ik",  # import key (a job ``polyqueue transfer`` brought here)
)


def queue_tag(name: str) -> str:
    """The hash-tag text of a queue: its name when short and plain, else ``~`` + 20 hex digits of its hash."""
    if _PLAIN_NAME.match(name):
        return name
    return "~" + hashlib.blake2b(name.encode("utf-8"), digest_size=10).hexdigest()


def job_id(tag: str, number: str) -> str:
    """The id of job ``number`` of the queue with ``tag``."""
    return f"{tag}:{number}"


def parse_job_id(value: Any) -> tuple[str, str] | None:
    """``(tag, number)`` of a job id this backend could have issued, else None."""
    if not isinstance(value, str):
        return None
    tag, _, number = value.rpartition(":")
    if not _TAG.match(tag) or not _NUMBER.match(number):
        return None
    return tag, number


def to_us(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch."""
    return (moment - _EPOCH) // _MICROSECOND


def from_us(value: Any) -> datetime | None:
    """Stored microseconds (text or int) as an aware UTC datetime; None stays None."""
    return None if value is None or value == "" else _EPOCH + _MICROSECOND * int(value)


@dataclass(frozen=True)
class Layout:
    """The key names of one queue database (one ``table_prefix``)."""

    prefix: str

    @property
    def database(self) -> str:
        """The hash tag of the database-wide keys."""
        return "{" + self.prefix + "}"

    @property
    def schema(self) -> str:
        """String: the schema version ``migrate`` wrote."""
        return self.database + ":schema"

    @property
    def queues(self) -> str:
        """Hash: tag -> queue name of every queue that ever had a job."""
        return self.database + ":queues"

    @property
    def schedules(self) -> str:
        """Hash: schedule name -> ``declared_at (us),JSON`` of each declared periodic schedule."""
        return self.database + ":schedules"

    @property
    def leases(self) -> str:
        """Sorted set: tag -> a moment (us) at or before which the queue's earliest lease expires."""
        return self.database + ":leases"

    def base(self, tag: str) -> str:
        """The common start of every key of the queue with ``tag``."""
        return "{" + self.prefix + ":" + tag + "}"

    def meta(self, tag: str) -> str:
        """The queue's meta hash: the key every script of that queue is routed by."""
        return self.base(tag) + ":m"

    def channel(self, tag: str) -> str:
        """The queue's sharded pub/sub channel."""
        return self.base(tag) + ":w"

    def patterns(self) -> tuple[str, str]:
        """SCAN patterns matching every key of this database and no other prefix's."""
        return self.database + "*", "{" + self.prefix + ":*"


def decode_job(tag: str, number: str, fields: list[Any]) -> Job:
    """A :class:`Job` from the stored :data:`FIELDS` (in their order) of job ``number`` of queue ``tag``."""
    q, t, p, pr, s, a, ma, ra, ca, fa, lb, le, er, dk, rs, tk, eh, df, _hu, _ik = fields
    return Job(
        id=f"{tag}:{number}",
        queue=q,
        job_type=t,
        payload=_loads(p),
        priority=int(pr),
        status=s,
        attempts=int(a),
        max_attempts=int(ma),
        run_at=_EPOCH + _MICROSECOND * int(ra),
        created_at=_EPOCH + _MICROSECOND * int(ca),
        finished_at=None if fa is None else _EPOCH + _MICROSECOND * int(fa),
        locked_by=lb,
        lease_expires_at=None if le is None else _EPOCH + _MICROSECOND * int(le),
        last_error=er,
        dedupe_key=dk,
        result=None if rs is None else _loads(rs),
        lease_token=int(tk) if tk else 0,
        errors=_loads(eh) if eh else [],
        dedupe_for=float(df) if df else None,
    )


def decode_record(tag: str, number: str, fields: list[Any]) -> JobRecord:
    """A :class:`JobRecord` (every stored field, for ``export_jobs``) from the stored :data:`FIELDS` of job N."""
    q, t, p, pr, s, a, ma, ra, ca, fa, _lb, _le, er, dk, rs, tk, eh, df, hu, ik = fields
    run_at, created_at = from_us(ra), from_us(ca)
    assert run_at is not None and created_at is not None
    return JobRecord(
        id=f"{tag}:{number}",
        queue=q,
        job_type=t,
        payload_json=p,
        priority=int(pr),
        status=s,
        attempts=int(a),
        max_attempts=int(ma),
        run_at=run_at,
        created_at=created_at,
        finished_at=from_us(fa),
        last_error=er,
        errors_json=eh or None,
        result_json=rs,
        dedupe_key=dk,
        dedupe_for=float(df) if df else None,
        dedupe_held_until=from_us(hu),
        lease_token=int(tk) if tk else 0,
        import_key=ik,
    )


_loads = json_codec.loads

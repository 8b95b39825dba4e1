"""polyqueue: a job queue in the database you already have.

>>> import polyqueue
>>> q = polyqueue.connect("sqlite:///polyqueue.db")
>>> q.migrate()
>>> job_id = q.enqueue("send_email", {"to": "a@example.com"})
"""

from __future__ import annotations

from .errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    InvalidPayload,
    JobNotFound,
    LeaseLost,
    PayloadTooLarge,
    PolyqueueError,
    SchemaMissing,
)
from .hookspecs import hookimpl
from .job import Job, JobRecord, JobStatus
from .moving import TransferResult, transfer
from .queue import DEFAULT_URL, Queue, connect
from .worker import Worker

__all__ = [
    "DEFAULT_URL",
    "BackendUnavailable",
    "ConfigurationError",
    "InvalidArgument",
    "InvalidPayload",
    "Job",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "LeaseLost",
    "PayloadTooLarge",
    "PolyqueueError",
    "Queue",
    "SchemaMissing",
    "TransferResult",
    "Worker",
    "connect",
    "hookimpl",
    "transfer",
]

__version__ = "0.1.0"

"""polyqueue: a job queue in the database you already have.

>>> import polyqueue
>>> q = polyqueue.connect("sqlite:///polyqueue.db")
>>> q.migrate()
>>> job_id = q.enqueue("send_email", {"to": "a@example.com"})

asyncio code uses ``polyqueue.connect_async(url)``, an :class:`AsyncQueue`
with the same methods as coroutines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    BackendUnavailable,
    ConfigurationError,
    InvalidArgument,
    InvalidPayload,
    JobCancelled,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    PayloadTooLarge,
    PolyqueueError,
    SchemaMismatch,
    SchemaMissing,
)
from .hookspecs import hookimpl
from .job import Job, JobRecord, JobStatus, QueueLimits, QueueSettings
from .moving import TransferResult, transfer
from .queue import DEFAULT_URL, Queue, connect
from .worker import Worker

if TYPE_CHECKING:
    from .async_queue import AsyncQueue, connect_async

__all__ = [
    "DEFAULT_URL",
    "AsyncQueue",
    "BackendUnavailable",
    "ConfigurationError",
    "InvalidArgument",
    "InvalidPayload",
    "Job",
    "JobCancelled",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "JobTimeout",
    "LeaseLost",
    "PayloadTooLarge",
    "PolyqueueError",
    "Queue",
    "QueueLimits",
    "QueueSettings",
    "SchemaMismatch",
    "SchemaMissing",
    "TransferResult",
    "Worker",
    "connect",
    "connect_async",
    "hookimpl",
    "transfer",
]

__version__ = "0.1.0"

#: Names imported on first use: asyncio support loads asyncio, which ``import polyqueue`` need not.
_LAZY = {"AsyncQueue": "async_queue", "connect_async": "async_queue"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'polyqueue' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

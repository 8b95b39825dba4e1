"""The module the ``polyqueue`` entry point ``otel`` names: hooks feeding :func:`default_tracing`.

Loading it by name (``plugins=["otel"]`` or ``POLYQUEUE_PLUGINS=otel``) registers
these functions; spans go to the global tracer provider, read when first used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polyqueue
from polyqueue.job import NewJob

from .tracing import default_tracing


@polyqueue.hookimpl
def polyqueue_enqueue_headers(
    queue: Any, job_type: str, queue_name: str, headers: Mapping[str, str]
) -> Mapping[str, str] | None:
    """Start a publish span; its trace context becomes the job's headers."""
    return default_tracing().polyqueue_enqueue_headers(
        queue=queue, job_type=job_type, queue_name=queue_name, headers=headers
    )


@polyqueue.hookimpl
def polyqueue_job_enqueued(job_ids: Sequence[Any], jobs: Sequence[NewJob]) -> None:
    """End the publish spans of the jobs stored."""
    default_tracing().polyqueue_job_enqueued(job_ids=job_ids, jobs=jobs)


@polyqueue.hookimpl
def polyqueue_job_started(queue: Any, job: polyqueue.Job) -> None:
    """Start the attempt's process span."""
    default_tracing().polyqueue_job_started(queue=queue, job=job)


@polyqueue.hookimpl
def polyqueue_job_succeeded(queue: Any, job: polyqueue.Job, duration: float) -> None:
    """End the attempt's span."""
    default_tracing().polyqueue_job_succeeded(queue=queue, job=job, duration=duration)


@polyqueue.hookimpl
def polyqueue_job_failed(queue: Any, job: polyqueue.Job, error: str, retry_in: float | None) -> None:
    """End the attempt's span with status ERROR and the exception."""
    default_tracing().polyqueue_job_failed(queue=queue, job=job, error=error, retry_in=retry_in)


@polyqueue.hookimpl
def polyqueue_job_cancelled(queue: Any, job: polyqueue.Job) -> None:
    """End the span of an attempt cancelled while it ran."""
    default_tracing().polyqueue_job_cancelled(queue=queue, job=job)

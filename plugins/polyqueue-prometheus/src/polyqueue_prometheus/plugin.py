"""The module the ``polyqueue`` entry point ``prometheus`` names: hooks feeding :func:`default_metrics`.

Loading it by name (``plugins=["prometheus"]``) registers these functions; the
metrics instance and its registry are created on first use, not at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polyqueue

from .metrics import default_metrics


@polyqueue.hookimpl
def polyqueue_job_enqueued(job_ids: Sequence[Any], queue_names: Sequence[str]) -> None:
    """Count enqueued jobs."""
    default_metrics().polyqueue_job_enqueued(job_ids=job_ids, queue_names=queue_names)


@polyqueue.hookimpl
def polyqueue_job_started(job: polyqueue.Job) -> None:
    """Count a started job and note when it started."""
    default_metrics().polyqueue_job_started(job=job)


@polyqueue.hookimpl
def polyqueue_job_succeeded(job: polyqueue.Job, duration: float) -> None:
    """Count a success and observe its duration."""
    default_metrics().polyqueue_job_succeeded(job=job, duration=duration)


@polyqueue.hookimpl
def polyqueue_job_failed(job: polyqueue.Job, error: str, retry_in: float | None) -> None:
    """Count a failed attempt and observe its duration."""
    default_metrics().polyqueue_job_failed(job=job, error=error, retry_in=retry_in)


@polyqueue.hookimpl
def polyqueue_job_dead(job: polyqueue.Job, error: str) -> None:
    """Count a dead-lettered job."""
    default_metrics().polyqueue_job_dead(job=job, error=error)

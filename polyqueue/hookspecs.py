"""Hook specifications: how backends are discovered and how plugins observe job lifecycles.

Built-in backends register through ``polyqueue_backends`` exactly as a
third-party package does (see :mod:`polyqueue.backends.builtin`). Third-party
packages expose a module under the entry-point group ``polyqueue`` whose
name is the URL scheme they serve; it is imported only when a URL asks for it.
Lifecycle hooks are called only when some plugin implements them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

from .job import Job, NewJob

#: The ``polyqueue.Queue`` a lifecycle hook is called for (typed loosely: the hook specs sit below the Queue).
QueueArg = Any

hookspec = pluggy.HookspecMarker("polyqueue")
hookimpl = pluggy.HookimplMarker("polyqueue")

__all__ = ["hookimpl", "hookspec"]


@hookspec
def polyqueue_backends() -> Mapping[str, Any] | None:
    """Return ``{scheme: backend_class}`` for the URL schemes this plugin serves.

    The scheme is the part of the URL before ``+driver`` (``postgresql`` for
    ``postgresql+psycopg://``). A backend class takes ``(url, options)``;
    importing it must not import its database driver.
    """


@hookspec
def polyqueue_enqueue_headers(
    queue: QueueArg, job_type: str, queue_name: str, headers: Mapping[str, str]
) -> Mapping[str, str] | None:
    """Return headers to add to a job about to be stored (trace context, tenant), or None.

    Called once per valid job, before anything is stored, with the caller's own
    ``headers`` (empty if none; do not change them). The results of every
    plugin are merged; on a clash the caller's own headers win. The merged
    headers are validated as a caller's are. A hook that raises is logged and
    ignored: it never makes an enqueue fail.
    """


@hookspec
def polyqueue_job_enqueued(
    queue: QueueArg, job_ids: Sequence[Any], queue_names: Sequence[str], jobs: Sequence[NewJob]
) -> None:
    """Jobs were committed (or written into a caller's transaction).

    ``jobs`` are those jobs as they were stored (queue, job type, headers as
    JSON text), in the order of ``job_ids``; with a held dedupe key, a job's
    id is the holding job's. A plugin may take any subset of these arguments.
    """


@hookspec
def polyqueue_job_started(queue: QueueArg, job: Job) -> None:
    """A worker is about to run ``job``'s handler."""


@hookspec
def polyqueue_job_succeeded(queue: QueueArg, job: Job, duration: float) -> None:
    """``job``'s handler returned; the job is (being) marked done."""


@hookspec
def polyqueue_job_failed(queue: QueueArg, job: Job, error: str, retry_in: float | None) -> None:
    """``job``'s attempt failed; it will be retried in ``retry_in`` seconds, or None if it is dead."""


@hookspec
def polyqueue_job_dead(queue: QueueArg, job: Job, error: str) -> None:
    """``job`` was dead-lettered after its final attempt (or ``dead=True``)."""


@hookspec
def polyqueue_job_cancelled(queue: QueueArg, job: Job) -> None:
    """``job`` was cancelled while it ran (``cancel(id)`` reached its worker); it is never retried."""

"""OpenTelemetry spans from polyqueue's hooks: ``<queue> publish`` per enqueue, ``<queue> process`` per attempt.

The producer span's W3C trace context (``traceparent``/``tracestate``) is put
into the job's headers before it is stored (``polyqueue_enqueue_headers``), so
it survives retries, replay and process boundaries; the consumer span of each
attempt is that context's child and links to it. Attribute names follow the
OpenTelemetry messaging semantic conventions.
"""

from __future__ import annotations

import contextvars
import json
import sys
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

import polyqueue
from polyqueue.job import NewJob

__all__ = ["OpenTelemetryTracing", "default_tracing"]

SYSTEM = "polyqueue"
#: Instrumentation scope name of every span this plugin makes.
SCOPE = "polyqueue_otel"
#: Seconds after which a publish span whose job was never reported stored is ended as "not stored"
#: (its enqueue failed after the span began: a later job of its batch was invalid, the store was down).
UNSTORED_AFTER = 300.0

# The consumer span made current while a handler runs, and the token that undoes it, in the
# handler's own context (its thread, or its asyncio task): spans the handler makes are children.
_attached: contextvars.ContextVar[tuple[Span, object] | None] = contextvars.ContextVar(
    "polyqueue_otel_attached", default=None
)


class OpenTelemetryTracing:
    """A polyqueue plugin: register an instance with ``polyqueue.connect(url, plugins=[tracing])``.

    ``tracer_provider`` defaults to the global one (``trace.set_tracer_provider``);
    ``propagator`` to the global text-map propagator (W3C trace context and baggage).
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, propagator: TextMapPropagator | None = None
    ) -> None:
        from . import __version__

        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self._propagator = propagator
        self._lock = threading.Lock()
        # Publish spans of jobs built but not yet reported stored, by span id, oldest first.
        self._publishing: dict[int, tuple[Span, float]] = {}
        self._running: dict[tuple[int, Hashable], Span] = {}

    @property
    def propagator(self) -> TextMapPropagator:
        """The propagator that writes and reads the trace context in ``Job.headers``."""
        return self._propagator if self._propagator is not None else propagate.get_global_textmap()

    # --- producing -------------------------------------------------------------------------------
    @polyqueue.hookimpl
    def polyqueue_enqueue_headers(
        self, queue: Any, job_type: str, queue_name: str, headers: Mapping[str, str]
    ) -> Mapping[str, str] | None:
        """Start the job's ``<queue> publish`` span and return its trace context as headers.

        A caller who gave a trace context of its own keeps it, and no publish span is made.
        """
        propagator = self.propagator
        if any(name in headers for name in propagator.fields):
            return None
        span = self._tracer.start_span(
            f"{queue_name} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": queue_name,
                "messaging.operation.name": "publish",
                "messaging.operation.type": "send",
                "polyqueue.job.type": job_type,
            },
        )
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=trace.set_span_in_context(span))
        now = time.monotonic()
        with self._lock:
            stale = self._stale_publishing(now)
            self._publishing[span.get_span_context().span_id] = (span, now)
        self._end_unstored(stale)
        return carrier

    @polyqueue.hookimpl
    def polyqueue_job_enqueued(self, job_ids: Sequence[Any], jobs: Sequence[NewJob]) -> None:
        """End the publish spans of the jobs just stored, each with its job's id.

        Each job's span is found by the span id in its stored ``traceparent``, so concurrent enqueues
        (threads, asyncio tasks, greenlets) never swap spans.
        """
        with self._lock:
            if not self._publishing:
                return
        for job_id, job in zip(job_ids, jobs, strict=True):
            span = self._publishing_span(job.headers_json)
            if span is not None:
                span.set_attribute("messaging.message.id", str(job_id))
                span.end()

    def _publishing_span(self, headers_json: str | None) -> Span | None:
        if not headers_json:
            return None
        context = self.propagator.extract(json.loads(headers_json))
        span_id = trace.get_current_span(context).get_span_context().span_id
        with self._lock:
            found = self._publishing.pop(span_id, None)
        return None if found is None else found[0]

    def _stale_publishing(self, now: float) -> list[Span]:
        """Under the lock: publish spans of jobs never stored (their call failed after the span began)."""
        stale: list[Span] = []
        for span_id, (span, started) in list(self._publishing.items()):
            if now - started < UNSTORED_AFTER:
                break  # oldest first: the rest are younger
            del self._publishing[span_id]
            stale.append(span)
        return stale

    @staticmethod
    def _end_unstored(spans: list[Span]) -> None:
        for span in spans:
            span.set_status(Status(StatusCode.ERROR, "not stored"))
            span.end()

    # --- consuming -------------------------------------------------------------------------------
    @polyqueue.hookimpl
    def polyqueue_job_started(self, queue: Any, job: polyqueue.Job) -> None:
        """Start the attempt's ``<queue> process`` span, a child of (and linked to) the publish span."""
        parent = self.propagator.extract(job.headers or {})
        producer = trace.get_current_span(parent).get_span_context()
        span = self._tracer.start_span(
            f"{job.queue} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=[Link(producer)] if producer.is_valid else None,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": job.queue,
                "messaging.message.id": str(job.id),
                "messaging.operation.name": "process",
                "messaging.operation.type": "process",
                "polyqueue.job.type": job.job_type,
                "polyqueue.job.attempt": job.attempts,
                "polyqueue.job.max_attempts": job.max_attempts,
            },
        )
        with self._lock:
            unseen = self._running.pop((id(queue), job.id), None)
            self._running[(id(queue), job.id)] = span
        if unseen is not None:
            # This process ran an earlier attempt whose end it never saw (its lease was lost).
            unseen.set_status(Status(StatusCode.ERROR, "attempt ended unseen (lease lost)"))
            unseen.end()
        self._make_current(span)

    @polyqueue.hookimpl
    def polyqueue_job_succeeded(self, queue: Any, job: polyqueue.Job, duration: float) -> None:
        """End the attempt's span (status left unset, as the conventions ask for success)."""
        span = self._take(queue, job)
        if span is not None:
            span.end()

    @polyqueue.hookimpl
    def polyqueue_job_failed(self, queue: Any, job: polyqueue.Job, error: str, retry_in: float | None) -> None:
        """End the attempt's span with status ERROR and the exception recorded."""
        span = self._take(queue, job)
        if span is None:
            return
        span.set_attribute("polyqueue.job.dead", retry_in is None)
        if retry_in is not None:
            span.set_attribute("polyqueue.job.retry_in", float(retry_in))
        summary = error.split("\n", 1)[0]
        exc = sys.exception()
        if exc is not None and summary.startswith(f"{type(exc).__name__}:"):
            span.record_exception(exc)  # the handler's own exception, with its traceback
        else:
            # Recorded off the handler's thread (an async handler's failure, a timeout): only its text is here.
            kind, _, message = summary.partition(": ")
            attributes = {"exception.type": kind, "exception.message": message} if message else {}
            span.add_event(
                "exception",
                {**attributes, "exception.stacktrace": error} if attributes else {"exception.message": error},
            )
        span.set_status(Status(StatusCode.ERROR, summary))
        span.end()

    @polyqueue.hookimpl
    def polyqueue_job_cancelled(self, queue: Any, job: polyqueue.Job) -> None:
        """End the attempt's span of a job cancelled while it ran (an event, not an error: it was asked for)."""
        span = self._take(queue, job)
        if span is not None:
            span.add_event("polyqueue.job.cancelled")
            span.end()

    def _take(self, queue: Any, job: polyqueue.Job) -> Span | None:
        with self._lock:
            span = self._running.pop((id(queue), job.id), None)
        if span is not None:
            self._release_current(span)
        return span

    @staticmethod
    def _make_current(span: Span) -> None:
        # A span left current by an attempt that ended elsewhere (a timeout settled by the
        # supervisor) is undone here, in the thread that made it current, before the next.
        leftover = _attached.get()
        if leftover is not None:
            OpenTelemetryTracing._release_current(leftover[0])
        token = otel_context.attach(trace.set_span_in_context(span))
        _attached.set((span, token))

    @staticmethod
    def _release_current(span: Span) -> None:
        attached = _attached.get()
        if attached is None or attached[0] is not span:
            return  # ended from another thread or task: the context it was made current in is not this one
        _attached.set(None)
        otel_context.detach(attached[1])  # type: ignore[arg-type]


_default: OpenTelemetryTracing | None = None
_default_lock = threading.Lock()


def default_tracing() -> OpenTelemetryTracing:
    """The process-wide instance the ``otel`` entry point uses (global tracer provider and propagator)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = OpenTelemetryTracing()
        return _default

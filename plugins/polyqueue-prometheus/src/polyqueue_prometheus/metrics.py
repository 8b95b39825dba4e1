"""The metrics: counters per queue and job type, and a histogram of handler durations.

Exported names (with the default ``namespace="polyqueue"``):

* ``polyqueue_jobs_enqueued_total{queue}``: ids returned by enqueue calls
  (a deduplicated enqueue counts too: it returned an id). A batch spanning
  several queues counts under ``queue="(several)"``, since the hook is told the
  batch's queue names but not how many jobs went to each.
* ``polyqueue_jobs_started_total{queue,job_type}``
* ``polyqueue_jobs_succeeded_total{queue,job_type}``
* ``polyqueue_jobs_failed_total{queue,job_type,retry}``: ``retry="true"`` when
  the job will run again, ``"false"`` when the failure dead-lettered it.
* ``polyqueue_jobs_dead_total{queue,job_type}``
* ``polyqueue_job_duration_seconds{queue,job_type,outcome}``: handler run time,
  ``outcome`` ``succeeded`` or ``failed``.

Hooks run on the worker's threads, so everything here is thread-safe and cheap.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

import polyqueue

__all__ = [
    "DEFAULT_BUCKETS",
    "PrometheusMetrics",
    "QueueStateCollector",
    "dashboard_registry",
    "default_metrics",
]

#: Histogram buckets from 5 ms to 10 min: queue handlers range from cache refreshes to reports.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Label used for an enqueue batch that spans several queues.
SEVERAL_QUEUES = "(several)"
#: Start times kept for failure durations; jobs released unrun never report back, so the map is bounded.
_MAX_TRACKED = 100_000


class PrometheusMetrics:
    """A polyqueue lifecycle plugin exporting job metrics to a Prometheus ``CollectorRegistry``.

    Pass the instance in ``polyqueue.connect(url, plugins=[metrics])``; one
    instance may serve several queues. ``registry`` defaults to a new registry
    of its own (so nothing is added to prometheus_client's global ``REGISTRY``
    unless you pass it); expose it with e.g.
    ``prometheus_client.start_http_server(9100, registry=metrics.registry)``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "polyqueue",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        job_labels = ("queue", "job_type")
        self.enqueued = Counter(
            "jobs_enqueued",
            "Job ids returned by enqueue calls.",
            ("queue",),
            namespace=namespace,
            registry=self.registry,
        )
        self.started = Counter(
            "jobs_started",
            "Jobs whose handler a worker started.",
            job_labels,
            namespace=namespace,
            registry=self.registry,
        )
        self.succeeded = Counter(
            "jobs_succeeded", "Jobs whose handler returned.", job_labels, namespace=namespace, registry=self.registry
        )
        self.failed = Counter(
            "jobs_failed",
            "Failed attempts; retry says whether the job will run again.",
            (*job_labels, "retry"),
            namespace=namespace,
            registry=self.registry,
        )
        self.dead = Counter("jobs_dead", "Jobs dead-lettered.", job_labels, namespace=namespace, registry=self.registry)
        self.duration = Histogram(
            "job_duration_seconds",
            "Handler run time in seconds.",
            (*job_labels, "outcome"),
            namespace=namespace,
            buckets=tuple(buckets),
            registry=self.registry,
        )
        self._started_at: OrderedDict[tuple[Hashable, int], float] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PrometheusMetrics registry={self.registry!r}>"

    @polyqueue.hookimpl
    def polyqueue_job_enqueued(self, job_ids: Sequence[Any], queue_names: Sequence[str]) -> None:
        """Count the ids an enqueue call returned, under its queue."""
        label = queue_names[0] if len(queue_names) == 1 else SEVERAL_QUEUES
        self.enqueued.labels(label).inc(len(job_ids))

    @polyqueue.hookimpl
    def polyqueue_job_started(self, job: polyqueue.Job) -> None:
        """Count the start and remember when it was, for the failure's duration."""
        self.started.labels(job.queue, job.job_type).inc()
        with self._lock:
            self._started_at[(job.id, job.lease_token)] = time.perf_counter()
            if len(self._started_at) > _MAX_TRACKED:
                self._started_at.popitem(last=False)

    @polyqueue.hookimpl
    def polyqueue_job_succeeded(self, job: polyqueue.Job, duration: float) -> None:
        """Count the success and observe the duration the worker measured."""
        self._forget(job)
        self.succeeded.labels(job.queue, job.job_type).inc()
        self.duration.labels(job.queue, job.job_type, "succeeded").observe(duration)

    @polyqueue.hookimpl
    def polyqueue_job_failed(self, job: polyqueue.Job, error: str, retry_in: float | None) -> None:
        """Count the failed attempt; observe its duration when this process saw it start."""
        started = self._forget(job)
        self.failed.labels(job.queue, job.job_type, "false" if retry_in is None else "true").inc()
        if started is not None:
            self.duration.labels(job.queue, job.job_type, "failed").observe(time.perf_counter() - started)

    @polyqueue.hookimpl
    def polyqueue_job_dead(self, job: polyqueue.Job, error: str) -> None:
        """Count the dead-lettering."""
        self.dead.labels(job.queue, job.job_type).inc()

    def _forget(self, job: polyqueue.Job) -> float | None:
        with self._lock:
            return self._started_at.pop((job.id, job.lease_token), None)


@functools.cache
def default_metrics() -> PrometheusMetrics:
    """The process-wide instance the ``prometheus`` entry point feeds, with its own registry."""
    return PrometheusMetrics()


class QueueStateCollector:
    """A ``prometheus_client`` collector reading the queue database at scrape time.

    ``polyqueue_jobs{queue,status}``: jobs per queue and status (``stats()``'s
    keys: ``pending`` counts every pending job, ``scheduled`` those not yet
    due); ``polyqueue_ready_jobs{queue}``: pending and due. The counters of
    :class:`PrometheusMetrics` count what one process saw; these are what
    the store holds, the same from any process.
    """

    def __init__(self, queue: polyqueue.Queue, *, namespace: str = "polyqueue") -> None:
        self.queue = queue
        self.namespace = namespace

    def collect(self) -> Any:
        """One family per scrape, from one ``stats_by_queue`` call."""
        from prometheus_client.core import GaugeMetricFamily

        ns = self.namespace
        jobs = GaugeMetricFamily(f"{ns}_jobs", "Jobs in the store by queue and status.", labels=["queue", "status"])
        ready = GaugeMetricFamily(f"{ns}_ready_jobs", "Pending jobs that are due, by queue.", labels=["queue"])
        for name, counts in sorted(self.queue.stats_by_queue().items()):
            for status, value in sorted(counts.items()):
                jobs.add_metric([name, status], value)
            ready.add_metric([name], counts.get("pending", 0) - counts.get("scheduled", 0))
        yield jobs
        yield ready


def dashboard_registry(queue: polyqueue.Queue) -> CollectorRegistry:
    """What ``polyqueue dashboard`` serves on ``/metrics``: the store's counts and this process's job counters.

    The counters come from :func:`default_metrics` (what the ``prometheus``
    entry point feeds, e.g. with ``POLYQUEUE_PLUGINS=prometheus``).
    """
    registry = CollectorRegistry()
    registry.register(QueueStateCollector(queue))  # type: ignore[arg-type]
    own = default_metrics()
    for collector in (own.enqueued, own.started, own.succeeded, own.failed, own.dead, own.duration):
        registry.register(collector)
    return registry

"""polyqueue-prometheus: Prometheus counters and a duration histogram fed by polyqueue's lifecycle hooks.

>>> import polyqueue
>>> from polyqueue_prometheus import PrometheusMetrics
>>> metrics = PrometheusMetrics()                     # its own CollectorRegistry
>>> q = polyqueue.connect("sqlite:///jobs.db", plugins=[metrics])

or by entry-point name, sharing one process-wide instance (:func:`default_metrics`):
``polyqueue.connect(url, plugins=["prometheus"])`` or ``POLYQUEUE_PLUGINS=prometheus``.
:class:`QueueStateCollector` adds what the store holds (jobs by queue and status), read at
scrape time; ``polyqueue dashboard`` serves both on ``/metrics`` (:func:`dashboard_registry`).
"""

from __future__ import annotations

from .metrics import DEFAULT_BUCKETS, PrometheusMetrics, QueueStateCollector, dashboard_registry, default_metrics

__all__ = [
    "DEFAULT_BUCKETS",
    "PrometheusMetrics",
    "QueueStateCollector",
    "__version__",
    "dashboard_registry",
    "default_metrics",
]

__version__ = "0.1.0"

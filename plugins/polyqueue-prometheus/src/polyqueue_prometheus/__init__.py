"""polyqueue-prometheus: Prometheus counters and a duration histogram fed by polyqueue's lifecycle hooks.

>>> import polyqueue
>>> from polyqueue_prometheus import PrometheusMetrics
>>> metrics = PrometheusMetrics()                     # its own CollectorRegistry
>>> q = polyqueue.connect("sqlite:///jobs.db", plugins=[metrics])

or by entry-point name, sharing one process-wide instance (:func:`default_metrics`):
``polyqueue.connect(url, plugins=["prometheus"])`` or ``POLYQUEUE_PLUGINS=prometheus``.
"""

from __future__ import annotations

from .metrics import DEFAULT_BUCKETS, PrometheusMetrics, default_metrics

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics", "__version__", "default_metrics"]

__version__ = "0.1.0"

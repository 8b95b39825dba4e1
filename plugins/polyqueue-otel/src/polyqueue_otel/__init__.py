"""polyqueue-otel: OpenTelemetry traces for polyqueue, linked from enqueue to every attempt.

>>> import polyqueue
>>> from polyqueue_otel import OpenTelemetryTracing
>>> q = polyqueue.connect("sqlite:///jobs.db", plugins=[OpenTelemetryTracing()])

or by entry-point name, sharing one process-wide instance (:func:`default_tracing`):
``polyqueue.connect(url, plugins=["otel"])`` or ``POLYQUEUE_PLUGINS=otel`` (what a
``polyqueue worker`` subprocess uses). Each enqueue makes a ``<queue> publish``
producer span whose trace context travels in ``Job.headers``; each attempt a
``<queue> process`` consumer span, its child.
"""

from __future__ import annotations

from .tracing import OpenTelemetryTracing, default_tracing

__all__ = ["OpenTelemetryTracing", "__version__", "default_tracing"]

__version__ = "0.1.0"

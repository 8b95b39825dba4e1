"""polyqueue-redis: a polyqueue backend on Redis Cluster (``redis+cluster://``) or one Redis node (``redis://``).

Install it and ``polyqueue.connect("redis+cluster://h1:7000,h2:7001/")`` works;
the backend is found through the ``polyqueue`` entry-point group, like any
third-party backend. Valkey works the same way.
"""

from __future__ import annotations

from .backend import RedisBackend
from .wakeups import RedisWakeups

__all__ = ["RedisBackend", "RedisWakeups", "__version__"]

__version__ = "0.1.0"

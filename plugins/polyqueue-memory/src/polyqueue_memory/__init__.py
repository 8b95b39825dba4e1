"""polyqueue-memory: an in-process ``memory://`` backend for polyqueue, for fast application tests.

Install it and ``polyqueue.connect("memory://")`` works; the backend is found
through the ``polyqueue`` entry-point group, like any third-party backend.
"""

from __future__ import annotations

from .backend import MemoryBackend, MemoryWakeups

__all__ = ["MemoryBackend", "MemoryWakeups", "__version__"]

__version__ = "0.1.0"

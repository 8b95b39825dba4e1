"""The pluggy plugin module the ``polyqueue`` entry point ``memory`` names."""

from __future__ import annotations

from typing import Any

import polyqueue


@polyqueue.hookimpl
def polyqueue_backends() -> dict[str, Any]:
    """Serve the ``memory://`` URL scheme."""
    from .backend import MemoryBackend

    return {"memory": MemoryBackend}

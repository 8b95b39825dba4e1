"""The pluggy plugin module this package's ``polyqueue`` entry point names (see pyproject.toml)."""

from __future__ import annotations

from typing import Any

import polyqueue


@polyqueue.hookimpl
def polyqueue_backends() -> dict[str, Any]:
    """Serve the ``redis`` URL scheme: ``redis://`` (one node) and ``redis+cluster://`` (a cluster)."""
    from .backend import RedisBackend

    return {"redis": RedisBackend}

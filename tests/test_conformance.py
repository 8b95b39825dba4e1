"""The conformance suite against every built-in backend on real servers (and SQLite files)."""

from __future__ import annotations

from typing import Any

import pytest

from polyqueue.conformance import *  # noqa: F403
from polyqueue.testing import require_server

TARGETS = ["sqlite", "postgresql", "mysql"]


@pytest.fixture(params=TARGETS)
def polyqueue_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each built-in backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conformance.db'}"
    return require_server(request.param)

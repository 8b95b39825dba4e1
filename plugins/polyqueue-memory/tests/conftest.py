"""Run the polyqueue conformance suite (imported in test_memory_conformance.py) against ``memory://``."""

from __future__ import annotations

import pytest


@pytest.fixture
def polyqueue_url() -> str:
    """The conformance suite's URL; each test still gets a table prefix (a store) of its own."""
    return "memory://conformance"

"""Run the polyqueue conformance suite (imported by the test_*_conformance.py module) against ``memory://``."""

from __future__ import annotations

import pytest
from polyqueue_memory import MemoryBackend


@pytest.fixture
def polyqueue_url() -> str:
    """The conformance suite's URL; each test still gets a table prefix (a store) of its own."""
    return MemoryBackend.conformance_url

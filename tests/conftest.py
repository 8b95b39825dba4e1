"""Shared fixtures: URLs of real servers (skipped on a laptop without them, failing in CI), fresh queues."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import polyqueue
from polyqueue.testing import drop_schema, require_server, unique_prefix


@pytest.fixture
def pg_url() -> str:
    """PostgreSQL test server URL."""
    return require_server("postgresql")


@pytest.fixture
def mysql_url() -> str:
    """MariaDB/MySQL test server URL."""
    return require_server("mysql")


@pytest.fixture
def redis_url() -> str:
    """Redis test server URL."""
    return require_server("redis")


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'queue.db'}"


@pytest.fixture
def fresh_queue() -> Iterator[Callable[..., polyqueue.Queue]]:
    """Factory: ``fresh_queue(url, **options)`` opens a migrated queue on a prefix of its own, dropped afterwards."""
    opened: list[polyqueue.Queue] = []

    def make(url: str, **options: Any) -> polyqueue.Queue:
        options.setdefault("table_prefix", unique_prefix())
        q = polyqueue.connect(url, **options)
        q.migrate()
        opened.append(q)
        return q

    yield make
    for q in opened:
        try:
            drop_schema(q)
        finally:
            q.close()


os.environ.setdefault("PYTHONUNBUFFERED", "1")

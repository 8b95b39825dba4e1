"""The URLs of the Redis servers the plugin's tests use (a module of its own: conftest is not importable by name)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from polyqueue.testing import require_server

#: The database of the shared single-node Redis these tests use.
SINGLE_NODE_DB = "3"


def single_node_url() -> str:
    """The shared test Redis, in this package's own database (skips or fails when it is unreachable)."""
    url = make_url(require_server("redis")).set(database=SINGLE_NODE_DB)
    return url.render_as_string(hide_password=False)


def cluster_url() -> str:
    """The test cluster's URL (skips or fails when it is unreachable)."""
    return require_server("redis_cluster")

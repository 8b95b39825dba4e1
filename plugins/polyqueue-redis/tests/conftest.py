"""Run the polyqueue conformance suite (imported by test_redis_conformance.py) on a Redis Cluster and on one node.

The cluster is the 3-master, 3-replica one ``.ci/services`` starts on
127.0.0.1:7000-7005 (``POLYQUEUE_TEST_REDIS_CLUSTER_URL``); one node is the
shared test Redis on 6379, in a database of its own (3) so nothing else
that uses it sees these keys. Each test still runs on a fresh key prefix.
Unreachable servers skip, or fail when POLYQUEUE_REQUIRE_BACKENDS is set.
"""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from polyqueue.testing import require_server

#: The database of the shared single-node Redis these tests use.
SINGLE_NODE_DB = "3"


def single_node_url() -> str:
    """The shared test Redis, in this package's own database."""
    url = make_url(require_server("redis")).set(database=SINGLE_NODE_DB)
    return url.render_as_string(hide_password=False)


def cluster_url() -> str:
    """The test cluster's URL (skips or fails when it is unreachable)."""
    return require_server("redis_cluster")


@pytest.fixture(params=["cluster", "one-node"])
def polyqueue_url(request: pytest.FixtureRequest) -> str:
    """The conformance suite's URL: every test runs on the cluster and on one node."""
    return cluster_url() if request.param == "cluster" else single_node_url()

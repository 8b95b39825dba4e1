"""Run the polyqueue conformance suite (imported by test_redis_conformance.py) on a Redis Cluster and on one node.

The cluster is the 3-master, 3-replica one ``.ci/services`` starts on
127.0.0.1:7000-7005 (``POLYQUEUE_TEST_REDIS_CLUSTER_URL``); one node is the
shared test Redis on 6379, in a database of its own (3) so nothing else
that uses it sees these keys. Each test still runs on a fresh key prefix.
Unreachable servers skip, or fail when POLYQUEUE_REQUIRE_BACKENDS is set.
"""

from __future__ import annotations

import pytest
from redis_urls import cluster_url, single_node_url


@pytest.fixture(params=["cluster", "one-node"])
def polyqueue_url(request: pytest.FixtureRequest) -> str:
    """The conformance suite's URL: every test runs on the cluster and on one node."""
    return cluster_url() if request.param == "cluster" else single_node_url()

"""A retried enqueue never stores a job twice on Redis: the connection is cut after the server ran the script.

The queue talks to the real single-node Redis through the project's
:class:`tcp_proxy.CuttingProxy` (``tests/tcp_proxy.py`` of the repository),
which forwards the pipeline carrying the enqueue script, lets Redis run it
and answer, swallows the answer and drops the connection. The backend sees a
lost connection and sends the script again marked as a resend; the call's
batch id (its client token) finds the ids the first run stored. A control
without a batch id shows the proxy really loses the answer to a script Redis
ran: the same call then stores its job twice.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from polyqueue_redis import RedisBackend
from redis_urls import single_node_url

import polyqueue
from polyqueue.testing import drop_schema, unique_prefix

# The proxy is the repository's test helper, shared with the SQL backends' retry tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from tcp_proxy import CuttingProxy


@pytest.fixture
def proxied() -> Iterator[tuple[polyqueue.Queue, CuttingProxy]]:
    """A migrated queue on one Redis node whose every connection goes through a cutting proxy."""
    url = single_node_url()
    parts = urlsplit(url)
    with CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 6379) as proxy:
        through = url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        q = polyqueue.connect(through, table_prefix=unique_prefix())
        try:
            q.migrate()
            q.enqueue("warm-up")  # the connection, the scripts and the queue exist before the proxy is armed
            yield q, proxy
        finally:
            drop_schema(q)
            q.close()


def stored(q: polyqueue.Queue, job_type: str) -> int:
    return sum(counts.get(job_type, {}).get("pending", 0) for counts in q.stats_by_type().values())


@pytest.mark.parametrize("size", [1, 200])
def test_an_enqueue_whose_answer_was_lost_stores_its_jobs_once(
    proxied: tuple[polyqueue.Queue, CuttingProxy], size: int
) -> None:
    q, proxy = proxied
    proxy.cut_after(b"EVALSHA")
    ids = q.enqueue_many([{"job_type": "job", "payload": {"n": n}, "dedupe_key": f"k{n}"} for n in range(size)])
    assert proxy.cuts == 1, "the proxy lost the answer to the enqueue script"
    assert len(set(ids)) == size and stored(q, "job") == size, "the resend found the first run's jobs"
    assert [q.require(i).payload["n"] for i in ids] == list(range(size))


def test_control_without_a_batch_id_the_same_lost_answer_stores_the_job_twice(
    proxied: tuple[polyqueue.Queue, CuttingProxy],
) -> None:
    q, proxy = proxied
    backend = q.backend
    assert isinstance(backend, RedisBackend)
    job = ["job", "{}", "0", "5", "0", "", "", ""]
    call = backend._call("enqueue", "default", "default", "", "60", *job)  # no batch id: nothing to find
    proxy.cut_after(b"EVALSHA")
    backend.store.run([call])
    assert proxy.cuts == 1
    assert stored(q, "job") == 2, "Redis ran the script, the answer was lost, and the resend ran it again"

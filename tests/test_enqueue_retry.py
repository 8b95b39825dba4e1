"""A retried enqueue never stores a job twice: the connection is cut after the server carried out the COMMIT.

Each test talks to the real server through :class:`tcp_proxy.CuttingProxy`,
which forwards the statement that commits (a ``COMMIT``, or the single
autocommit ``INSERT`` of the fast paths), lets the server answer, swallows the
answer and drops the connection. The library sees a lost connection and
retries; the client token finds the committed rows instead of inserting them
again. A control without a token shows the proxy really loses a committed
answer: the same call then stores its job twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from tcp_proxy import CuttingProxy

import polyqueue
import polyqueue.policy
from polyqueue.backends.base import EnqueueBatch
from polyqueue.job import NewJob
from polyqueue.testing import drop_schema, require_server, unique_prefix


@pytest.fixture(params=["postgresql", "mysql"])
def proxied(request: pytest.FixtureRequest) -> Iterator[tuple[polyqueue.Queue, CuttingProxy]]:
    """A migrated queue whose every connection goes through a cutting proxy to the real server."""
    url = require_server(request.param)
    parts = urlsplit(url)
    port = parts.port or (5432 if request.param == "postgresql" else 3306)
    with CuttingProxy(parts.hostname or "127.0.0.1", port) as proxy:
        through = url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
        q = polyqueue.connect(through, table_prefix=unique_prefix())
        try:
            q.migrate()
            q.enqueue("warm-up")  # connections and their session set-up before the proxy is armed
            yield q, proxy
        finally:
            drop_schema(q)
            q.close()


def stored(q: polyqueue.Queue, job_type: str) -> int:
    return sum(counts.get(job_type, {}).get("pending", 0) for counts in q.stats_by_type().values())


# Each case: the statement whose answer is lost, and an enqueue call that sends it.
CASES: dict[str, tuple[bytes, Callable[[polyqueue.Queue], list[Any]], int]] = {
    "one plain job, one autocommit insert": (b"INSERT INTO", lambda q: [q.enqueue("job", {"n": 1})], 1),
    "a plain batch": (
        b"INSERT INTO",
        lambda q: q.enqueue_many([{"job_type": "job", "payload": {"n": n}} for n in range(200)]),
        200,
    ),
    "a batch in a transaction (plain, delayed and deduplicated jobs)": (
        b"COMMIT",
        lambda q: q.enqueue_many(
            [{"job_type": "job", "payload": {"n": n}} for n in range(50)]
            + [{"job_type": "job", "delay": 60}, {"job_type": "job", "dedupe_key": "k"}]
            + [{"job_type": "job", "dedupe_key": "k"}, {"job_type": "job", "dedupe_key": "other"}]
        ),
        53,
    ),
    "one job with a dedupe key and a hold": (
        b"COMMIT",
        lambda q: [q.enqueue("job", dedupe_key="d", dedupe_for=60)],
        1,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_enqueue_whose_commit_answer_was_lost_stores_each_job_once(
    proxied: tuple[polyqueue.Queue, CuttingProxy], case: str
) -> None:
    q, proxy = proxied
    marker, call, expected = CASES[case]
    proxy.cut_after(marker)
    ids = call(q)
    assert proxy.cuts == 1, "the proxy did not cut: the test proved nothing"
    assert stored(q, "job") == expected, "the retry stored jobs a second time"
    assert len(set(ids)) == expected
    for job_id in ids:
        job = q.get(job_id)
        assert job is not None and job.job_type == "job"


def test_without_a_token_the_same_cut_stores_the_job_twice(proxied: tuple[polyqueue.Queue, CuttingProxy]) -> None:
    """The control: the proxy loses a committed answer, and a blind retry repeats the work."""
    q, proxy = proxied
    proxy.cut_after(b"INSERT INTO")
    q.backend.enqueue(EnqueueBatch([NewJob("default", "job", "1", 0, 5, 0.0, None)], None, None))
    assert proxy.cuts == 1
    assert stored(q, "job") == 2


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mysql"])
def test_a_token_another_call_already_marked_is_replaced(kind: str, request: pytest.FixtureRequest) -> None:
    """Two calls in one second draw the same token about once in 10**9 pairs: the second draws another."""
    url = request.getfixturevalue("sqlite_url") if kind == "sqlite" else require_server(kind)
    q = polyqueue.connect(url, table_prefix=unique_prefix())
    try:
        q.migrate()
        token = polyqueue.policy.new_enqueue_token()

        def job(job_type: str, key: str | None = None) -> NewJob:
            return NewJob("default", job_type, "{}", 0, 5, 0.0, key)

        calls = [
            [job("first")],  # marks the token
            [job("single")],
            [job("bulk") for _ in range(5)],
            [job("deduped", "k")],
            [job("deduped-again", "k2"), job("plain-after")],
        ]
        ids = [q.backend.enqueue(EnqueueBatch(jobs, None, token)) for jobs in calls]
        assert [len(set(i)) for i in ids] == [1, 1, 5, 1, 2]
        counts = {t: c["pending"] for t, c in q.stats_by_type()["default"].items()}
        assert counts == {"first": 1, "single": 1, "bulk": 5, "deduped": 1, "deduped-again": 1, "plain-after": 1}
    finally:
        drop_schema(q)
        q.close()

"""The metrics plugin on real databases with a real Worker: what the counters and the histogram say."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from polyqueue_prometheus import PrometheusMetrics, default_metrics
from prometheus_client import REGISTRY, generate_latest

import polyqueue
from polyqueue.testing import drop_schema, require_server, unique_prefix


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real SQLite file, and the PostgreSQL test server (skipped, or failed in CI, when unreachable)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'metrics.db'}"
    return require_server("postgresql")


@pytest.fixture
def metrics() -> PrometheusMetrics:
    return PrometheusMetrics()


@pytest.fixture
def q(url: str, metrics: PrometheusMetrics) -> Iterator[polyqueue.Queue]:
    queue = polyqueue.connect(url, plugins=[metrics], table_prefix=unique_prefix(), backoff_base=0.01)
    queue.migrate()
    yield queue
    drop_schema(queue)
    queue.close()


def sample(metrics: PrometheusMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def run_until_settled(worker: polyqueue.Worker, q: polyqueue.Queue) -> None:
    deadline = time.monotonic() + 30
    while q.stats()["pending"] or q.stats()["processing"]:
        assert time.monotonic() < deadline, q.stats()
        worker.run(burst=True)
        time.sleep(0.01)


def test_a_worker_run_is_counted_and_timed(q: polyqueue.Queue, metrics: PrometheusMetrics) -> None:
    for n in range(3):
        q.enqueue("ok", n)
    q.enqueue("boom", max_attempts=2)
    worker = polyqueue.Worker(q, concurrency=2, lease=10)

    @worker.handler("ok")
    def ok(job: polyqueue.Job) -> None:
        time.sleep(0.02)

    @worker.handler("boom")
    def boom(job: polyqueue.Job) -> None:
        raise RuntimeError("no")

    run_until_settled(worker, q)

    assert sample(metrics, "polyqueue_jobs_enqueued_total", queue="default") == 4
    assert sample(metrics, "polyqueue_jobs_started_total", queue="default", job_type="ok") == 3
    assert sample(metrics, "polyqueue_jobs_started_total", queue="default", job_type="boom") == 2
    assert sample(metrics, "polyqueue_jobs_succeeded_total", queue="default", job_type="ok") == 3
    assert sample(metrics, "polyqueue_jobs_succeeded_total", queue="default", job_type="boom") == 0
    assert sample(metrics, "polyqueue_jobs_failed_total", queue="default", job_type="boom", retry="true") == 1
    assert sample(metrics, "polyqueue_jobs_failed_total", queue="default", job_type="boom", retry="false") == 1
    assert sample(metrics, "polyqueue_jobs_dead_total", queue="default", job_type="boom") == 1
    ok_labels = {"queue": "default", "job_type": "ok", "outcome": "succeeded"}
    assert sample(metrics, "polyqueue_job_duration_seconds_count", **ok_labels) == 3
    assert sample(metrics, "polyqueue_job_duration_seconds_sum", **ok_labels) >= 0.06
    assert (
        sample(metrics, "polyqueue_job_duration_seconds_count", queue="default", job_type="boom", outcome="failed") == 2
    )
    assert q.stats()["dead"] == 1 and q.stats()["done"] == 3


def test_failures_outside_a_worker_are_counted_without_a_duration(
    q: polyqueue.Queue, metrics: PrometheusMetrics
) -> None:
    q.enqueue("manual", max_attempts=1)
    (job,) = q.claim()
    q.fail(job, "by hand")
    assert sample(metrics, "polyqueue_jobs_failed_total", queue="default", job_type="manual", retry="false") == 1
    assert sample(metrics, "polyqueue_jobs_dead_total", queue="default", job_type="manual") == 1
    assert (
        sample(metrics, "polyqueue_job_duration_seconds_count", queue="default", job_type="manual", outcome="failed")
        == 0
    )


def test_a_batch_over_several_queues_is_counted_under_one_label(q: polyqueue.Queue, metrics: PrometheusMetrics) -> None:
    q.enqueue_many([{"job_type": "t", "queue": "a"}, {"job_type": "t", "queue": "b"}])
    q.enqueue_many([{"job_type": "t", "queue": "a"}] * 3)
    assert sample(metrics, "polyqueue_jobs_enqueued_total", queue="(several)") == 2
    assert sample(metrics, "polyqueue_jobs_enqueued_total", queue="a") == 3


def test_metrics_use_their_own_registry_and_render_as_exposition_text(metrics: PrometheusMetrics) -> None:
    other = PrometheusMetrics()  # a second instance must not collide with the first
    assert other.registry is not metrics.registry
    assert REGISTRY.get_sample_value("polyqueue_jobs_enqueued_total", {"queue": "default"}) is None
    metrics.enqueued.labels("mail").inc(2)
    text = generate_latest(metrics.registry).decode()
    assert 'polyqueue_jobs_enqueued_total{queue="mail"} 2.0' in text
    assert "# TYPE polyqueue_job_duration_seconds histogram" in text


def test_activation_by_entry_point_name_feeds_the_default_instance(url: str) -> None:
    queue_name = f"q{uuid.uuid4().hex[:8]}"
    q = polyqueue.connect(url, plugins=["prometheus"], table_prefix=unique_prefix())
    try:
        q.migrate()
        assert q.plugins.has_plugin("prometheus")
        q.enqueue("t", queue=queue_name)
        counted = default_metrics().registry.get_sample_value("polyqueue_jobs_enqueued_total", {"queue": queue_name})
        assert counted == 1
    finally:
        drop_schema(q)
        q.close()


def test_activation_through_the_environment(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYQUEUE_PLUGINS", "prometheus")
    queue_name = f"q{uuid.uuid4().hex[:8]}"
    q = polyqueue.connect(url, table_prefix=unique_prefix())
    try:
        q.migrate()
        q.enqueue_many([{"job_type": "t", "queue": queue_name}] * 2)
        counted = default_metrics().registry.get_sample_value("polyqueue_jobs_enqueued_total", {"queue": queue_name})
        assert counted == 2
    finally:
        drop_schema(q)
        q.close()


def test_queue_state_collector_reads_the_store_at_scrape_time(q: polyqueue.Queue) -> None:
    from polyqueue_prometheus import QueueStateCollector, dashboard_registry
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(QueueStateCollector(q))  # type: ignore[arg-type]
    q.enqueue("t", queue="a")
    q.enqueue("t", queue="a", delay=3600)
    dead = q.enqueue("t", queue="b", max_attempts=1)
    [job] = q.claim("b")
    assert job.id == dead
    q.fail(job, "boom")
    assert registry.get_sample_value("polyqueue_jobs", {"queue": "a", "status": "pending"}) == 2
    assert registry.get_sample_value("polyqueue_jobs", {"queue": "a", "status": "scheduled"}) == 1
    assert registry.get_sample_value("polyqueue_ready_jobs", {"queue": "a"}) == 1
    assert registry.get_sample_value("polyqueue_jobs", {"queue": "b", "status": "dead"}) == 1
    q.replay([dead])
    assert registry.get_sample_value("polyqueue_jobs", {"queue": "b", "status": "dead"}) == 0, "read at each scrape"
    served = generate_latest(dashboard_registry(q)).decode()
    assert 'polyqueue_jobs{queue="b",status="pending"} 1.0' in served
    assert "polyqueue_jobs_started_total" in served or "# TYPE polyqueue_jobs_started counter" in served

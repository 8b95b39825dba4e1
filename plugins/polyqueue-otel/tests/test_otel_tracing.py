"""The tracing plugin on real databases with a real Worker, spans caught by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polyqueue_otel.tracing
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from polyqueue_otel import OpenTelemetryTracing

import polyqueue
from polyqueue.testing import drop_schema, require_server, unique_prefix


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real SQLite file, and the PostgreSQL test server (skipped, or failed in CI, when unreachable)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'otel.db'}"
    return require_server("postgresql")


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def q(url: str, provider: TracerProvider) -> Iterator[polyqueue.Queue]:
    tracing = OpenTelemetryTracing(tracer_provider=provider, propagator=TraceContextTextMapPropagator())
    queue = polyqueue.connect(url, plugins=[tracing], table_prefix=unique_prefix(), backoff_base=0.01)
    queue.migrate()
    yield queue
    drop_schema(queue)
    queue.close()


def run_until_settled(worker: polyqueue.Worker, q: polyqueue.Queue) -> None:
    deadline = time.monotonic() + 60
    while q.stats()["pending"] or q.stats()["processing"]:
        assert time.monotonic() < deadline, q.stats()
        worker.run(burst=True)
        time.sleep(0.01)


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_a_job_is_traced_from_enqueue_to_its_handler(
    q: polyqueue.Queue, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    job_id = q.enqueue("greet", {"name": "ada"}, queue="mail")
    (publish,) = spans_named(exporter, "mail publish")
    assert publish.kind == SpanKind.PRODUCER
    assert publish.attributes is not None and publish.context is not None
    assert publish.attributes["messaging.system"] == "polyqueue"
    assert publish.attributes["messaging.destination.name"] == "mail"
    assert publish.attributes["messaging.message.id"] == str(job_id)
    stored = q.require(job_id)
    # The flags after the ids say "sampled" (and, from newer SDKs, "random trace id").
    ids = f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-"
    assert stored.headers["traceparent"].startswith(ids)

    inner_tracer = provider.get_tracer("handler")
    worker = polyqueue.Worker(q, queues=["mail"], lease=30)

    @worker.handler("greet")
    def greet(job: polyqueue.Job) -> None:
        with inner_tracer.start_as_current_span("send the mail"):
            pass

    run_until_settled(worker, q)
    (process,) = spans_named(exporter, "mail process")
    assert process.kind == SpanKind.CONSUMER
    assert process.context is not None and process.parent is not None
    assert process.context.trace_id == publish.context.trace_id
    assert process.parent.span_id == publish.context.span_id
    assert [link.context.span_id for link in process.links] == [publish.context.span_id]
    assert process.attributes is not None
    assert process.attributes["messaging.message.id"] == str(job_id)
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["polyqueue.job.type"] == "greet"
    assert process.attributes["polyqueue.job.attempt"] == 1
    assert process.status.status_code == StatusCode.UNSET
    # The handler's own spans are children of its attempt's span.
    (inner,) = spans_named(exporter, "send the mail")
    assert inner.parent is not None and inner.parent.span_id == process.context.span_id


def test_a_failing_attempt_ends_in_error_with_its_exception(q: polyqueue.Queue, exporter: InMemorySpanExporter) -> None:
    job_id = q.enqueue("boom", max_attempts=2)
    worker = polyqueue.Worker(q, lease=30)

    @worker.handler("boom")
    def boom(job: polyqueue.Job) -> None:
        raise RuntimeError(f"attempt {job.attempts} broke")

    run_until_settled(worker, q)
    assert q.require(job_id).status == "dead"
    (publish,) = spans_named(exporter, "default publish")
    attempts = sorted(spans_named(exporter, "default process"), key=lambda s: s.attributes["polyqueue.job.attempt"])  # type: ignore[index]
    assert [span.attributes["polyqueue.job.attempt"] for span in attempts] == [1, 2]  # type: ignore[index]
    for span in attempts:
        assert span.context is not None and publish.context is not None
        assert span.context.trace_id == publish.context.trace_id  # a retry stays in the enqueue's trace
        assert span.status.status_code == StatusCode.ERROR
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "RuntimeError"
        assert "broke" in str(event.attributes["exception.message"])
        assert "in boom" in str(event.attributes["exception.stacktrace"])  # the handler's own traceback
    assert [span.attributes["polyqueue.job.dead"] for span in attempts] == [False, True]  # type: ignore[index]


def test_an_async_handler_failure_is_recorded_too(q: polyqueue.Queue, exporter: InMemorySpanExporter) -> None:
    q.enqueue("aboom", max_attempts=1)
    worker = polyqueue.Worker(q, lease=30)

    @worker.handler("aboom")
    async def aboom(job: polyqueue.Job) -> None:
        raise ValueError("async broke")

    run_until_settled(worker, q)
    (span,) = spans_named(exporter, "default process")
    assert span.status.status_code == StatusCode.ERROR
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes is not None and event.attributes["exception.type"] == "ValueError"


def test_a_job_cancelled_while_it_runs_ends_its_span_with_an_event(
    q: polyqueue.Queue, exporter: InMemorySpanExporter
) -> None:
    job_id = q.enqueue("work")
    started = threading.Event()
    worker = polyqueue.Worker(q, concurrency=1, lease=3)  # a heartbeat every second

    @worker.handler("work")
    def work(job: polyqueue.Job) -> None:
        started.set()
        while True:
            job.check()
            time.sleep(0.02)

    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert started.wait(60)
        assert q.cancel(job_id) is True
        deadline = time.monotonic() + 60
        while not spans_named(exporter, "default process"):
            assert time.monotonic() < deadline, "no process span ended"
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(60)
    (span,) = spans_named(exporter, "default process")
    assert [event.name for event in span.events] == ["polyqueue.job.cancelled"]
    assert q.require(job_id).status == "cancelled"


def test_each_job_of_a_batch_gets_its_own_publish_span(q: polyqueue.Queue, exporter: InMemorySpanExporter) -> None:
    ids = q.enqueue_many([{"job_type": "a", "queue": "q1"}, {"job_type": "b", "queue": "q2"}])
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"q1 publish", "q2 publish"}
    assert spans["q1 publish"].attributes["messaging.message.id"] == str(ids[0])  # type: ignore[index]
    assert spans["q2 publish"].attributes["messaging.message.id"] == str(ids[1])  # type: ignore[index]
    heads = [q.require(i).headers["traceparent"] for i in ids]
    assert heads[0] != heads[1]


def test_a_failed_batch_leaves_no_span_mistaken_for_the_next_job(
    q: polyqueue.Queue, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(polyqueue.errors.InvalidArgument):
        # The second job is refused after the first was built (and its span started): nothing is stored.
        q.enqueue_many([{"job_type": "a"}, {"job_type": "b", "priority": "high"}])
    assert spans_named(exporter, "default publish") == []
    monkeypatch.setattr(polyqueue_otel.tracing, "UNSTORED_AFTER", 0.0)
    job_id = q.enqueue("c")  # ends the span of the job never stored: it is older than UNSTORED_AFTER
    stale, stored = spans_named(exporter, "default publish")
    assert stale.status.status_code == StatusCode.ERROR and stale.attributes is not None
    assert stale.attributes["polyqueue.job.type"] == "a" and "messaging.message.id" not in stale.attributes
    assert stored.attributes is not None and stored.attributes["messaging.message.id"] == str(job_id)
    assert stored.attributes["polyqueue.job.type"] == "c"


def test_concurrent_enqueues_each_end_their_own_span(q: polyqueue.Queue, exporter: InMemorySpanExporter) -> None:
    def produce(n: int) -> list[object]:
        return [q.enqueue(f"t{n}", n) for _ in range(5)]

    with ThreadPoolExecutor(4) as pool:
        ids = [job_id for batch in pool.map(produce, range(4)) for job_id in batch]
    by_text = {str(job_id): job_id for job_id in ids}
    spans = spans_named(exporter, "default publish")
    assert len(spans) == len(by_text) == 20
    for span in spans:
        assert span.attributes is not None and span.context is not None
        job = q.require(by_text[str(span.attributes["messaging.message.id"])])
        assert job.job_type == span.attributes["polyqueue.job.type"]
        assert job.headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


def test_the_callers_trace_context_is_the_parent_and_its_own_headers_win(
    q: polyqueue.Queue, exporter: InMemorySpanExporter, provider: TracerProvider
) -> None:
    with provider.get_tracer("web").start_as_current_span("POST /signup") as request:
        job_id = q.enqueue("welcome", headers={"tenant": "acme"})
    (publish,) = spans_named(exporter, "default publish")
    assert publish.parent is not None and publish.parent.span_id == request.get_span_context().span_id
    assert q.require(job_id).headers["tenant"] == "acme"

    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    other = q.enqueue("welcome", headers={"traceparent": own})
    assert q.require(other).headers == {"traceparent": own}
    assert len(spans_named(exporter, "default publish")) == 1  # the caller traces that enqueue itself


def test_without_the_plugin_no_headers_are_added(url: str) -> None:
    queue = polyqueue.connect(url, table_prefix=unique_prefix())
    queue.migrate()
    try:
        with trace.get_tracer("web").start_as_current_span("request"):
            job_id = queue.enqueue("plain")
        assert queue.require(job_id).headers == {}
    finally:
        drop_schema(queue)
        queue.close()


WORKER_MODULE = """
import asyncio
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

provider = TracerProvider()
out = open({path!r}, "a")
one_line = ConsoleSpanExporter(out=out, formatter=lambda s: s.to_json(indent=None) + "\\n")
provider.add_span_processor(SimpleSpanProcessor(one_line))
trace.set_tracer_provider(provider)


def setup(worker):
    worker.register("greet", lambda job: "hello")
"""


def test_a_worker_subprocess_continues_the_trace(url: str, tmp_path: Path) -> None:
    db = f"{url}{'&' if '?' in url else '?'}table_prefix={unique_prefix()}"  # the worker's CLI reads it from the URL
    producer_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(producer_spans))
    tracing = OpenTelemetryTracing(tracer_provider=provider, propagator=TraceContextTextMapPropagator())
    queue = polyqueue.connect(db, plugins=[tracing])
    queue.migrate()
    try:
        job_id = queue.enqueue("greet")
        (publish,) = producer_spans.get_finished_spans()
        assert publish.context is not None
        worked = run_traced_worker(db, tmp_path)
        assert worked.returncode == 0, worked.stderr
        assert queue.require(job_id).status == "done"
    finally:
        drop_schema(queue)
        queue.close()
    (process,) = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines() if line.strip()]
    assert process["name"] == "default process"
    assert process["kind"] == "SpanKind.CONSUMER"
    assert process["context"]["trace_id"] == f"0x{publish.context.trace_id:032x}"
    assert process["parent_id"] == f"0x{publish.context.span_id:016x}"
    assert process["attributes"]["messaging.message.id"] == str(job_id)


def run_traced_worker(db: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``POLYQUEUE_PLUGINS=otel polyqueue worker traced_handlers --burst``, its spans written to spans.jsonl."""
    spans_file = tmp_path / "spans.jsonl"
    (tmp_path / "traced_handlers.py").write_text(WORKER_MODULE.format(path=str(spans_file)))
    env = {k: v for k, v in os.environ.items() if k not in ("POLYQUEUE_URL", "POLYQUEUE_PLUGINS")}
    env.update(POLYQUEUE_URL=db, POLYQUEUE_PLUGINS="otel")
    return subprocess.run(
        [sys.executable, "-m", "polyqueue.cli", "worker", "traced_handlers", "--burst"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def test_concurrent_async_enqueues_are_children_of_the_callers_span(
    url: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """AsyncQueue (on PostgreSQL its native asyncio variant, in greenlets on the loop) keeps the caller's context."""
    tracing = OpenTelemetryTracing(tracer_provider=provider, propagator=TraceContextTextMapPropagator())
    aq = polyqueue.connect_async(url, plugins=[tracing], table_prefix=unique_prefix())

    async def produce() -> tuple[list[object], int]:
        await aq.migrate()
        with provider.get_tracer("web").start_as_current_span("POST /batch") as request:
            ids = await asyncio.gather(*[aq.enqueue("t", n) for n in range(6)])
        return list(ids), request.get_span_context().span_id

    try:
        ids, request_span = asyncio.run(produce())
        publish = spans_named(exporter, "default publish")
        assert sorted(str(s.attributes["messaging.message.id"]) for s in publish) == sorted(map(str, ids))  # type: ignore[index]
        assert all(s.parent is not None and s.parent.span_id == request_span for s in publish)
        for span in publish:
            assert span.attributes is not None and span.context is not None
            stored = aq.sync.require(next(i for i in ids if str(i) == span.attributes["messaging.message.id"]))
            assert stored.headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"
    finally:
        drop_schema(aq.sync)
        asyncio.run(aq.close())

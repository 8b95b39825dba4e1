"""connect(), options, redaction and the in-memory SQLite URL."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import polyqueue
from polyqueue import BackendUnavailable, ConfigurationError, InvalidArgument


def test_url_defaults_to_env_then_embedded_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLYQUEUE_URL", raising=False)
    with polyqueue.connect() as q:
        assert "polyqueue.db" in repr(q)
        q.migrate()
    assert (tmp_path / "polyqueue.db").exists()
    monkeypatch.setenv("POLYQUEUE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    with polyqueue.connect() as q:
        assert "other.db" in repr(q)


def test_options_from_url_query_and_keywords(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}?table_prefix=app_&max_attempts=7&max_payload_bytes=100"
    with polyqueue.connect(url) as q:
        q.migrate()
        assert q.get(q.enqueue("t")).max_attempts == 7  # type: ignore[union-attr]
        with pytest.raises(polyqueue.PayloadTooLarge):
            q.enqueue("t", "x" * 200)
        assert q.backend.jobs.name == "app_jobs"  # type: ignore[attr-defined]
    with polyqueue.connect(url, max_attempts=2) as q:
        assert q.get(q.enqueue("t")).max_attempts == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "options",
    [
        {"table_prefix": "bad-prefix; drop"},
        {"table_prefix": ""},
        {"max_attempts": 0},
        {"max_payload_bytes": -1},
        {"no_such_option": 1},
        {"sqlite_synchronous": "sometimes"},
    ],
)
def test_bad_options_are_configuration_errors(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        polyqueue.connect(f"sqlite:///{tmp_path / 'q.db'}", **options)


def test_unparseable_url_never_echoes_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        polyqueue.connect("::::not a url with pw hunter2::::")
    assert "hunter2" not in str(info.value)


def test_password_never_in_repr_error_or_log(caplog: pytest.LogCaptureFixture) -> None:
    url = "postgresql://app:hunter2secret@127.0.0.1:1/db?reconnect_seconds=0.2"
    caplog.set_level(logging.DEBUG)
    q = polyqueue.connect(url)
    assert "hunter2secret" not in repr(q) and "***" in repr(q)
    with pytest.raises(BackendUnavailable) as info:
        q.enqueue("t")
    assert "hunter2secret" not in str(info.value)
    worker = polyqueue.Worker(q, concurrency=1)
    assert "hunter2secret" not in repr(worker)
    q.close()
    assert "hunter2secret" not in caplog.text


def test_in_memory_sqlite_is_a_full_queue_in_one_process() -> None:
    with polyqueue.connect("sqlite:///:memory:") as q:
        q.migrate()
        q.enqueue_many([{"job_type": "t", "payload": {"i": i}} for i in range(50)])
        worker = polyqueue.Worker(q, concurrency=4)
        worker.register("t", lambda job: job.payload["i"])
        assert worker.run(burst=True) == 50
        assert q.stats()["done"] == 50


def test_worker_rejects_bad_settings(tmp_path: Path) -> None:
    with polyqueue.connect(f"sqlite:///{tmp_path / 'q.db'}") as q:
        for kwargs in ({"concurrency": 0}, {"lease": 0}, {"queues": []}, {"poll_interval": (2.0, 1.0)}):
            with pytest.raises(InvalidArgument):
                polyqueue.Worker(q, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            polyqueue.Worker("not a queue")  # type: ignore[arg-type]
        worker = polyqueue.Worker(q)
        with pytest.raises(InvalidArgument):
            worker.register("t", "not callable")  # type: ignore[arg-type]


def test_public_names() -> None:
    for name in polyqueue.__all__:
        assert getattr(polyqueue, name).__doc__, f"{name} needs a docstring"


def test_import_loads_neither_sqlalchemy_nor_asyncio() -> None:
    import subprocess
    import sys

    code = "import polyqueue, sys; print(sorted(m for m in ('sqlalchemy', 'asyncio', 'greenlet') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"import polyqueue loaded {loaded}: asyncio support must load lazily"


def test_connect_async_validates_like_connect(tmp_path: Path) -> None:
    import asyncio

    with pytest.raises(ConfigurationError, match="async_driver"):
        polyqueue.connect_async(f"sqlite:///{tmp_path / 'q.db'}", async_driver="nope")
    with pytest.raises(ConfigurationError, match="unknown URL scheme"):
        polyqueue.connect_async("nosuchdb://x")
    with pytest.raises(InvalidArgument):
        polyqueue.connect_async(f"sqlite:///{tmp_path / 'q.db'}", threads=0)
    with pytest.raises(InvalidArgument):
        polyqueue.AsyncQueue("not a queue")  # type: ignore[arg-type]

    async def main() -> None:
        async with polyqueue.connect_async(f"sqlite:///{tmp_path / 'q.db'}", async_driver="aiosqlite") as aq:
            assert aq.native and "aiosqlite" not in repr(aq)
            await aq.migrate()
            assert await aq.get(await aq.enqueue("t", {"n": 1})) is not None

    asyncio.run(main())
    with polyqueue.connect(f"sqlite:///{tmp_path / 'q.db'}") as q:
        assert q.stats()["pending"] == 1


#: Queue methods with no coroutine twin: a worker's session, and the Queue re-opened on another backend object.
_SYNC_ONLY = {"consumer_session", "rebound"}


def test_the_async_queue_mirrors_every_queue_method() -> None:
    """A parameter added to a Queue method must reach its AsyncQueue twin too (they drift apart otherwise)."""
    import inspect

    for name, method in inspect.getmembers(polyqueue.Queue, inspect.isfunction):
        if name.startswith("_") or name in _SYNC_ONLY:
            continue
        twin = getattr(polyqueue.AsyncQueue, name, None)
        assert twin is not None, f"AsyncQueue has no {name}()"
        assert list(inspect.signature(method).parameters) == list(inspect.signature(twin).parameters), name

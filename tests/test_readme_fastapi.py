"""The README's FastAPI example, run as written: an endpoint enqueues in its own transaction, an async worker runs it.

FastAPI is not a dependency of polyqueue; ``make test`` installs it (with
httpx, for its test client) so that this test runs, and it is skipped where
FastAPI is not importable.
"""

from __future__ import annotations

import re
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import polyqueue
from polyqueue.testing import require_server

README = Path(__file__).resolve().parents[1] / "README.md"


def example_source() -> str:
    """The README's Python block that builds the FastAPI app."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    (source,) = [block for block in blocks if "FastAPI(lifespan=lifespan)" in block]
    return source


def load_app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.setenv("DATABASE_URL", database_url)
    module = types.ModuleType(f"readme_app_{uuid.uuid4().hex[:8]}")
    exec(compile(example_source(), "README.md (FastAPI example)", "exec"), module.__dict__)
    return module


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of the example's own: a SQLite file, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        pytest.importorskip("aiosqlite")
        yield f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
        return
    import psycopg

    url = require_server("postgresql")
    schema = f"pqt_readme_{uuid.uuid4().hex[:8]}"
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_the_fastapi_example_enqueues_transactionally_and_its_async_worker_runs_the_job(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    app = load_app(database_url, monkeypatch)
    with TestClient(app.app) as client:  # runs the lifespan: migrate, start the worker ... stop it
        created = client.post("/orders", params={"email": "ada@example.com"})
        assert created.status_code == 200, created.text
        job_id = created.json()["job"]
        with polyqueue.connect(database_url) as q:
            job = wait_for_done(q, job_id)
    assert (job.status, job.attempts, job.result) == ("done", 1, {"sent_to": "ada@example.com"})


def wait_for_done(q: polyqueue.Queue, job_id: Any, timeout: float = 60.0) -> polyqueue.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = q.require(job_id)
        if job.status == "done" or time.monotonic() > deadline:
            return job
        time.sleep(0.05)

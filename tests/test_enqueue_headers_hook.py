"""The ``polyqueue_enqueue_headers`` hook: headers plugins add before a job is stored, never failing an enqueue."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest

import polyqueue
from polyqueue.backends.base import Capability


class Adds:
    """A plugin adding fixed headers and noting what it was called with."""

    def __init__(self, headers: Any) -> None:
        self.headers = headers
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    @polyqueue.hookimpl
    def polyqueue_enqueue_headers(self, queue: Any, job_type: str, queue_name: str, headers: Mapping[str, str]) -> Any:
        self.calls.append((job_type, queue_name, dict(headers)))
        return self.headers


class Raises:
    @polyqueue.hookimpl
    def polyqueue_enqueue_headers(self, queue: Any, job_type: str, queue_name: str, headers: Any) -> Any:
        raise RuntimeError("tracing is down")


@pytest.fixture(params=["sqlite_url", "pg_url"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def test_plugin_headers_are_stored_and_the_callers_own_win(
    url: str, fresh_queue: Callable[..., polyqueue.Queue]
) -> None:
    plugin = Adds({"traceparent": "from-plugin", "tenant": "from-plugin"})
    q = fresh_queue(url, plugins=[plugin])
    job_id = q.enqueue("a", queue="mail", headers={"tenant": "acme"})
    assert q.require(job_id).headers == {"traceparent": "from-plugin", "tenant": "acme"}
    assert plugin.calls == [("a", "mail", {"tenant": "acme"})]
    plain = q.enqueue("b")
    assert q.require(plain).headers == {"traceparent": "from-plugin", "tenant": "from-plugin"}


def test_results_of_several_plugins_are_merged(url: str, fresh_queue: Callable[..., polyqueue.Queue]) -> None:
    q = fresh_queue(url, plugins=[Adds({"a": "1"}), Adds({"b": "2"}), Adds(None)])
    job_id = q.enqueue("x")
    assert q.require(job_id).headers == {"a": "1", "b": "2"}


def test_a_raising_or_invalid_plugin_never_fails_the_enqueue(
    url: str, fresh_queue: Callable[..., polyqueue.Queue], caplog: pytest.LogCaptureFixture
) -> None:
    for plugin in (Raises(), Adds({"bad": 3}), Adds(["not", "a", "dict"])):
        q = fresh_queue(url, plugins=[plugin])
        with caplog.at_level(logging.ERROR, logger="polyqueue"):
            caplog.clear()
            job_id = q.enqueue("x", headers={"own": "kept"})
        assert q.require(job_id).headers == {"own": "kept"}
        assert caplog.records, f"{plugin!r} was not logged"


def test_the_hook_sees_only_valid_jobs(url: str, fresh_queue: Callable[..., polyqueue.Queue]) -> None:
    plugin = Adds({"t": "1"})
    q = fresh_queue(url, plugins=[plugin])
    with pytest.raises(polyqueue.errors.InvalidArgument):
        q.enqueue("x", priority="high")  # type: ignore[arg-type]
    with pytest.raises(polyqueue.errors.InvalidArgument):
        q.enqueue("x", headers={"n": 1})  # type: ignore[dict-item]
    assert plugin.calls == []
    ids = q.enqueue_many([{"job_type": "a"}, {"job_type": "b", "queue": "other"}])
    assert [c[:2] for c in plugin.calls] == [("a", "default"), ("b", "other")]
    assert all(q.require(i).headers == {"t": "1"} for i in ids)


def test_a_backend_without_headers_is_not_offered_any(
    redis_url: str, fresh_queue: Callable[..., polyqueue.Queue]
) -> None:
    """The Redis plugin stores no headers: a plugin adding some must not make its enqueues fail."""
    plugin = Adds({"traceparent": "x"})
    q = fresh_queue(redis_url, plugins=[plugin])
    assert Capability.HEADERS not in q.capabilities
    job_id = q.enqueue("x")
    assert q.require(job_id).headers == {} and plugin.calls == []

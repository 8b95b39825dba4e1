"""The dashboard over HTTP (Starlette's test client, real databases): pages, actions, CSRF, tokens, prefixes, /metrics.

The browser tests (test_dashboard_browser.py) drive the same pages in headless Chromium.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

import polyqueue
from polyqueue.cli import cli
from polyqueue.testing import require_server
from polyqueue.web import DashboardSettings, create_app, serve
from polyqueue.web.app import PAGE_SIZE
from polyqueue.web.security import CSRF_COOKIE, TOKEN_COOKIE, is_loopback

starlette_testclient = pytest.importorskip("starlette.testclient")
TestClient = starlette_testclient.TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Every backend the dashboard is tried on: the built-ins, and both plugins (Redis has no job listing).
BACKENDS = ["sqlite", "postgresql", "mysql", "memory", "redis"]


def backend_url(kind: str, tmp_path: Any) -> str:
    """A URL of each kind; Redis in a database of its own (the plugin's tests use 3)."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'dash.db'}"
    if kind == "memory":
        return f"memory://dashboard-{id(tmp_path)}"
    if kind == "redis":
        return make_url(require_server("redis")).set(database="5").render_as_string(hide_password=False)
    return require_server(kind)


def csrf_of(html: str) -> str:
    """The CSRF token the page's forms carry."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def listed_ids(html: str) -> list[str]:
    """The job ids of a job-list page, in order."""
    return re.findall(r'<tr data-id="([^"]+)">', html)


def kill(q: polyqueue.Queue, queue: str = "mail", error: str = "Traceback\nValueError: bad address") -> Any:
    """A dead job of ``queue`` with one error in its history."""
    job_id = q.enqueue("send_email", {"to": "ann@example.com"}, queue=queue, max_attempts=1)
    [job] = q.claim(queue)
    q.fail(job, error)
    return job_id


@pytest.fixture
def make_client() -> Callable[..., Any]:
    """Factory of test clients over a dashboard of the given queue, closed at the end."""
    clients: list[Any] = []

    def make(q: polyqueue.Queue, settings: DashboardSettings | None = None, **kwargs: Any) -> Any:
        client = TestClient(create_app(q, settings), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_every_page_and_replay_on_every_backend(
    kind: str, tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url(kind, tmp_path))
    done_id = q.enqueue("send_email", {"to": "bob@example.com"}, queue="mail")
    [job] = q.claim("mail")
    q.complete(job, {"sent": True})
    dead_id = kill(q)
    q.enqueue("report", queue="reports", delay=3600)
    client = make_client(q)

    overview = client.get("/")
    assert overview.status_code == 200
    mail = re.search(r'<tr data-queue="mail">(.*?)</tr>', overview.text, re.S)
    assert mail, "the overview has a row per queue"
    numbers = re.findall(r'<td class="n">(?:<a [^>]*>)?([\d.]+)', mail.group(1))
    # ready, scheduled, processing, dead, and with throughput: done and dead in the last hour
    assert numbers[:4] == ["0", "0", "0", "1"]
    if "throughput" in q.capabilities:
        assert numbers[4:6] == ["1", "1"]
    reports = re.search(r'<tr data-queue="reports">(.*?)</tr>', overview.text, re.S)
    assert reports and re.findall(r'<td class="n">([\d.]+)', reports.group(1))[:2] == ["0", "1"], "scheduled"
    assert ("<svg" in overview.text) == ("throughput" in q.capabilities)

    listing = client.get("/jobs", params={"status": "dead"})
    assert listing.status_code == 200
    if "list_jobs" in q.capabilities:
        assert listed_ids(listing.text) == [str(dead_id)]
        assert listed_ids(client.get("/jobs", params={"queue": "mail"}).text) == [str(dead_id), str(done_id)]
    else:
        assert "cannot list jobs" in listing.text

    page = client.get(f"/jobs/{dead_id}")
    assert page.status_code == 200
    assert "ann@example.com" in page.text and "ValueError: bad address" in page.text
    replayed = client.post(f"/jobs/{dead_id}/replay", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert replayed.status_code == 303 and replayed.headers["location"] == f"/jobs/{dead_id}?notice=replayed"
    again = q.get(dead_id)
    assert again is not None and again.status == "pending" and again.errors, "pending, error history kept"
    assert "the job is pending again" in client.get(replayed.headers["location"]).text


def test_job_list_filters_and_keyset_pages(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    ids = q.enqueue_many([{"job_type": "a" if i % 2 else "b", "queue": "q"} for i in range(PAGE_SIZE + 10)])
    client = make_client(q)
    first = client.get("/jobs")
    assert listed_ids(first.text) == [str(i) for i in reversed(ids)][:PAGE_SIZE]
    older = re.search(r'href="([^"]+)" id="older"', first.text)
    assert older, "a full page links to the next"
    second = client.get(older.group(1).replace("&amp;", "&"))
    assert listed_ids(second.text) == [str(i) for i in reversed(ids)][PAGE_SIZE:]
    assert 'id="older"' not in second.text and "« newest" in second.text
    typed = client.get("/jobs", params={"job_type": "a", "queue": "q"})
    assert listed_ids(typed.text) == [str(i) for n, i in reversed(list(enumerate(ids))) if n % 2][:PAGE_SIZE]
    assert client.get("/jobs", params={"status": "waiting"}).status_code == 400
    assert client.get("/jobs", params={"after": "not-an-id"}).status_code == 400
    assert client.get("/jobs/999999").status_code == 404


def test_csrf_bad_missing_or_cross_origin_is_refused(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    dead_id = kill(q)
    pending_id = q.enqueue("t", queue="mail")
    client = make_client(q)
    token = csrf_of(client.get(f"/jobs/{dead_id}").text)
    assert client.cookies.get(CSRF_COOKIE) == token
    forged = token.split(".")[0] + "." + "0" * 64
    for form in ({}, {"csrf": "bad"}, {"csrf": forged}):
        assert client.post(f"/jobs/{dead_id}/replay", data=form).status_code == 403
    other = make_client(q)  # a second browser: its own cookie, so a token lifted from the first page does not pass
    other.get("/")
    assert other.post(f"/jobs/{dead_id}/replay", data={"csrf": token}).status_code == 403
    cross = client.post(f"/jobs/{dead_id}/replay", data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert client.post("/purge", data={"status": "dead", "older_than": "0s"}).status_code == 403
    assert client.post(f"/jobs/{pending_id}/cancel", data={"csrf": ""}).status_code == 403
    dead, pending = q.get(dead_id), q.get(pending_id)
    assert dead is not None and dead.status == "dead" and pending is not None and pending.status == "pending"
    assert client.post(f"/jobs/{pending_id}/cancel", data={"csrf": token}).status_code == 200
    cancelled = q.get(pending_id)
    assert cancelled is not None and cancelled.status == "cancelled"


def test_purge_action(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    kill(q)
    client = make_client(q)
    token = csrf_of(client.get("/").text)
    bad = client.post("/purge", data={"csrf": token, "status": "dead", "older_than": "soon"})
    assert bad.status_code == 400 and q.stats()["dead"] == 1
    purged = client.post("/purge", data={"csrf": token, "status": "dead", "older_than": "0s"})
    assert purged.status_code == 200 and "Purged." in purged.text and q.stats()["dead"] == 0


def test_read_only_shows_no_action_and_refuses_them(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    dead_id = kill(q)
    client = make_client(q, DashboardSettings(read_only=True))
    assert '<form method="post"' not in client.get("/").text
    page = client.get(f"/jobs/{dead_id}").text
    assert 'id="replay"' not in page and "read-only" in page
    token = client.cookies.get(CSRF_COOKIE)
    assert client.post(f"/jobs/{dead_id}/replay", data={"csrf": token}).status_code == 403
    dead = q.get(dead_id)
    assert dead is not None and dead.status == "dead"


def test_the_access_token(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    client = make_client(q, DashboardSettings(token="s3cret-token"))
    for path in ("/", "/jobs", "/metrics", "/jobs/1"):
        refused = client.get(path)
        assert refused.status_code == 401 and "s3cret" not in refused.text
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    traded = client.get("/jobs?status=dead&token=s3cret-token", follow_redirects=False)
    assert traded.status_code == 303 and traded.headers["location"] == "/jobs?status=dead", "the token leaves the URL"
    assert client.cookies.get(TOKEN_COOKIE) == "s3cret-token"
    assert client.get("/jobs?status=dead").status_code == 200, "the cookie carries it from then on"
    assert client.get("/metrics").status_code == 200


def test_beyond_loopback_needs_a_token(tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue]) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.5")
    q = fresh_queue(backend_url("sqlite", tmp_path))
    with pytest.raises(polyqueue.ConfigurationError, match="access token"):
        serve(q, host="0.0.0.0", port=0)
    with pytest.raises(polyqueue.ConfigurationError, match="root_path"):
        serve(q, root_path="pq/")
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    result = CliRunner().invoke(
        cli, ["--url", url, "dashboard", "--host", "0.0.0.0"], env={"POLYQUEUE_DASHBOARD_TOKEN": ""}
    )
    assert result.exit_code != 0 and "access token" in result.output and "Traceback" not in result.output


def test_links_and_redirects_keep_the_path_prefix(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    dead_id = kill(q)
    client = make_client(q, root_path="/pq")
    page = client.get(f"/pq/jobs/{dead_id}")
    assert page.status_code == 200
    links = re.findall(r'(?:href|action)="([^"]+)"', page.text)
    assert links and all(link.startswith("/pq/") for link in links), links
    done = client.post(f"/pq/jobs/{dead_id}/replay", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert done.headers["location"] == f"/pq/jobs/{dead_id}?notice=replayed"


def test_metrics_in_prometheus_format(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    kill(q, queue="mail")
    q.enqueue("t", queue="mail")
    metrics = make_client(q).get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'polyqueue_jobs{queue="mail",status="dead"} 1.0' in metrics.text
    assert 'polyqueue_ready_jobs{queue="mail"} 1.0' in metrics.text
    assert "# TYPE polyqueue_jobs_enqueued_total counter" in metrics.text, "the plugin's counters are served too"


def test_pause_and_resume_show_only_where_the_queue_has_them(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    q.enqueue("t", queue="mail")
    client = make_client(q)
    has_pause = callable(getattr(q, "pause", None)) and "pause" in q.capabilities
    assert ("Pause</button>" in client.get("/").text) == has_pause
    if not has_pause:
        token = client.cookies.get(CSRF_COOKIE)
        assert client.post("/queues/mail/pause", data={"csrf": token}).status_code == 404
    else:
        token = client.cookies.get(CSRF_COOKIE)
        assert client.post("/queues/mail/pause", data={"csrf": token}).status_code == 200
        assert q.paused() == ["mail"]  # type: ignore[attr-defined]
        assert "Resume</button>" in client.get("/").text
        client.post("/queues/mail/resume", data={"csrf": token})
        assert q.paused() == []  # type: ignore[attr-defined]


def test_retry_now_makes_a_waiting_retry_due(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    job_id = q.enqueue("t", queue="mail")
    [job] = q.claim("mail")
    q.fail(job, "try later", retry_in=3600)
    client = make_client(q)
    page = client.get(f"/jobs/{job_id}")
    assert 'id="retry-now"' in page.text
    done = client.post(f"/jobs/{job_id}/retry-now", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 200 and "Due now" in done.text and 'id="retry-now"' not in done.text
    assert [j.id for j in q.claim("mail")] == [job_id]


def test_a_jobs_headers_are_shown(
    tmp_path: Any, fresh_queue: Callable[..., polyqueue.Queue], make_client: Callable[..., Any]
) -> None:
    q = fresh_queue(backend_url("sqlite", tmp_path))
    if "headers" not in q.capabilities:
        pytest.skip("this queue has no job headers")
    job_id = q.enqueue("t", queue="mail", headers={"traceparent": "00-abc-def-01", "tenant": "<acme>"})
    page = make_client(q).get(f"/jobs/{job_id}").text
    table = re.search(r'<table id="headers">(.*?)</table>', page, re.S)
    assert table and "traceparent" in table.group(1) and "00-abc-def-01" in table.group(1)
    assert "&lt;acme&gt;" in table.group(1), "escaped"

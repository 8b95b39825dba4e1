"""The dashboard in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium).

Loads the overview, filters the job list, opens a dead job, clicks Replay and
checks in PostgreSQL that the job is pending again; a forged CSRF token and a
missing access token (bound beyond loopback) are refused. Each page is
screenshotted; with ``POLYQUEUE_SCREENSHOTS=docs`` the screenshots land in
``docs/`` (the ones the README shows), else in the test's temporary folder.
Without Chromium the tests skip with a message, except when
``POLYQUEUE_REQUIRE_BACKENDS`` is set (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import polyqueue
from polyqueue.testing import backends_required
from polyqueue.web import DashboardSettings, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = Path(__file__).resolve().parent.parent / "docs"
#: Seconds a page may take to load on a loaded machine.
PATIENCE = 30


def _require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"headless Chromium tests need {', '.join(missing)} (./.ci/services installs chromium-driver)"
        if backends_required():
            pytest.fail(message + " (POLYQUEUE_REQUIRE_BACKENDS is set)", pytrace=False)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _behind_proxy(app: Any, prefix: str) -> Any:
    """A reverse proxy serving the app under ``prefix``, which strips it from the path it forwards.

    It sits inside uvicorn, which puts ``--root-path`` before every path it
    receives: the browser's ``/pq/jobs`` arrives as ``/pq/pq/jobs``, and one
    prefix off is what uvicorn makes of the proxy's ``/jobs``. A request
    outside the prefix would not reach the app through such a proxy.
    """

    async def proxied(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            asked = scope["path"][len(prefix) :]
            if not asked.startswith(prefix + "/"):
                raise AssertionError(f"the browser left the prefix: {asked}")
            scope = {**scope, "path": asked, "raw_path": None}
        await app(scope, receive, send)

    return proxied


class _Server:
    """The dashboard served by uvicorn on a thread, on a free port, until stopped.

    With ``root_path`` it is served as ``polyqueue dashboard --root-path`` is
    meant to be: behind a proxy that strips that prefix.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", root_path: str = "") -> None:
        import uvicorn

        self.port = _free_port()
        served = _behind_proxy(app, root_path) if root_path else app
        config = uvicorn.Config(served, host=host, port=self.port, root_path=root_path, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + PATIENCE
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}{root_path}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(PATIENCE)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium under chromedriver, sized for screenshots."""
    _require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(PATIENCE)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def serve() -> Iterator[Callable[..., _Server]]:
    """Factory: ``serve(queue, settings, host=..., root_path=...)`` starts a dashboard, stopped afterwards."""
    servers: list[_Server] = []

    def start(q: polyqueue.Queue, settings: DashboardSettings | None = None, **kwargs: Any) -> _Server:
        server = _Server(create_app(q, settings or DashboardSettings(refresh=0)), **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], None]:
    """``shot(driver, name)``: a full-page screenshot into docs/ (POLYQUEUE_SCREENSHOTS=docs) or the temp folder."""
    folder = DOCS if os.environ.get("POLYQUEUE_SCREENSHOTS") == "docs" else tmp_path

    def shot(driver: Any, name: str) -> None:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, max(600, min(int(height) + 40, 2000)))
        path = folder / f"dashboard-{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot at {path}"
        assert path.stat().st_size > 1000

    return shot


def _wait_for(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, PATIENCE).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _history(q: polyqueue.Queue) -> dict[str, Any]:
    """A queue with some life in it: done, dead (with tracebacks), retrying, scheduled and pending jobs."""
    q.enqueue_many([{"job_type": "send_email", "payload": {"to": f"user{i}@example.com"}, "queue": "mail"}
                    for i in range(12)])  # fmt: skip
    q.enqueue_many([{"job_type": "resize_image", "payload": {"id": i, "size": [640, 480]}, "queue": "media"}
                    for i in range(8)])  # fmt: skip
    q.enqueue("nightly_report", {"day": "2026-12-01"}, queue="reports", delay=3600)
    dead = q.enqueue("send_email", {"to": "nobody@invalid"}, queue="mail", max_attempts=2, priority=5)
    for job in q.claim(["mail", "media"], limit=30):
        if job.id == dead:
            q.fail(
                job,
                'Traceback (most recent call last):\n  File "app.py", line 12, in send\n'
                "smtplib.SMTPRecipientsRefused: {'nobody@invalid': (550, 'no such user')}",
                retry_in=0,
            )
        elif job.payload.get("id") == 3:
            q.fail(job, "PIL.UnidentifiedImageError: cannot identify image file", retry_in=600)
        elif isinstance(job.payload.get("to"), str) and job.payload["to"].startswith("user1"):
            pass  # left processing
        else:
            q.complete(job, {"ok": True})
    [again] = q.claim("mail", job_types=["send_email"], limit=1) or [None]
    while again is not None and again.id != dead:
        q.complete(again)
        [again] = q.claim("mail", job_types=["send_email"], limit=1) or [None]
    assert again is not None
    q.fail(again, "Traceback (most recent call last):\n  File \"app.py\", line 12, in send\n"
                  "smtplib.SMTPRecipientsRefused: {'nobody@invalid': (550, 'no such user')}")  # fmt: skip
    return {"dead": dead}


def test_overview_filter_open_a_dead_job_and_replay_it(
    pg_url: str, fresh_queue: Callable[..., polyqueue.Queue], browser: Any, serve: Callable[..., _Server],
    shots: Callable[[Any, str], None],
) -> None:  # fmt: skip
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    q = fresh_queue(pg_url)
    dead = _history(q)["dead"]
    dashboard = serve(q)

    browser.get(dashboard.base + "/")
    table = _wait_for(browser, "#queues")
    assert "mail" in table.text and "media" in table.text and "reports" in table.text
    shots(browser, "overview")

    browser.find_element(By.LINK_TEXT, "Jobs").click()
    _wait_for(browser, "#filters")
    Select(browser.find_element(By.NAME, "status")).select_by_visible_text("dead")
    browser.find_element(By.NAME, "queue").send_keys("mail")
    browser.find_element(By.CSS_SELECTOR, "#filters button").click()
    _wait_for(browser, f'#jobs tr[data-id="{dead}"]')
    rows = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    assert [row.get_attribute("data-id") for row in rows] == [str(dead)], "the filter leaves the one dead mail job"
    browser.get(dashboard.base + "/jobs")  # the unfiltered list makes the better picture
    _wait_for(browser, "#jobs")
    shots(browser, "jobs")
    browser.back()
    _wait_for(browser, f'#jobs tr[data-id="{dead}"]')

    browser.find_element(By.LINK_TEXT, str(dead)).click()
    assert _wait_for(browser, "#status").text == "dead"
    assert "SMTPRecipientsRefused" in browser.find_element(By.ID, "errors").text
    assert "nobody@invalid" in browser.find_element(By.ID, "payload").text
    shots(browser, "job")

    browser.find_element(By.ID, "replay").click()
    _wait_for(browser, ".notice")
    assert _wait_for(browser, "#status").text == "pending"
    job = q.get(dead)
    assert job is not None and (job.status, job.attempts) == ("pending", 0), "replayed in the database"
    assert len(job.errors) == 2, "the error history stays"


def test_a_forged_csrf_token_is_refused(
    sqlite_url: str, fresh_queue: Callable[..., polyqueue.Queue], browser: Any, serve: Callable[..., _Server]
) -> None:
    from selenium.webdriver.common.by import By

    q = fresh_queue(sqlite_url)
    dead = q.enqueue("t", queue="mail", max_attempts=1)
    [job] = q.claim("mail")
    q.fail(job, "boom")
    dashboard = serve(q)
    browser.get(f"{dashboard.base}/jobs/{dead}")
    _wait_for(browser, "#replay")
    browser.execute_script("document.querySelector('input[name=csrf]').value = 'forged.0000'")
    browser.find_element(By.ID, "replay").click()
    body = _wait_for(browser, "body")
    assert "CSRF" in body.text
    still = q.get(dead)
    assert still is not None and still.status == "dead"


def test_beyond_loopback_a_missing_token_is_refused(
    sqlite_url: str, fresh_queue: Callable[..., polyqueue.Queue], browser: Any, serve: Callable[..., _Server]
) -> None:
    q = fresh_queue(sqlite_url)
    q.enqueue("t", queue="mail")
    dashboard = serve(q, DashboardSettings(token="tok-123", refresh=0), host="0.0.0.0", root_path="/pq")
    browser.get(dashboard.base + "/")
    assert "access token is required" in _wait_for(browser, "body").text
    browser.get(dashboard.base + "/jobs?token=tok-123")
    _wait_for(browser, "#jobs")
    assert browser.current_url == dashboard.base + "/jobs", "the token left the address bar"
    browser.get(dashboard.base + "/")
    assert "mail" in _wait_for(browser, "#queues").text, "the cookie carries the token, under the path prefix"

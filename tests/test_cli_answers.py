"""Issue 12: every mistake at the command line gets a fast, exact one-line answer.

Each test runs the installed ``polyqueue`` command (the console script in
this virtualenv) as a user would, on the real servers where the storage
matters.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import polyqueue
from polyqueue.errors import InvalidArgument
from polyqueue.testing import drop_schema, require_server, unique_prefix

#: The console script ``pip install`` put next to this interpreter.
POLYQUEUE = str(Path(sys.executable).parent / "polyqueue")


def polyqueue_cmd(
    *args: str,
    url: str | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed command; ``url`` goes in POLYQUEUE_URL (never the test runner's own)."""
    environment = {k: v for k, v in os.environ.items() if k != "POLYQUEUE_URL"}
    if url is not None:
        environment["POLYQUEUE_URL"] = url
    environment["COLUMNS"] = "300"
    environment.update(env or {})
    return subprocess.run(
        [POLYQUEUE, *args], capture_output=True, text=True, env=environment, cwd=cwd, input=stdin, timeout=180
    )


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Assert a clean failure: non-zero, no traceback, one line on stderr holding every fragment; return it."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL with tables of its own on each SQL backend (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'q.db'}"
        return
    base = require_server(request.param)
    url = f"{base}{'&' if '?' in base else '?'}table_prefix={unique_prefix()}"
    yield url
    with polyqueue.connect(url) as q:
        drop_schema(q)


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert polyqueue_cmd("migrate", url=url).returncode == 0
    return url


# --- point 3: dynamic text is never rich markup ---------------------------------------------------------


FAILING = """
def setup(worker):
    def explode(job):
        raise ValueError("[bold]broken[/bold] " + job.payload["why"])
    worker.register("[red]explode", explode)
"""


def test_names_errors_and_hints_print_as_typed_never_as_markup(tmp_path: Path, sqlite_file: str) -> None:
    url = sqlite_file
    missing = one_line_error(polyqueue_cmd("cancel", "[blue]zz", url=url), "job [blue]zz does not exist")
    assert "job zz" not in missing
    enqueued = polyqueue_cmd(
        "enqueue", "[red]explode", '{"why": "[i]x"}', "--queue", "[green]q", "--max-attempts", "1", url=url
    )
    assert enqueued.returncode == 0, enqueued.stderr
    (tmp_path / "failing.py").write_text(FAILING)
    worked = polyqueue_cmd("worker", "failing", "--queues", "[green]q", "--burst", url=url, cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    assert "queues=[green]q" in worked.stderr
    assert "[green]q" in polyqueue_cmd("stats", url=url).stdout
    dead = polyqueue_cmd("dead", url=url).stdout
    assert "[green]q" in dead and "[red]explode" in dead and "ValueError: [bold]broken[/bold] [i]x" in dead
    # A driver hint with brackets (the pip extra) survives whole: hide PyMySQL as if it were not installed.
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "pymysql.py").write_text("raise ModuleNotFoundError(\"No module named 'pymysql'\", name='pymysql')\n")
    no_driver = polyqueue_cmd(
        "stats", url="mysql+pymysql://root@127.0.0.1:3306/test", env={"PYTHONPATH": str(hidden)}, cwd=tmp_path
    )
    one_line_error(no_driver, "pip install 'polyqueue[mysql]'")


# --- point 4: failures logged; dead keeps the whole line; show prints everything ------------------------------


HISTORY = """
def setup(worker):
    def flaky(job):
        raise RuntimeError(f"attempt {job.attempts} of {job.job_type} failed: " + "x" * 90 + " END")
    worker.register("flaky", flaky)
"""


#: An error history entry's time as every backend writes it: ISO 8601 UTC to the millisecond.
ENTRY_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_failures_are_logged_and_show_prints_every_field_and_the_whole_history(tmp_path: Path, any_url: str) -> None:
    url = f"{any_url}{'&' if '?' in any_url else '?'}backoff_base=0.001&backoff_max=0.001"
    assert polyqueue_cmd("migrate", url=url).returncode == 0
    job_id = polyqueue_cmd("enqueue", "flaky", '{"n": [1, 2]}', "--max-attempts", "3", url=url).stdout.strip()
    (tmp_path / "flaky_handlers.py").write_text(HISTORY)
    logged = ""
    for _ in range(10):  # a burst ends when no retry is due yet: run bursts until the job is dead
        worked = polyqueue_cmd("worker", "flaky_handlers", "--burst", url=url, cwd=tmp_path)
        assert worked.returncode == 0, worked.stderr
        logged += worked.stderr
        if json.loads(polyqueue_cmd("show", job_id, "--json", url=url).stdout)["status"] == "dead":
            break
    # Logged without -v: job id, type, attempt, what happens next, the exception, its traceback and the line.
    for attempt, outcome in ((1, "retry in"), (2, "retry in"), (3, "dead")):
        assert f"job {job_id} (flaky) attempt {attempt}/3 failed, {outcome}" in logged, logged
        assert f"RuntimeError: attempt {attempt} of flaky failed" in logged
    assert logged.count("Traceback (most recent call last)") == 3
    assert "flaky_handlers.py\", line 4, in flaky" in logged
    assert "ERROR polyqueue.session" in logged and "WARNING polyqueue.session" in logged

    dead = polyqueue_cmd("dead", url=url)
    assert dead.returncode == 0 and "x" * 90 + " END" in dead.stdout  # the whole first line, not 80 characters

    shown = polyqueue_cmd("show", job_id, url=url)
    assert shown.returncode == 0, shown.stderr
    for field in (
        "id", "queue", "job_type", "payload", "priority", "status", "attempts", "max_attempts", "run_at",
        "created_at", "finished_at", "locked_by", "lease_expires_at", "last_error", "dedupe_key", "result",
        "lease_token", "errors", "dedupe_for",
    ):  # fmt: skip
        assert re.search(rf"^\W*{field}\s", shown.stdout, re.MULTILINE), field
    assert '{"n":[1,2]}' in shown.stdout
    for attempt in (1, 2, 3):
        assert re.search(rf"error {attempt} of 3: attempt {attempt}, on \S+, at {ENTRY_TIME}$", shown.stdout, re.M)
        assert f"RuntimeError: attempt {attempt} of flaky failed" in shown.stdout
    assert shown.stdout.count("flaky_handlers.py") >= 3  # each entry keeps its traceback

    as_json = json.loads(polyqueue_cmd("show", job_id, "--json", url=url).stdout)
    assert as_json["status"] == "dead" and as_json["attempts"] == 3 and as_json["payload"] == {"n": [1, 2]}
    assert [entry["attempt"] for entry in as_json["errors"]] == [1, 2, 3]
    assert all(re.fullmatch(ENTRY_TIME, entry["at"]) for entry in as_json["errors"])
    assert set(as_json) >= {"created_at", "finished_at", "run_at", "last_error", "lease_token", "dedupe_for"}

    one_line_error(polyqueue_cmd("show", "424242", url=url), "no job with id '424242'")


def test_the_api_logs_failures_recorded_by_hand(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with polyqueue.connect(f"sqlite:///{tmp_path / 'q.db'}") as q:
        q.migrate()
        q.enqueue("t", max_attempts=2)
        caplog.set_level("INFO", logger="polyqueue.session")
        [job] = q.claim()
        q.fail(job, KeyError("first"), retry_in=0)
        [job] = q.claim()
        q.fail(job, "second")
    warning, error = caplog.records
    assert warning.levelname == "WARNING" and "attempt 1/2 failed, retry in 0.0s: KeyError: 'first'" in warning.message
    assert warning.exc_info is not None and warning.exc_info[0] is KeyError
    assert error.levelname == "ERROR" and "attempt 2/2 failed, dead: second" in error.message


# --- point 5: queue names ---------------------------------------------------------------------------------


LISTENER = """
def setup(worker):
    worker.register("t", lambda job: job.queue)
"""


def test_queue_names_with_outer_blanks_are_refused_and_lists_are_stripped(tmp_path: Path, sqlite_file: str) -> None:
    url = sqlite_file
    one_line_error(polyqueue_cmd("enqueue", "t", "--queue", "emails ", url=url), "'emails '", "whitespace")
    one_line_error(polyqueue_cmd("stats", "--queue", " emails", url=url), "' emails'", "whitespace")
    assert polyqueue_cmd("stats", url=url).stdout.strip() == "no jobs"  # nothing half-stored
    for queue in ("emails", "payments"):
        assert polyqueue_cmd("enqueue", "t", "--queue", queue, url=url).returncode == 0
    (tmp_path / "listener.py").write_text(LISTENER)
    worked = polyqueue_cmd("worker", "listener", "--queues", "emails, payments", "--burst", url=url, cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    assert "queues=emails, payments" in worked.stderr and "2 job(s) succeeded" in worked.stderr
    one_line_error(polyqueue_cmd("worker", "listener", "--queues", "emails,,payments", url=url, cwd=tmp_path), "empty")
    misspelt = one_line_error(polyqueue_cmd("stats", "--queue", "emials", url=url), "'emials' has no jobs at all")
    assert "emails, payments" in misspelt
    one_line_error(polyqueue_cmd("stats", "--queue", "emials", "--json", url=url), "'emials' has no jobs at all")
    one_line_error(polyqueue_cmd("stats", "--queue", "emials", "--by-type", url=url), "with jobs: emails, payments")
    assert json.loads(polyqueue_cmd("stats", "--queue", "emails", "--json", url=url).stdout)["emails"]["done"] == 1


def test_the_api_refuses_queue_names_with_outer_whitespace(tmp_path: Path) -> None:
    with polyqueue.connect(f"sqlite:///{tmp_path / 'q.db'}") as q:
        q.migrate()
        calls: list[Any] = [
            lambda: q.enqueue("t", queue="emails "),
            lambda: q.enqueue_many([{"job_type": "t"}, {"job_type": "t", "queue": "\temails"}]),
            lambda: q.claim(["emails", "payments\n"]),
            lambda: q.stats(" emails"),
            lambda: q.depth("emails "),
            lambda: q.dead_jobs("emails "),
            lambda: q.replay(queue="emails "),
            lambda: polyqueue.Worker(q, queues=["emails "]),
        ]
        for call in calls:
            with pytest.raises(InvalidArgument, match="leading or trailing whitespace"):
                call()
        assert q.stats()["pending"] == 0  # the batch with one bad name stored nothing
        assert q.enqueue("t", queue="two words") is not None  # inner blanks are fine


# --- point 6: --url after the subcommand ------------------------------------------------------------------


def test_url_is_accepted_after_every_subcommand(tmp_path: Path) -> None:
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    here = f"sqlite:///{tmp_path / 'here.db'}"
    assert polyqueue_cmd("migrate", "--url", here, url=elsewhere).returncode == 0
    assert (tmp_path / "here.db").exists() and not (tmp_path / "elsewhere.db").exists()
    job_id = polyqueue_cmd("enqueue", "t", "--url", here, url=elsewhere).stdout.strip()
    assert polyqueue_cmd("stats", "--url", here, "--json").stdout.count('"pending": 1') == 1
    assert polyqueue_cmd("--url", elsewhere, "show", job_id, "--url", here).returncode == 0  # the later one wins
    assert polyqueue_cmd("cancel", job_id, "--url", here).returncode == 0
    assert "no dead jobs" in polyqueue_cmd("dead", "--url", here).stdout
    assert "no schedules" in polyqueue_cmd("cron", "--url", here).stdout
    assert "replayed 0" in polyqueue_cmd("replay", "--all", "--url", here).stdout
    assert "purged 0" in polyqueue_cmd("purge", "--url", here).stdout
    (tmp_path / "listener.py").write_text(LISTENER)
    assert polyqueue_cmd("worker", "listener", "--burst", "--url", here, cwd=tmp_path).returncode == 0
    commands = ("migrate", "enqueue", "worker", "stats", "show", "cron", "dead", "replay", "cancel", "purge", "demo")
    for command in commands:
        assert "--url" in polyqueue_cmd(command, "--help").stdout, command
    assert not (tmp_path / "elsewhere.db").exists()


# --- point 7: the demo's hint runs as printed -----------------------------------------------------------


def test_the_demo_hint_runs_as_printed_without_the_virtualenv_on_path(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    demo = polyqueue_cmd("demo", "--jobs", "20", cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stderr
    [hint] = [line for line in demo.stdout.splitlines() if line.startswith("Try: ")]
    commands = [command.strip() for command in hint.removeprefix("Try: ").split(",")]
    assert commands[0].endswith("polyqueue stats") and commands[0] != "polyqueue stats"
    for command in commands[:2]:
        ran = subprocess.run(
            shlex.split(command), capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env}, timeout=180
        )
        assert ran.returncode == 0, (command, ran.stderr)
    assert "payments" in ran.stdout  # `dead` read the demo's database


# --- point 8: ready and scheduled are separate columns --------------------------------------------------------


def row(table: str, name: str) -> list[int]:
    """The numbers of one row of a rich table printed as text."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃]", line) if cell.strip()]
        if cells and cells[0] == name:
            return [int(cell) for cell in cells[1:]]
    raise AssertionError(f"no row {name!r} in\n{table}")


def test_stats_shows_ready_and_scheduled_apart_and_the_total_adds_up(any_url: str) -> None:
    url = any_url
    assert polyqueue_cmd("migrate", url=url).returncode == 0
    for args in (("--queue", "a"), ("--queue", "a"), ("--queue", "a", "--delay", "1h"), ("--queue", "b")):
        assert polyqueue_cmd("enqueue", "t", *args, url=url).returncode == 0
    table = polyqueue_cmd("stats", url=url).stdout
    header = [cell.strip() for cell in re.split(r"[│┃]", table.splitlines()[2]) if cell.strip()]
    assert header == ["queue", "ready", "scheduled", "processing", "done", "dead", "cancelled"]
    assert row(table, "a") == [2, 1, 0, 0, 0, 0]
    assert row(table, "b") == [1, 0, 0, 0, 0, 0]
    assert row(table, "total") == [3, 1, 0, 0, 0, 0] and sum(row(table, "total")) == 4  # four jobs, counted once
    api = json.loads(polyqueue_cmd("stats", "--json", url=url).stdout)
    assert api["a"]["pending"] == 3 and api["a"]["scheduled"] == 1  # the API's keys are unchanged


# --- point 13: payloads, handler modules, replay, tools -------------------------------------------------------


def test_large_payloads_come_from_stdin_or_a_file(tmp_path: Path, sqlite_file: str) -> None:
    url = sqlite_file
    payload = {"rows": ["r" * 100] * 3000}  # ~310 KB: more than a shell passes as one argument
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    from_file = polyqueue_cmd("enqueue", "t", "@payload.json", url=url, cwd=tmp_path)
    from_stdin = polyqueue_cmd("enqueue", "t", "-", url=url, stdin=json.dumps(payload))
    for result in (from_file, from_stdin):
        assert result.returncode == 0, result.stderr
        shown = json.loads(polyqueue_cmd("show", result.stdout.strip(), "--json", url=url).stdout)
        assert shown["payload"] == payload
    one_line_error(polyqueue_cmd("enqueue", "t", "@nope.json", url=url, cwd=tmp_path), "cannot read", "@nope.json")
    one_line_error(polyqueue_cmd("enqueue", "t", "-", url=url, stdin="{oops"), "standard input is not valid JSON")
    assert json.loads(polyqueue_cmd("stats", "--json", url=url).stdout)["default"]["pending"] == 2


def test_handler_module_mistakes_name_the_real_cause(tmp_path: Path, sqlite_file: str) -> None:
    url = sqlite_file
    (tmp_path / "broken_import.py").write_text("X = 1\nY = 1 / 0\n")
    (tmp_path / "needs_missing.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "fine.py").write_text(LISTENER)
    one_line_error(
        polyqueue_cmd("worker", "broken_import", url=url, cwd=tmp_path),
        "'broken_import' raised ZeroDivisionError on import: division by zero", "broken_import.py, line 2",
    )  # fmt: skip
    one_line_error(
        polyqueue_cmd("worker", "needs_missing", url=url, cwd=tmp_path),
        "ModuleNotFoundError", "no_such_dependency_xyz", "needs_missing.py, line 1",
    )  # fmt: skip
    one_line_error(polyqueue_cmd("worker", "fine:nosuch", url=url, cwd=tmp_path), "'fine' has no attribute 'nosuch'")
    one_line_error(polyqueue_cmd("worker", "no_such_module_xyz", url=url, cwd=tmp_path), "cannot import")


def test_replay_says_why_nothing_was_replayed(sqlite_file: str) -> None:
    url = sqlite_file
    pending = polyqueue_cmd("enqueue", "t", url=url).stdout.strip()
    for job_id, reason in (("999", "no such job"), ("abc", "no such job"), (pending, "it is pending, not dead")):
        result = polyqueue_cmd("replay", job_id, url=url)
        assert result.returncode == 1
        assert result.stdout.splitlines() == ["replayed 0 job(s)", f"skipped {job_id}: {reason}"]


BLOCK = """
import sys
for name in {names!r}:
    sys.modules[name] = None
"""


def test_tools_without_their_extras_name_what_to_install(tmp_path: Path) -> None:
    def without(*names: str) -> dict[str, str]:
        blocker = tmp_path / "-".join(names)
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(BLOCK.format(names=names))
        return {"PYTHONPATH": str(blocker)}

    one_line_error(
        polyqueue_cmd("conformance", "sqlite:///x.db", env=without("pytest")), "pip install 'polyqueue[conformance]'"
    )
    one_line_error(polyqueue_cmd("compat", env=without("pytest")), "pip install 'polyqueue[conformance]'")
    one_line_error(polyqueue_cmd("bench", env=without("polyqueue_bench")), "harness is not installed", "make bench")


def test_every_bench_option_has_help() -> None:
    from polyqueue_bench.cli import parser

    shown = polyqueue_cmd("bench", "--help")
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    for action in parser()._actions:
        assert action.help, action.option_strings
        assert " ".join(action.help.split()) in text


def test_show_lists_a_lease_expiry_with_its_time_and_an_old_entry_without_one(sqlite_file: str) -> None:
    with polyqueue.connect(sqlite_file) as q:
        job_id = q.enqueue("t", max_attempts=5)
        with q.backend.engine.begin() as conn:  # type: ignore[attr-defined]
            # An entry as versions before entry times wrote it: no "at".
            old = json.dumps([{"attempt": 0, "error": "RuntimeError: from before", "worker": "w-old"}])
            conn.exec_driver_sql("UPDATE polyqueue_jobs SET errors = ? WHERE id = ?", (old, job_id))
        (held,) = q.claim(lease=0.3, worker_id="w-lost")
        deadline = (held.lease_expires_at or q.backend.db_now()) + timedelta(milliseconds=50)
        while q.backend.db_now() < deadline:
            time.sleep(0.05)
        (again,) = q.claim(lease=30, worker_id="w-next")
        q.fail(again, "ValueError: after", retry_in=0)
    shown = polyqueue_cmd("show", str(job_id), url=sqlite_file)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^error 1 of 3: attempt 0, on w-old$", shown.stdout, re.M), shown.stdout
    assert re.search(rf"^error 2 of 3: attempt 1, on w-lost, at {ENTRY_TIME}$", shown.stdout, re.M)
    assert "lease expired while held by w-lost" in shown.stdout
    assert re.search(rf"^error 3 of 3: attempt 2, on w-next, at {ENTRY_TIME}$", shown.stdout, re.M)
    history = shown.stdout[shown.stdout.index("error 1 of 3") :]  # the job table above shows the fields too
    assert history.index("from before") < history.index("lease expired") < history.index("ValueError: after")

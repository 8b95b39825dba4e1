"""The command line, run as a real process: one-line errors, non-zero exits, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HANDLERS = """
def setup(worker):
    worker.register("greet", lambda job: "hello " + job.payload["name"])
    worker.register("boom", lambda job: 1 / 0)
"""


def run(*args: str, url: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "POLYQUEUE_URL"}
    if url is not None:
        env["POLYQUEUE_URL"] = url
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "polyqueue.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def assert_clean_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


def test_full_cycle(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert_clean_error(run("stats", url=url), "polyqueue migrate")
    assert run("migrate", url=url).returncode == 0
    first = run("enqueue", "greet", '{"name": "ada"}', "--queue", "q1", url=url)
    assert first.returncode == 0 and first.stdout.strip().isdigit()
    assert run("enqueue", "boom", "--queue", "q1", "--max-attempts", "1", url=url).returncode == 0
    assert run("enqueue", "resize", "--queue", "q1", url=url).returncode == 0  # no handler for it anywhere
    delayed = run("enqueue", "greet", '{"name": "later"}', "--queue", "q1", "--delay", "1h", url=url)
    assert delayed.returncode == 0
    (tmp_path / "handlers.py").write_text(HANDLERS)
    worked = run("worker", "handlers", "--queues", "q1", "--burst", url=url, cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    stats = json.loads(run("stats", "--json", url=url).stdout)
    assert stats["q1"]["done"] == 1 and stats["q1"]["dead"] == 1 and stats["q1"]["scheduled"] == 1
    table = run("stats", url=url).stdout
    assert "q1" in table and "scheduled" in table
    by_type = json.loads(run("stats", "--by-type", "--json", url=url).stdout)
    assert by_type["q1"]["resize"]["pending"] == 1 and by_type["q1"]["greet"]["done"] == 1
    assert "q1 / resize" in run("stats", "--by-type", url=url).stdout
    dead = run("dead", url=url)
    assert "ZeroDivisionError" in dead.stdout
    replayed = run("replay", "--all", url=url)
    assert "replayed 1" in replayed.stdout
    assert run("cancel", delayed.stdout.strip(), url=url).returncode == 0
    purged = run("purge", "--older-than", "0", url=url)
    assert purged.returncode == 0 and "purged 1 done" in purged.stdout


CRON_HANDLERS = """
def setup(worker):
    worker.periodic("* * * * * *", "tick", name="every-second")
    worker.register("tick", lambda job: None)
"""


def test_cron_lists_schedules_and_their_fires(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert run("migrate", url=url).returncode == 0
    assert "no schedules" in run("cron", url=url).stdout
    (tmp_path / "cronjobs.py").write_text(CRON_HANDLERS)
    worker = subprocess.Popen(
        [sys.executable, "-m", "polyqueue.cli", "--url", url, "worker", "cronjobs"], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "job" not in run("cron", url=url).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        worker.terminate()
        assert worker.wait(60) == 0
    listed = run("cron", url=url)
    assert listed.returncode == 0 and "every-second" in listed.stdout and "(job " in listed.stdout
    history = run("cron", "--history", "every-second", url=url)
    assert history.returncode == 0 and "fires of every-second" in history.stdout
    assert_clean_error(run("cron", "--history", "nope", url=url), "never fired")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("enqueue", "t", "{not json"), "not valid JSON"),
        (("enqueue", "t", "--queue", ""), "queue name"),
        (("enqueue", "t", "--delay", "soon"), "duration"),
        (("purge", "--older-than", "eventually"), "duration"),
        (("worker", "no_such_module_xyz"), "cannot import"),
        (("replay",), "IDS"),
        (("replay", "--all", "--rate", "0/s"), "more than zero"),
        (("enqueue", "t", "--dedupe-for", "1h"), "dedupe_for needs a dedupe_key"),
        (("enqueue", "t", "--dedupe-key", "k", "--dedupe-for", "soon"), "duration"),
    ],
)
def test_bad_input_prints_one_line(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    run("migrate", url=url)
    assert_clean_error(run(*args, url=url, cwd=tmp_path), fragment)


def test_unknown_scheme_and_unreachable_server_hide_the_password(tmp_path: Path) -> None:
    result = run("--url", "nosuchdb://admin:hunter2secret@db.example/x", "stats")
    assert_clean_error(result, "unknown URL scheme 'nosuchdb'")
    assert "sqlite" in result.stderr and "entry-point group" in result.stderr
    assert "hunter2secret" not in result.stderr
    down = run("--url", "postgresql://admin:hunter2secret@127.0.0.1:1/x?reconnect_seconds=0", "stats")
    assert_clean_error(down, "unavailable")
    assert "hunter2secret" not in down.stderr + down.stdout


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    result = run("demo", "--jobs", "60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "polyqueue.db").exists()
    assert "final stats" in result.stdout and "dead letters" in result.stdout
    assert "60 jobs settled" in result.stdout


def test_bench_without_the_harness_installed_says_how_to_install_it() -> None:
    hide_harness = "import sys; sys.modules['polyqueue_bench'] = None; from polyqueue.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", hide_harness, "bench", "--quick"], capture_output=True, text=True, timeout=120
    )
    assert_clean_error(result, "the benchmark harness is not installed")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pip install -e 'benchmarks[peers]'" in result.stderr


SLOW_HANDLERS = """
import time


def spin(job):
    while True:
        pass


def setup(worker):
    worker.register("spin", spin)
"""


def test_headers_timeouts_process_workers_and_cancelling_a_running_job(tmp_path: Path) -> None:
    import polyqueue

    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert run("migrate", url=url).returncode == 0
    made = run(
        "enqueue", "spin", "--header", "tenant=acme", "--header", "trace=0-1", "--timeout", "1s", "--max-attempts", "1",
        url=url,
    )
    assert made.returncode == 0, made.stderr
    assert_clean_error(run("enqueue", "spin", "--header", "novalue", url=url), "NAME=VALUE")
    (tmp_path / "slow.py").write_text(SLOW_HANDLERS)
    worked = run("worker", "slow.py", "--burst", "--execution", "process", url=url, cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr
    with polyqueue.connect(url) as q:
        job = q.require(int(made.stdout))
        assert job.status == "dead" and job.headers == {"tenant": "acme", "trace": "0-1"} and job.timeout == 1.0
        assert "timeout of 1s" in (job.last_error or "")
        running = q.enqueue("spin")
        (claimed,) = q.claim()
        assert claimed.id == running
    asked = run("cancel", str(running), url=url)
    assert asked.returncode == 0 and "asked" in asked.stdout
    with polyqueue.connect(url) as q:
        assert q.require(running).cancel_requested
def test_pause_resume_and_limits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    assert run("migrate", url=url).returncode == 0
    shown = run("limits", "images", "--concurrency", "10", "--rate", "50/s", "--per-key", "1", url=url)
    assert shown.returncode == 0, shown.stderr
    assert "images" in shown.stdout and "10" in shown.stdout and "50" in shown.stdout
    assert run("pause", "images", url=url).stdout.strip() == "paused images"
    listed = run("limits", url=url)
    assert "images" in listed.stdout and "yes" in listed.stdout
    assert run("enqueue", "resize", "--queue", "images", "--concurrency-key", "tenant-1", url=url).returncode == 0
    assert run("resume", "images", url=url).stdout.strip() == "resumed images"
    assert "yes" not in run("limits", url=url).stdout
    cleared = run("limits", "images", "--clear", url=url)
    assert cleared.returncode == 0 and "10" not in cleared.stdout
    assert_clean_error(run("limits", "images", "--rate", "fast", url=url), "rate")
    assert_clean_error(run("limits", "images", "--concurrency", "0", url=url), "concurrency")
    assert_clean_error(run("limits", "--concurrency", "3", url=url), "QUEUE")
    assert_clean_error(run("pause", "", url=url), "queue name")

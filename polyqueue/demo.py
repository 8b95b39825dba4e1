"""``polyqueue demo``: the main job on the embedded default, end to end.

Migrates the queue database (``sqlite:///polyqueue.db`` unless a URL is
given), enqueues a realistic mix -- e-mails that sometimes time out once,
image resizes, card charges (a few always declined, so they go dead),
delayed CRM syncs, slow low-priority reports -- runs a worker with a
progress bar until everything has settled, and prints the stats and the
dead-letter table.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .job import Job
from .queue import connect
from .tables import dead_table, stats_table
from .worker import Worker

__all__ = ["DEMO_QUEUES", "run_demo", "runnable_command"]

DEMO_QUEUES = ("emails", "images", "payments", "crm", "reports")


class TransientSMTPError(Exception):
    """The mail server timed out; worth retrying."""


class CardDeclined(Exception):
    """The bank said no; retrying will not help."""


def _send_email(job: Job) -> dict[str, Any]:
    time.sleep(random.uniform(0.002, 0.01))
    if job.payload.get("flaky") and job.attempts == 1:
        raise TransientSMTPError(f"timeout talking to smtp for {job.payload['to']}")
    return {"delivered_to": job.payload["to"]}


def _resize_image(job: Job) -> dict[str, Any]:
    time.sleep(random.uniform(0.01, 0.04))
    width = int(job.payload["width"])
    return {"thumbnail": f"{job.payload['image']}@{width // 4}w"}


def _charge_card(job: Job) -> dict[str, Any]:
    time.sleep(random.uniform(0.005, 0.02))
    if job.payload.get("declined"):
        raise CardDeclined(f"card ending {job.payload['last4']} declined (insufficient funds)")
    return {"charged_cents": job.payload["cents"]}


def _sync_crm(job: Job) -> str:
    time.sleep(random.uniform(0.005, 0.015))
    return f"synced account {job.payload['account']}"


def _generate_report(job: Job) -> dict[str, Any]:
    time.sleep(random.uniform(0.05, 0.15))
    return {"rows": random.randint(100, 5000)}


HANDLERS = {
    "send_email": _send_email,
    "resize_image": _resize_image,
    "charge_card": _charge_card,
    "sync_crm": _sync_crm,
    "generate_report": _generate_report,
}


def demo_jobs(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """A realistic mix of ``count`` jobs (deterministic for a given ``rng``)."""
    jobs: list[dict[str, Any]] = []
    declined_left = max(1, count // 60)
    for i in range(count):
        kind = rng.choices(["email", "image", "charge", "crm", "report"], weights=[40, 25, 15, 10, 10])[0]
        if kind == "email":
            jobs.append(
                {
                    "job_type": "send_email",
                    "queue": "emails",
                    "payload": {"to": f"user{i}@example.com", "flaky": rng.random() < 0.12},
                }
            )
        elif kind == "image":
            jobs.append(
                {"job_type": "resize_image", "queue": "images", "payload": {"image": f"img-{i}.png", "width": 1600}}
            )
        elif kind == "charge":
            declined = declined_left > 0 and rng.random() < 0.35
            declined_left -= int(declined)
            jobs.append(
                {
                    "job_type": "charge_card",
                    "queue": "payments",
                    "priority": 10,
                    "max_attempts": 3,
                    "payload": {
                        "cents": rng.randint(199, 9999),
                        "last4": f"{rng.randint(0, 9999):04d}",
                        "declined": declined,
                    },
                }
            )
        elif kind == "crm":
            jobs.append(
                {
                    "job_type": "sync_crm",
                    "queue": "crm",
                    "delay": round(rng.uniform(0.5, 2.5), 2),
                    "payload": {"account": rng.randint(1000, 9999)},
                }
            )
        else:
            jobs.append(
                {"job_type": "generate_report", "queue": "reports", "priority": -5, "payload": {"month": i % 12 + 1}}
            )
    return jobs


def _settled(counts: dict[str, int]) -> int:
    return counts["done"] + counts["dead"] + counts["cancelled"]


def runnable_command() -> str:
    """How to run the ``polyqueue`` command from here, as it can be typed: ``polyqueue`` when it is on PATH.

    After ``make demo`` the command lives in ``.venv/bin``, which is not on
    PATH unless the virtualenv is activated: then the hint names that path.
    """
    script = Path(sys.argv[0])
    on_path = shutil.which("polyqueue")
    this_script = script.name == "polyqueue" and script.exists()
    if on_path is not None and (not this_script or Path(on_path).resolve() == script.resolve()):
        return "polyqueue"
    if this_script:
        return _relative(script)
    return f"{_relative(Path(sys.executable))} -m polyqueue"


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (with a ``/`` so a shell runs it)."""
    absolute = path.absolute()
    try:
        below = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    return str(below) if os.sep in str(below) else f".{os.sep}{below}"


@contextmanager
def _failures_quiet() -> Iterator[None]:
    """Keep the demo's planned failures out of its output unless logging is verbose (``polyqueue -v demo``)."""
    session_log = logging.getLogger("polyqueue.session")
    if session_log.isEnabledFor(logging.INFO):
        yield
        return
    before = session_log.level
    session_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        session_log.setLevel(before)


def run_demo(url: str | None, *, count: int = 240, concurrency: int = 8, console: Console | None = None) -> None:
    """Run the demo and print what happened."""

    console = console or Console()
    rng = random.Random(42)
    with connect(url, backoff_base=0.25, backoff_max=2.0) as q, _failures_quiet():
        q.migrate()
        console.print(f"[bold]polyqueue demo[/] on {escape(q.backend.describe())}", highlight=False)
        before = sum(_settled(q.stats(name)) for name in DEMO_QUEUES)
        started = time.perf_counter()
        ids = q.enqueue_many(demo_jobs(count, rng))
        console.print(f"enqueued {len(ids)} jobs in one batch ({time.perf_counter() - started:.3f}s)")

        worker = Worker(q, queues=DEMO_QUEUES, concurrency=concurrency, lease=10, poll_interval=(0.02, 0.2))
        for job_type, fn in HANDLERS.items():
            worker.register(job_type, fn)
        runner = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
        runner.start()
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("draining", total=len(ids))
            while True:
                settled = sum(_settled(q.stats(name)) for name in DEMO_QUEUES) - before
                progress.update(task, completed=min(settled, len(ids)))
                if settled >= len(ids):
                    break
                time.sleep(0.1)
        worker.stop()
        runner.join(30)
        elapsed = time.perf_counter() - started
        by_queue = {name: counts for name, counts in q.stats_by_queue().items() if name in DEMO_QUEUES}
        console.print(stats_table(by_queue, title="final stats (all demo runs on this database)"))
        console.print(dead_table(q.dead_jobs(limit=10), title="dead letters (newest 10)"))
        console.print(
            f"{len(ids)} jobs settled in {elapsed:.1f}s; handler failures (retried or dead): {worker.failed}.",
            highlight=False,
        )
        command = runnable_command()
        hints = ("stats", "dead", "replay --queue payments")
        console.print(
            "Try: " + ", ".join(f"{command} {hint}" for hint in hints), highlight=False, markup=False, soft_wrap=True
        )

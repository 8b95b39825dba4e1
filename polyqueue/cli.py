"""The ``polyqueue`` command line: migrate, enqueue, worker, stats, dead, replay, purge, transfer, demo and the tools.

The tools are ``bench``, ``conformance`` and ``compat``.

Errors print one clear line on stderr and exit non-zero; never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import PolyqueueError
from .job import QueueSettings, ReplayResult
from .moving import DEFAULT_STATUSES, MOVABLE_STATUSES, TransferResult, TransferStep, check_statuses
from .queue import Queue, connect, parse_duration
from .tables import cron_table, dead_table, fires_table, job_table, limits_table, stats_table
from .validation import check_int, check_queue_name, parse_rate, split_names

__all__ = ["cli", "main"]

#: Width of tables written to a pipe or file: rich's 80 columns would fold names and ids in the middle,
#: and what reads the output (grep, a log, a test) wants each row on one line. COLUMNS still wins.
PIPE_WIDTH = 200

console = Console()
err_console = Console(stderr=True)
for _console in (console, err_console):
    if not _console.is_terminal and "COLUMNS" not in os.environ:
        _console.width = PIPE_WIDTH


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit; ``message`` is plain text (never read as rich markup)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise SystemExit(code)


def say(text: str, *, err: bool = False) -> None:
    """Print plain text: names, ids and errors from the database are never read as rich markup."""
    target = err_console if err else console
    target.print(text, markup=False, highlight=False, soft_wrap=True)


def _url_given(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # A subcommand's --url wins over the group's (and so over $POLYQUEUE_URL).
    if value is not None:
        ctx.ensure_object(dict)["url"] = value


#: ``--url`` accepted after the subcommand too (``polyqueue stats --url ...``), as before it.
url_option = click.option(
    "--url",
    default=None,
    expose_value=False,
    callback=_url_given,
    help="Queue URL (default: $POLYQUEUE_URL or sqlite:///polyqueue.db).",
)


@contextmanager
def opened(ctx: click.Context) -> Iterator[Queue]:
    """The queue named by ``--url`` / ``POLYQUEUE_URL``, closed afterwards."""
    q = connect(ctx.ensure_object(dict).get("url"))
    try:
        yield q
    finally:
        q.close()


class CleanErrors(click.Group):
    """A group that turns polyqueue errors (and anything unexpected) into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PolyqueueError as exc:
            fail(f"{exc}")
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            fail(f"unexpected {type(exc).__name__}: {exc}", code=2)


@click.group(cls=CleanErrors)
@click.option(
    "--url", envvar="POLYQUEUE_URL", default=None, help="Queue URL (default: $POLYQUEUE_URL or sqlite:///polyqueue.db)."
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.version_option(package_name="polyqueue")
@click.pass_context
def cli(ctx: click.Context, url: str | None, verbose: bool) -> None:
    """polyqueue: a job queue in the database you already have."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    ctx.obj = {"url": url}


@cli.command()
@url_option
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the queue tables (idempotent)."""
    with opened(ctx) as q:
        q.migrate()
        say(f"migrated {q.backend.describe()}")


@cli.command()
@click.argument("job_type")
@click.argument("payload_json", required=False)
@click.option("--queue", "queue_name", default="default", show_default=True, help="Queue to put the job on.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--delay", default=None, help="Seconds or a duration like 30s, 5m, 2h.")
@click.option("--max-attempts", type=int, default=None, help="Attempts before the job is dead (default: 5).")
@click.option("--dedupe-key", default=None, help="At most one live job per queue holds this key.")
@click.option("--dedupe-for", default=None, help="Keep the dedupe key held this long after the job ends (e.g. 1h).")
@url_option
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE", help="A job header; repeat for more.")
@click.option("--timeout", default=None, help="Longest run of one attempt (e.g. 30s, 5m).")
@click.option("--concurrency-key", default=None, help="The key a queue's --per-key limit counts this job under.")
@click.pass_context
def enqueue(
    ctx: click.Context,
    job_type: str,
    payload_json: str | None,
    queue_name: str,
    priority: int,
    delay: str | None,
    max_attempts: int | None,
    dedupe_key: str | None,
    dedupe_for: str | None,
    headers: tuple[str, ...],
    timeout: str | None,
    concurrency_key: str | None,
) -> None:
    """Enqueue one job; prints its id.

    PAYLOAD_JSON is JSON text, or - to read it from standard input, or
    @FILE to read it from a file (for payloads too large for an argument).
    """
    payload = None if payload_json is None else _read_payload(payload_json)
    header_map: dict[str, str] = {}
    for item in headers:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"--header takes NAME=VALUE, got {item!r}")
        header_map[name] = value
    with opened(ctx) as q:
        job_id = q.enqueue(
            job_type,
            payload,
            queue=queue_name,
            priority=priority,
            delay=None if delay is None else parse_duration(delay, "delay"),
            max_attempts=max_attempts,
            dedupe_key=dedupe_key,
            dedupe_for=dedupe_for,
            headers=header_map or None,
            timeout=None if timeout is None else parse_duration(timeout, "timeout"),
            concurrency_key=concurrency_key,
        )
    click.echo(str(job_id))


def _read_payload(argument: str) -> Any:
    """The payload PAYLOAD_JSON names: JSON text, ``-`` (standard input) or ``@FILE``."""
    source = "PAYLOAD_JSON"
    text = argument
    if argument == "-":
        source = "standard input"
        text = sys.stdin.read()
    elif argument.startswith("@"):
        path = Path(argument[1:])
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read the payload from {argument}: {exc.strerror if isinstance(exc, OSError) else exc}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{source} is not valid JSON: {exc}")


def _import_failure(module_name: str, exc: BaseException) -> str:
    """One line naming what a handler module raised on import and where (the innermost frame outside importlib)."""
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "importlib" not in f.filename and not f.filename.startswith("<frozen")]
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    elif ours:
        last = ours[-1]
        where = f" ({last.filename}, line {last.lineno})"
    return f"handler module {module_name!r} raised {type(exc).__name__} on import: {exc}{where}"


def _load_handlers(spec: str) -> Callable[[Any], None]:
    """Import MODULE (dotted name, ``name:attr`` or a .py path) and return a function that registers its handlers."""
    module_name, _, attr = spec.partition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).resolve()
            if not path.exists():
                fail(f"no such file: {module_name}")
            # Importable by name from here on, so execution="process" children can import its handlers too.
            sys.path.insert(0, str(path.parent))
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[path.stem] = module
            loader_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.split(".")[0] != exc.name.split(".")[0]:
            fail(_import_failure(module_name, exc))  # the module exists; something it imports does not
        fail(f"cannot import handler module {module_name!r}: {exc}")
    except Exception as exc:  # the module's own code raised while it was imported
        fail(_import_failure(module_name, exc))
    if attr:
        target = getattr(module, attr, None)
        if target is None:
            fail(f"handler module {module_name!r} has no attribute {attr!r} (MODULE:ATTR names a setup function)")
        if not callable(target):
            fail(f"{spec} is a {type(target).__name__}, not a setup(worker) function")
        return target  # type: ignore[no-any-return]
    target = getattr(module, "setup", None)
    handlers = getattr(module, "HANDLERS", None)
    if callable(target):
        return target  # type: ignore[no-any-return]
    if isinstance(handlers, dict):

        def register_all(worker: Any) -> None:
            for name, fn in handlers.items():
                worker.register(name, fn)

        return register_all
    fail(f"{spec} defines neither setup(worker) nor a HANDLERS dict of job_type -> function")


@cli.command()
@click.argument("module")
@click.option("--queues", default="default", show_default=True, help="Comma-separated queue names.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Jobs run at once.")
@click.option("--lease", type=float, default=30.0, show_default=True, help="Seconds a claim holds a job unheartbeated.")
@click.option("--burst", is_flag=True, help="Drain what is ready, then exit.")
@url_option
@click.option("--timeout", default=None, help="Longest run of one attempt (e.g. 30s, 5m); a job's own wins.")
@click.option(
    "--execution", type=click.Choice(["thread", "process"]), default="thread", show_default=True,
    help="Run sync handlers on threads or in child processes (killed when they overrun).",
)  # fmt: skip
@click.pass_context
def worker(
    ctx: click.Context,
    module: str,
    queues: str,
    concurrency: int,
    lease: float,
    burst: bool,
    timeout: str | None,
    execution: str,
) -> None:
    """Run a worker with the handlers of MODULE (its setup(worker) or HANDLERS dict) until SIGTERM/SIGINT."""
    from .worker import Worker

    names = split_names(queues)
    register = _load_handlers(module)
    with opened(ctx) as q:
        w = Worker(
            q,
            queues=names,
            concurrency=concurrency,
            lease=lease,
            timeout=None if timeout is None else parse_duration(timeout, "timeout"),
            execution=execution,
        )
        register(w)
        if not w.handlers:
            fail(f"{module} registered no handlers")
        say(f"worker {w.worker_id} on {q.backend.describe()} queues={', '.join(w.queues)}", err=True)
        done = w.run(burst=burst)
        say(f"worker stopped: {done} job(s) succeeded, {w.failed} failed", err=True)


@cli.command()
@click.option("--queue", "queue_name", default=None, help="Only this queue.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--by-type", is_flag=True, help="One row per queue and job type (shows types no worker handles).")
@url_option
@click.pass_context
def stats(ctx: click.Context, queue_name: str | None, as_json: bool, by_type: bool) -> None:
    """Jobs per queue and status: ready (due now) and scheduled (later) are separate columns.

    --json prints the API's keys, where "pending" counts every pending job,
    due or not, and "scheduled" the pending ones not yet due.
    """
    if queue_name is not None:
        check_queue_name(queue_name, "--queue")
    with opened(ctx) as q:
        counts: dict[str, Any] = q.stats_by_type(queue_name) if by_type else q.stats_by_queue()
        if queue_name is not None:
            counts = {k: v for k, v in counts.items() if k == queue_name}
            if not counts:
                # A misspelt name must not read as an empty queue.
                known = sorted(q.stats_by_queue())
                others = f"; queues with jobs: {', '.join(known)}" if known else "; no queue has any job"
                fail(f"queue {queue_name!r} has no jobs at all{others}")
    if as_json:
        click.echo(json.dumps(counts, indent=2, sort_keys=True))
    elif not counts:
        console.print("no jobs")
    elif by_type:
        rows = {f"{name} / {job_type}": c for name, types in counts.items() for job_type, c in types.items()}
        console.print(stats_table(rows, title="polyqueue stats by job type"))
    else:
        console.print(stats_table(counts))


@cli.command()
@click.option("--history", "history_of", default=None, metavar="NAME", help="The fires of one schedule, newest first.")
@click.option("--limit", type=int, default=20, show_default=True, help="Fires shown with --history.")
@url_option
@click.pass_context
def cron(ctx: click.Context, history_of: str | None, limit: int) -> None:
    """Periodic schedules workers declared: last fire and its job, next fire, who declared it."""
    with opened(ctx) as q:
        if history_of is not None:
            fires = q.fire_history(history_of, limit=limit)
            if not fires:
                fail(f"schedule {history_of!r} has never fired")
            console.print(fires_table(fires, title=f"fires of {escape(history_of)}"))
            return
        records = q.schedules()
        now = q.backend.db_now()
    if not records:
        console.print("no schedules: declare one with worker.periodic(...)")
    else:
        console.print(cron_table(records, now))


@cli.command()
@click.option("--queue", "queue_name", default=None, help="Only this queue.")
@click.option("--limit", type=int, default=50, show_default=True, help="Newest jobs shown.")
@url_option
@click.pass_context
def dead(ctx: click.Context, queue_name: str | None, limit: int) -> None:
    """List dead-lettered jobs, newest first, with the first line of each one's last error."""
    with opened(ctx) as q:
        jobs = q.dead_jobs(queue_name, limit=limit)
    if not jobs:
        console.print("no dead jobs")
    else:
        console.print(dead_table(jobs))
        say("polyqueue show ID prints a job's every field and its whole error history")


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@url_option
@click.pass_context
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Print every field of job JOB_ID and its whole error history (oldest first)."""
    with opened(ctx) as q:
        job = q.require(job_id)
    if as_json:
        click.echo(json.dumps(_job_dict(job), indent=2, default=str))
        return
    console.print(job_table(job))
    if not job.errors:
        say("no errors recorded")
    for number, entry in enumerate(job.errors, 1):
        attempt = entry.get("attempt", "?")
        worker_id = entry.get("worker") or "unknown worker"
        when = f", at {entry['at']}" if entry.get("at") else ""  # older entries have no time
        say(f"\nerror {number} of {len(job.errors)}: attempt {attempt}, on {worker_id}{when}")
        say(str(entry.get("error", "")).rstrip())


def _job_dict(job: Any) -> dict[str, Any]:
    """Every field of a job, times as ISO 8601 text."""
    from dataclasses import fields

    record = {f.name: getattr(job, f.name) for f in fields(job)}
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in record.items()}


@cli.command()
@click.argument("ids", nargs=-1)
@click.option("--queue", "queue_name", default=None)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead job (of --queue if given).")
@click.option("--rate", default=None, help="Redrive at a steady pace instead of all at once: 50/s, 300/m, 1000/h.")
@url_option
@click.pass_context
def replay(
    ctx: click.Context, ids: tuple[str, ...], queue_name: str | None, replay_all: bool, rate: str | None
) -> None:
    """Make dead jobs pending again (IDS, or --all / --queue), optionally at a steady --rate."""
    if not ids and not replay_all and queue_name is None:
        fail("name job IDS, or pass --all or --queue")
    with opened(ctx) as q:
        not_dead = _not_dead(q, ids, queue_name)
        if ids and len(not_dead) == len(ids):
            result = ReplayResult(0)
        elif rate is None:
            result = q.replay_detailed(list(ids) if ids else None, queue_name)
        else:
            parse_rate(rate, "--rate")  # a bad rate is one line, before any progress bar
            with _progress("replaying") as bar:
                task = bar.add_task("replaying", total=None, rate="")
                result = q.replay_detailed(
                    list(ids) if ids else None,
                    queue_name,
                    rate=rate,
                    on_progress=lambda done, total: bar.update(task, completed=done, total=total),
                )
    say(f"replayed {result.replayed} job(s)")
    for job_id, reason in {**not_dead, **result.skipped}.items():
        say(f"skipped {job_id}: {reason}")
    if ids and result.replayed == 0:
        raise SystemExit(1)


def _not_dead(q: Queue, ids: tuple[str, ...], queue_name: str | None) -> dict[Hashable, str]:
    """Why each of the named jobs cannot be replayed (missing, not dead, another queue); replayable ones absent."""
    reasons: dict[Hashable, str] = {}
    for job_id in ids:
        job = q.get(job_id)
        if job is None:
            reasons[job_id] = "no such job"
        elif job.status != "dead":
            reasons[job_id] = f"it is {job.status}, not dead"
        elif queue_name is not None and job.queue != queue_name:
            reasons[job_id] = f"it is on queue {job.queue!r}, not {queue_name!r}"
    return reasons


@cli.command()
@click.argument("job_id")
@url_option
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a pending job, or ask a processing one to stop (its worker ends it ``cancelled``)."""
    with opened(ctx) as q:
        before = q.get(job_id)
        if not q.cancel(job_id):
            job = q.get(job_id)
            fail(f"job {job_id} does not exist" if job is None else f"job {job_id} is {job.status}, not pending")
    if before is not None and before.status == "processing":
        say(f"asked {job_id} to stop: its worker ends it cancelled at its next heartbeat")
    else:
        say(f"cancelled {job_id}")


@cli.command()
@click.argument("queue_name", metavar="QUEUE", required=False)
@click.option("--concurrency", type=int, default=None, help="At most this many of the queue's jobs processing.")
@click.option("--rate", default=None, help="At most this many starts: 50/s, 300/m, 1000/h.")
@click.option("--per-key", type=int, default=None, help="At most this many processing per concurrency key.")
@click.option("--clear", is_flag=True, help="Remove every limit of QUEUE.")
@url_option
@click.pass_context
def limits(
    ctx: click.Context,
    queue_name: str | None,
    concurrency: int | None,
    rate: str | None,
    per_key: int | None,
    clear: bool,
) -> None:
    """Show or set flow-control limits, enforced by every claim across all workers.

    Without options, shows QUEUE's limits (or every limited or paused queue's).
    With options, sets QUEUE's limits: the ones not given are removed.
    """
    changing = clear or concurrency is not None or rate is not None or per_key is not None
    if clear and (concurrency is not None or rate is not None or per_key is not None):
        fail("--clear removes every limit: give it alone")
    if changing and queue_name is None:
        fail("name the QUEUE to limit")
    with opened(ctx) as q:
        if changing:
            assert queue_name is not None
            q.set_limits(queue_name, concurrency=concurrency, rate=rate, per_key=per_key)
        shown = [queue_name] if queue_name is not None else None
        settings = q.queue_settings(shown)
        if queue_name is not None and not settings:
            settings = [QueueSettings(queue_name)]
    console.print(limits_table(settings))


@cli.command()
@click.argument("queue_name", metavar="QUEUE")
@url_option
@click.pass_context
def pause(ctx: click.Context, queue_name: str) -> None:
    """Pause QUEUE: no worker takes its jobs until `polyqueue resume` (running jobs finish)."""
    with opened(ctx) as q:
        q.pause(queue_name)
    console.print(f"paused {queue_name}", highlight=False)


@cli.command()
@click.argument("queue_name", metavar="QUEUE")
@url_option
@click.pass_context
def resume(ctx: click.Context, queue_name: str) -> None:
    """Resume a paused QUEUE and wake its workers."""
    with opened(ctx) as q:
        q.resume(queue_name)
    console.print(f"resumed {queue_name}", highlight=False)


@cli.command()
@click.option("--status", default="done", show_default=True, type=click.Choice(["done", "dead", "cancelled"]))
@click.option("--older-than", default="7d", show_default=True, help="Age like 12h, 7d, 30m or seconds.")
@click.option("--batch-size", type=int, default=1000, show_default=True, help="Rows deleted per transaction.")
@url_option
@click.pass_context
def purge(ctx: click.Context, status: str, older_than: str, batch_size: int) -> None:
    """Delete finished jobs in small batches (online, no long locks)."""
    with opened(ctx) as q:
        deleted = q.purge(status, older_than=older_than, batch_size=batch_size)
    say(f"purged {deleted} {status} job(s) older than {older_than}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; beyond loopback needs --token.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing: no replay, cancel, pause or purge.")
@click.option(
    "--token",
    envvar="POLYQUEUE_DASHBOARD_TOKEN",
    default=None,
    help="Access token every request must carry (Bearer header, or ?token= once). Env: POLYQUEUE_DASHBOARD_TOKEN.",
)
@click.option("--root-path", default="", help="The path prefix a reverse proxy serves the dashboard under (/pq).")
@click.pass_context
def dashboard(ctx: click.Context, host: str, port: int, read_only: bool, token: str | None, root_path: str) -> None:
    """Serve the web dashboard: queue counts and throughput, jobs, errors, actions, /metrics."""
    try:
        from .web import DashboardSettings, check_serving, serve
    except ImportError as exc:
        fail(f"the dashboard needs the web extra: pip install 'polyqueue[web]' ({exc.name} is missing)")
    settings = DashboardSettings(read_only=read_only, token=token or None)
    check_serving(host, settings, root_path)
    with opened(ctx) as q:
        shown = "[read-only] " if read_only else ""
        err_console.print(f"polyqueue dashboard {shown}on http://{host}:{port}{root_path}/ ({q.backend.describe()})")
        serve(q, host=host, port=port, settings=settings, root_path=root_path)


def _progress(what: str) -> Progress:
    """A rich progress bar on stderr: count, rate and time left."""
    return Progress(
        TextColumn(f"[bold]{what}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


@cli.command()
@click.argument("src_url")
@click.argument("dst_url")
@click.option("--queue", "queue_name", default=None, help="Move this queue only (default: every queue).")
@click.option(
    "--status",
    "statuses",
    default=",".join(DEFAULT_STATUSES),
    show_default=True,
    help=f"Comma-separated, among {', '.join(MOVABLE_STATUSES)} (pending: due now; scheduled: not yet due).",
)
@click.option("--batch", "batch_size", type=int, default=1000, show_default=True, help="Jobs per page.")
@click.option("--dry-run", is_flag=True, help="Only count what would move.")
@click.option("--wait", is_flag=True, help="Wait for the source's processing jobs to end, and move them too.")
@click.option("--wait-timeout", default=None, help="With --wait: give up after this long (30s, 10m, 1h).")
def transfer(
    src_url: str,
    dst_url: str,
    queue_name: str | None,
    statuses: str,
    batch_size: int,
    dry_run: bool,
    wait: bool,
    wait_timeout: str | None,
) -> None:
    """Move jobs from SRC_URL to DST_URL (any two backends), resumably: rerun after a crash to finish.

    Every field of each job travels; processing jobs stay in the source
    (or, with --wait, are waited for). The destination's tables are created
    if missing (not on --dry-run).
    """
    from .moving import transfer as move

    patience = None if wait_timeout is None else parse_duration(wait_timeout, "--wait-timeout")
    chosen = check_statuses(statuses)
    check_int(batch_size, "--batch", 1, 10_000)
    source = connect(src_url)
    try:
        destination = connect(dst_url)
        try:
            err_console.print(
                f"{'counting' if dry_run else 'moving'} jobs from {source.backend.describe()} "
                f"to {destination.backend.describe()}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            total = _movable(source, queue_name, chosen)
            with _progress("would move" if dry_run else "moving") as bar:
                task = bar.add_task("transfer", total=total, rate="")
                started = time.monotonic()

                def advance(step: TransferStep) -> None:
                    if step.phase in ("moved", "counted"):
                        done = step.result.moved
                        speed = done / max(time.monotonic() - started, 1e-6)
                        bar.update(task, completed=done, total=max(total, done), rate=f"{speed:,.0f} jobs/s")

                result = move(
                    source, destination, queue=queue_name, statuses=chosen, batch_size=batch_size,
                    dry_run=dry_run, wait=wait, wait_timeout=patience, on_step=advance, migrate_destination=True,
                )  # fmt: skip
        finally:
            destination.close()
    finally:
        source.close()
    _report_transfer(result)


def _movable(source: Queue, queue_name: str | None, chosen: frozenset[str]) -> int:
    """How many jobs of the chosen statuses the source holds now (the progress bar's total)."""
    counts = source.stats(queue_name)
    due = counts["pending"] - counts["scheduled"]
    sizes = {"pending": due, "scheduled": counts["scheduled"]}
    return sum(sizes.get(status, counts.get(status, 0)) for status in chosen)


def _report_transfer(result: TransferResult) -> None:
    verb = "would move" if result.dry_run else "moved"
    split = ", ".join(f"{n} {status}" for status, n in sorted(result.by_status.items()))
    console.print(f"{verb} {result.moved} job(s){f' ({split})' if split else ''}", highlight=False)
    if result.resumed:
        console.print(f"{result.resumed} of them had been written by an earlier, interrupted run", highlight=False)
    for job_id, reason in list(result.skipped.items())[:20]:
        console.print(f"left job {job_id} in the source: {reason}", highlight=False, markup=False)
    if len(result.skipped) > 20:
        console.print(f"... and {len(result.skipped) - 20} more left in the source", highlight=False)
    if result.processing:
        console.print(
            f"{result.processing} processing job(s) stay in the source (their workers hold them; --wait waits)",
            highlight=False,
        )


@cli.command()
@click.option("--jobs", "count", type=int, default=240, show_default=True, help="How many jobs to enqueue.")
@click.option("--workers", type=int, default=8, show_default=True, help="Worker threads.")
@url_option
@click.pass_context
def demo(ctx: click.Context, count: int, workers: int) -> None:
    """Run the main job on the embedded default: enqueue a realistic mix and watch workers drain it."""
    from .demo import run_demo

    run_demo(ctx.ensure_object(dict).get("url"), count=count, concurrency=workers, console=console)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("url")
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def conformance(url: str, pytest_args: tuple[str, ...]) -> None:
    """Run the conformance suite against URL (extra arguments go to pytest)."""
    _require_module("pytest", "conformance")
    from .testing import conformance_preflight

    # Checked before the suite is imported: a wrong URL or a server that is down answers in a second, in one line.
    conformance_preflight(url)
    from .conformance.matrix import run_conformance

    raise SystemExit(run_conformance(url, list(pytest_args), check=False))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--out", "out_dir", default="compat_matrix", show_default=True)
@click.argument("urls", nargs=-1)
def compat(out_dir: str, urls: tuple[str, ...]) -> None:
    """Run the suite on every configured backend and write compat_matrix/ (README.md and matrix.json)."""
    _require_module("pytest", "conformance")
    from .conformance.matrix import run_compat

    raise SystemExit(run_compat(list(urls) or None, out_dir))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("bench_args", nargs=-1, type=click.UNPROCESSED)
def bench(bench_args: tuple[str, ...]) -> None:
    """Run the benchmarks (see benchmarks/README.md; --help for the options)."""
    # The harness is a project of its own (benchmarks/, polyqueue-bench), so the runtime package holds no peers.
    install = "run `make bench` or `pip install -e 'benchmarks[peers]'` from a polyqueue checkout"
    try:
        from polyqueue_bench import main as bench_main
    except ModuleNotFoundError as exc:
        if exc.name != "polyqueue_bench":
            fail(f"the benchmark harness needs {exc.name}, which is not installed: {install}")
        fail(f"the benchmark harness is not installed: {install}")
    try:
        code = bench_main(list(bench_args))
    except ModuleNotFoundError as exc:
        fail(f"the benchmark needs {exc.name}, which is not installed: {install}")
    raise SystemExit(code)


def _require_module(module: str, extra: str) -> None:
    """Fail with the pip extra to install when a tool's dependency is missing."""
    try:
        importlib.import_module(module)
    except ImportError:
        fail(f"this command needs {module}, which is not installed: pip install 'polyqueue[{extra}]'")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="polyqueue")


if __name__ == "__main__":
    main()

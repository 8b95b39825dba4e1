"""The dashboard's ASGI application: server-rendered pages over one :class:`~polyqueue.Queue`.

Pages: the overview (``/``: live and dead counts per queue, jobs finished
per minute over the last hour -- never a count of the whole done history,
which would read every row of it), the job list (``/jobs``, filtered, keyset-paged with
:meth:`~polyqueue.Queue.list_jobs`), a job (``/jobs/{id}``: payload,
headers, timings, the whole error history). Actions are POSTs with a CSRF
token, answered with a redirect (303) and a short notice: replay, cancel,
pause and resume (when the queue has them), purge. ``/metrics`` serves the
Prometheus text format. The queue's calls are blocking, so every page runs
in Starlette's thread pool, never on the event loop.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ..errors import PolyqueueError
from ..job import STATUSES
from ..queue import Queue
from ..validation import parse_duration
from .charts import Bar, throughput_svg
from .security import CSRF_COOKIE, TOKEN_COOKIE, CsrfGuard, tokens_match

__all__ = ["NOTICES", "DashboardSettings", "create_app", "rate_text"]

#: The notices an action's redirect may carry (``?notice=KEY``): fixed texts, so nothing a URL says is echoed.
NOTICES = {
    "replayed": "Replayed: the job is pending again.",
    "not-replayed": "Not replayed: the job is not dead, or its dedupe key is held by another job.",
    "retried": "Due now: the next free worker takes it.",
    "not-retried": "Not changed: the job is not pending, or is due already.",
    "cancelled": "Cancelled.",
    "not-cancelled": "Not cancelled: the job is no longer pending.",
    "paused": "Paused: no worker claims this queue's jobs until it is resumed.",
    "resumed": "Resumed.",
    "purged": "Purged.",
}
#: What the overview counts per queue: the live jobs and the dead letters, never the (huge) done history.
OVERVIEW_STATUSES = ("pending", "processing", "dead")
#: Jobs per page of the job list.
PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """How a dashboard behaves: ``read_only`` hides and refuses every action; ``token`` guards every page."""

    read_only: bool = False
    token: str | None = None
    #: Seconds between reloads of the overview (a meta refresh; 0 turns it off).
    refresh: int = 10


def create_app(queue: Queue, settings: DashboardSettings | None = None, *, metrics: Any = None) -> Starlette:
    """The dashboard over ``queue`` as a Starlette application (serve it with uvicorn, mount it anywhere).

    ``metrics`` is a ``prometheus_client`` registry for ``/metrics``; None
    builds one from the ``polyqueue-prometheus`` plugin's collectors (queue
    counts from the database, plus this process's job counters), or serves
    503 saying to install it. Behind a path prefix, pass ``root_path`` to
    the server (``uvicorn --root-path``): every link carries it.
    """
    dashboard = _Dashboard(queue, settings or DashboardSettings(), metrics)
    routes = [
        Route("/", dashboard.overview, name="overview"),
        Route("/jobs", dashboard.jobs, name="jobs"),
        Route("/jobs/{job_id}", dashboard.job, name="job"),
        Route("/jobs/{job_id}/{action:str}", dashboard.job_action, methods=["POST"], name="job_action"),
        Route("/queues/{queue_name}/{action:str}", dashboard.queue_action, methods=["POST"], name="queue_action"),
        Route("/purge", dashboard.purge, methods=["POST"], name="purge"),
        Route("/metrics", dashboard.metrics, name="metrics"),
    ]
    middleware = [Middleware(BaseHTTPMiddleware, dispatch=dashboard.check_access)]
    return Starlette(routes=routes, middleware=middleware)


def path_for(request: Request, name: str, **params: Any) -> URL:
    """The path (root path included, no scheme or host) of a route: links that hold behind any proxy."""
    return URL(request.url_for(name, **params).path)


@pass_context
def _path_for(context: dict[str, Any], name: str, /, **params: Any) -> URL:
    return path_for(context["request"], name, **params)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else ""


class _Dashboard:
    """The pages and actions of one dashboard, sharing its queue, settings, templates and CSRF guard."""

    def __init__(self, queue: Queue, settings: DashboardSettings, metrics: Any) -> None:
        self.queue = queue
        self.settings = settings
        self.csrf = CsrfGuard()
        env = Environment(loader=PackageLoader("polyqueue.web", "templates"), autoescape=select_autoescape())
        env.filters["when"] = _when
        env.filters["rate"] = rate_text
        env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str)
        self.templates = Jinja2Templates(env=env)
        env.globals["url_for"] = _path_for  # after Jinja2Templates, which sets its own absolute-URL one
        self.registry = metrics

    # --- guards -----------------------------------------------------------------
    async def check_access(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Refuse any request without the access token when one is set; trade ``?token=`` for a cookie."""
        expected = self.settings.token
        if expected is None:
            return await call_next(request)
        offered = request.query_params.get("token")
        if offered is not None and request.method == "GET" and tokens_match(offered, expected):
            clean = request.url.remove_query_params("token")
            response = RedirectResponse(clean.path + (f"?{clean.query}" if clean.query else ""), status_code=303)
            response.set_cookie(
                TOKEN_COOKIE, expected, httponly=True, samesite="strict", path=self._cookie_path(request)
            )
            return response
        bearer = request.headers.get("authorization", "")
        presented = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE)
        if tokens_match(presented, expected):
            return await call_next(request)
        return PlainTextResponse(
            "polyqueue dashboard: an access token is required (Authorization: Bearer TOKEN, or open a link "
            "with ?token=TOKEN once)",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="polyqueue"'},
        )

    @staticmethod
    def _cookie_path(request: Request) -> str:
        return request.scope.get("root_path") or "/"

    def _csrf_token(self, request: Request) -> tuple[str, bool]:
        """The CSRF token for this page: the cookie's when valid, else a new one (True: set the cookie)."""
        current = request.cookies.get(CSRF_COOKIE)
        if self.csrf.valid(current):
            assert current is not None
            return current, False
        return self.csrf.issue(), True

    async def _posted(self, request: Request) -> dict[str, str] | Response:
        """The form of a POST when it passes the CSRF and read-only checks, else the refusal to send."""
        if self.settings.read_only:
            return PlainTextResponse("polyqueue dashboard: read-only; actions are off", status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("polyqueue dashboard: cross-origin POST refused", status_code=403)
        body = (await request.body()).decode("utf-8", "replace")
        form = {key: values[-1] for key, values in urllib.parse.parse_qs(body, keep_blank_values=True).items()}
        if not self.csrf.accepts(form.get("csrf"), request.cookies.get(CSRF_COOKIE)):
            return PlainTextResponse("polyqueue dashboard: missing or bad CSRF token; reload the page", status_code=403)
        return form

    # --- rendering ----------------------------------------------------------------
    def _render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
        token, fresh = self._csrf_token(request)
        notice = NOTICES.get(request.query_params.get("notice", ""))
        context.update(
            csrf=token,
            notice=notice,
            read_only=self.settings.read_only,
            backend=self.queue.backend.describe(),
            can_list=self._has("list_jobs"),
        )
        response = self.templates.TemplateResponse(request, template, context, status_code=status_code)
        if fresh:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=self._cookie_path(request))
        return response

    def _has(self, capability: str) -> bool:
        return capability in self.queue.capabilities

    def _can_pause(self) -> bool:
        """Pause and resume exist on this Queue (they arrive with the runtime-control work) and on its backend."""
        return callable(getattr(self.queue, "pause", None)) and self._has("pause")

    def _error(self, request: Request, exc: PolyqueueError, status_code: int = 400) -> Response:
        return self._render(request, "error.html", status_code=status_code, message=str(exc))

    # --- pages ----------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        """Counts per queue, finished per minute over the last hour, and the purge form."""
        try:
            # Live and dead jobs only: counting the done history would cost a scan of all of it (see the module doc).
            by_queue = self.queue.stats_by_queue(OVERVIEW_STATUSES)
            seen = self.queue.throughput() if self._has("throughput") else None
            paused = set(self.queue.paused()) if self._can_pause() else set()  # type: ignore[attr-defined]
        except PolyqueueError as exc:
            return self._error(request, exc, 503)
        rows = []
        for name in sorted(set(by_queue) | set(seen.counts if seen else ())):
            counts = by_queue.get(name, {})
            finished = seen.counts.get(name, {}) if seen else {}
            rows.append(
                {
                    "name": name,
                    "ready": counts.get("pending", 0) - counts.get("scheduled", 0),
                    "counts": counts,
                    "done_hour": sum(finished.get("done", [])),
                    "dead_hour": sum(finished.get("dead", [])),
                    "done_rate": sum(finished.get("done", [0])[-5:]) / 5,
                    "dead_rate": sum(finished.get("dead", [0])[-5:]) / 5,
                    "paused": name in paused,
                }
            )
        chart = None
        if seen is not None:
            slices = [[0, 0] for _ in range(60)]
            for per_status in seen.counts.values():
                for column, status in enumerate(("done", "dead")):
                    for i, n in enumerate(per_status.get(status, [])):
                        slices[i][column] += n
            bars = [Bar(done, dead, f"{60 - i} min ago") for i, (done, dead) in enumerate(slices)]
            chart = throughput_svg(bars, "Jobs finished per minute, last hour (done, dead)")
        return self._render(
            request,
            "overview.html",
            rows=rows,
            throughput=seen is not None,
            chart=chart,
            can_pause=self._can_pause(),
            refresh=self.settings.refresh,
        )

    def jobs(self, request: Request) -> Response:
        """One page of the job list, filtered by queue, status and type; ``after`` pages on."""
        params = request.query_params
        queue_name = params.get("queue") or None
        status = params.get("status") or None
        job_type = params.get("job_type") or None
        after = params.get("after") or None
        if not self._has("list_jobs"):
            return self._render(request, "jobs.html", jobs=[], filters={}, queues=[], statuses=STATUSES, more=None)
        try:
            listed = self.queue.list_jobs(queue_name, status, job_type, after, PAGE_SIZE)
            queues = sorted(self.queue.stats_by_queue(OVERVIEW_STATUSES))
        except PolyqueueError as exc:
            return self._error(request, exc)
        filters = {k: v for k, v in (("queue", queue_name), ("status", status), ("job_type", job_type)) if v}
        more = None
        if len(listed) == PAGE_SIZE:
            more = str(path_for(request, "jobs").include_query_params(**filters, after=str(listed[-1].id)))
        return self._render(
            request, "jobs.html", jobs=listed, filters=filters, queues=queues, statuses=STATUSES, more=more,
            first=str(path_for(request, "jobs").include_query_params(**filters)) if after else None,
        )  # fmt: skip

    def job(self, request: Request) -> Response:
        """One job: every field, payload, headers, timings, result and the whole error history."""
        job_id = request.path_params["job_id"]
        try:
            job = self.queue.get(job_id)
        except PolyqueueError as exc:
            return self._error(request, exc)
        if job is None:
            return self._render(request, "error.html", status_code=404, message=f"no job with id {job_id}")
        headers = getattr(job, "headers", None) or {}
        waited = None
        if job.created_at is not None and job.finished_at is not None:
            waited = (job.finished_at - job.created_at).total_seconds()
        waiting = (
            job.status == "pending"
            and self._has("retry_now")
            and job.run_at is not None
            and job.run_at > self.queue.backend.db_now()
        )
        return self._render(
            request, "job.html", job=job, headers=headers, took=waited, errors=list(job.errors), can_retry_now=waiting
        )

    # --- actions ----------------------------------------------------------------
    async def job_action(self, request: Request) -> Response:
        """``replay`` (a dead job), ``retry-now`` (a pending one waiting for its time) or ``cancel``, then back."""
        form = await self._posted(request)
        if isinstance(form, Response):
            return form
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action == "replay":
            done = await run_in_threadpool(self.queue.replay, [job_id])
            notice = "replayed" if done else "not-replayed"
        elif action == "retry-now" and self._has("retry_now"):
            notice = "retried" if await run_in_threadpool(self.queue.retry_now, job_id) else "not-retried"
        elif action == "cancel":
            notice = "cancelled" if await run_in_threadpool(self.queue.cancel, job_id) else "not-cancelled"
        else:
            return PlainTextResponse(f"unknown action {action[:40]!r}", status_code=404)
        target = path_for(request, "job", job_id=job_id).include_query_params(notice=notice)
        return RedirectResponse(str(target), status_code=303)

    async def queue_action(self, request: Request) -> Response:
        """``pause`` or ``resume`` one queue (where the Queue has them), then back to the overview."""
        form = await self._posted(request)
        if isinstance(form, Response):
            return form
        name, action = request.path_params["queue_name"], request.path_params["action"]
        if action not in ("pause", "resume") or not self._can_pause():
            return PlainTextResponse(f"no {action[:40]!r} action for queues here", status_code=404)
        try:
            await run_in_threadpool(getattr(self.queue, action), name)
        except PolyqueueError as exc:
            return self._error(request, exc)
        target = path_for(request, "overview").include_query_params(notice="paused" if action == "pause" else "resumed")
        return RedirectResponse(str(target), status_code=303)

    async def purge(self, request: Request) -> Response:
        """Delete finished jobs of one status older than the form's ``older_than`` (``7d``, ``12h``)."""
        form = await self._posted(request)
        if isinstance(form, Response):
            return form
        try:
            parse_duration(form.get("older_than", ""), "older_than")
            await run_in_threadpool(self.queue.purge, form.get("status", ""), form.get("older_than", ""))
        except PolyqueueError as exc:
            return self._error(request, exc)
        return RedirectResponse(str(path_for(request, "overview").include_query_params(notice="purged")), 303)

    # --- metrics ----------------------------------------------------------------
    def metrics(self, request: Request) -> Response:
        """The Prometheus text format: the plugin's collectors over this queue."""
        registry = self.registry
        if registry is None:
            try:
                from polyqueue_prometheus import dashboard_registry
            except ImportError:
                return PlainTextResponse(
                    "polyqueue dashboard: /metrics needs the polyqueue-prometheus plugin installed", status_code=503
                )
            registry = self.registry = dashboard_registry(self.queue)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def rate_text(per_minute: float) -> str:
    """A rate for the overview: whole numbers plainly, small ones with a decimal."""
    return "0" if per_minute == 0 else (f"{per_minute:.0f}" if per_minute >= 10 else f"{per_minute:.1f}")

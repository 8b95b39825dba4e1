"""``polyqueue dashboard``: a web UI and ``/metrics`` over one queue (the extra ``polyqueue[web]``).

>>> from polyqueue.web import create_app, DashboardSettings
>>> app = create_app(polyqueue.connect(url), DashboardSettings(read_only=True))   # any ASGI server

:func:`serve` is what the command runs: it refuses to listen beyond loopback
without an access token.
"""

from __future__ import annotations

from ..errors import ConfigurationError
from ..queue import Queue
from .app import DashboardSettings, create_app
from .security import is_loopback

__all__ = ["DashboardSettings", "check_serving", "create_app", "serve"]


def serve(
    queue: Queue,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    settings: DashboardSettings | None = None,
    root_path: str = "",
) -> None:
    """Run the dashboard with uvicorn until interrupted.

    Raises :class:`ConfigurationError` when ``host`` is not a loopback
    address and ``settings`` has no token (anyone who can reach the port
    could replay, cancel and purge), or when ``root_path`` is not a path.
    """
    import uvicorn

    chosen = settings or DashboardSettings()
    check_serving(host, chosen, root_path)
    uvicorn.run(create_app(queue, chosen), host=host, port=port, root_path=root_path, log_level="warning")


def check_serving(host: str, settings: DashboardSettings, root_path: str = "") -> None:
    """Raise :class:`ConfigurationError` unless the dashboard may listen on ``host`` as set up (see :func:`serve`)."""
    if not is_loopback(host) and not settings.token:
        raise ConfigurationError(
            f"the dashboard binds {host}, beyond loopback: give it an access token "
            "(--token or POLYQUEUE_DASHBOARD_TOKEN)"
        )
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise ConfigurationError("root_path must start with / and not end with one, e.g. /polyqueue")

"""Synchronous polyqueue code on an event loop: SQLAlchemy's greenlet bridge, named in one place.

SQLAlchemy's asyncio extension runs its synchronous core inside a greenlet
and, wherever a driver would block, hands the awaitable to the event loop
(``await_``) and switches back when it is done. polyqueue uses the same
mechanism one level up: an :class:`~polyqueue.AsyncQueue` runs the very same
``Queue`` method -- validation, policy, the consumer session, the backend's
SQL -- inside a greenlet, over a backend whose engines use an asyncio driver.
Nothing is written twice, and nothing blocks the loop.

The helpers live in ``sqlalchemy.util`` (``await_only`` before SQLAlchemy
2.1, ``await_`` since); this module is the only place that imports them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["available", "await_", "spawn"]

T = TypeVar("T")


def available() -> bool:
    """Whether the ``greenlet`` package SQLAlchemy's asyncio extension needs is installed."""
    return importlib.util.find_spec("greenlet") is not None


def await_(awaitable: Awaitable[T]) -> T:
    """Wait for ``awaitable`` from synchronous code running under :func:`spawn` (the loop runs meanwhile)."""
    try:
        from sqlalchemy.util import await_ as sa_await
    except ImportError:  # SQLAlchemy 2.0
        from sqlalchemy.util import await_only as sa_await
    return sa_await(awaitable)  # type: ignore[no-any-return]


async def spawn(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run the synchronous ``fn(*args, **kwargs)`` in a greenlet; its :func:`await_` calls yield to the loop."""
    from sqlalchemy.util import greenlet_spawn

    return await greenlet_spawn(fn, *args, **kwargs)

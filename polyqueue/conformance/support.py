"""What the conformance suite needs of a backend beyond the runtime interface: test-only operations.

A backend offers these as plain methods; none is part of
:class:`~polyqueue.backends.base.Backend`, because no application needs them.

* ``drop_schema()`` removes everything ``migrate`` created (each test runs on a
  fresh table prefix and drops it afterwards). Without it, tests leave their
  schemas behind.
* ``caller_transaction()`` opens a transaction of the kind ``enqueue(...,
  connection=)`` accepts, as a context manager that commits on success and
  rolls back on an exception. Needed with the ``transactional_enqueue``
  capability.
* ``async_caller_transaction()`` is its asyncio twin: an async context manager
  yielding a connection ``AsyncQueue.enqueue(..., connection=)`` accepts (a
  SQLAlchemy ``AsyncConnection`` for the SQL backends). Without it the async
  transactional tests are skipped.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from polyqueue import testing

__all__ = ["DropsSchema", "OpensCallerTransactions", "async_caller_transaction", "caller_transaction", "drop_schema"]


@runtime_checkable
class DropsSchema(Protocol):
    """A backend that can remove its schema."""

    def drop_schema(self) -> None:
        """Remove everything ``migrate`` created for this backend's table prefix."""


@runtime_checkable
class OpensCallerTransactions(Protocol):
    """A backend whose ``enqueue(..., connection=)`` the suite can test with a transaction it opens."""

    def caller_transaction(self) -> AbstractContextManager[Any]:
        """An open transaction of the caller's kind: commits on success, rolls back on an exception."""


drop_schema = testing.drop_schema


def caller_transaction(queue: Any) -> AbstractContextManager[Any]:
    """A caller transaction on ``queue``'s backend; raises NotImplementedError if it has none."""
    backend = queue.backend
    if not isinstance(backend, OpensCallerTransactions):
        raise NotImplementedError(f"{type(backend).__name__} has no caller_transaction() for the conformance suite")
    return backend.caller_transaction()


def async_caller_transaction(queue: Any) -> AbstractAsyncContextManager[Any]:
    """An asyncio caller transaction on ``queue``'s backend; raises NotImplementedError if it has none."""
    open_transaction = getattr(queue.backend, "async_caller_transaction", None)
    if open_transaction is None:
        raise NotImplementedError(f"{type(queue.backend).__name__} has no async_caller_transaction()")
    return open_transaction()  # type: ignore[no-any-return]

"""Registers the built-in backends through the same hook third-party plugins implement."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def polyqueue_backends() -> dict[str, Any]:
    """SQLite, PostgreSQL and MySQL/MariaDB; importing them does not import any driver."""
    from .mysql import MySQLBackend
    from .postgresql import PostgreSQLBackend
    from .sqlite import SQLiteBackend

    return {
        "sqlite": SQLiteBackend,
        "postgresql": PostgreSQLBackend,
        "mysql": MySQLBackend,
        "mariadb": MySQLBackend,
    }

"""Helpers for tests of polyqueue and of applications using it: server URLs, reachability, fresh schemas.

Server tests skip with a message when their server is unreachable, unless
``POLYQUEUE_REQUIRE_BACKENDS`` is set (as CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

__all__ = [
    "SERVER_URLS",
    "backends_required",
    "check_reachable",
    "conformance_preflight",
    "drop_schema",
    "reachable",
    "recorded_statements",
    "require_server",
    "scrub",
    "server_url",
    "unique_prefix",
    "url_secrets",
]
#: What a scrubbed secret reads as.
MASK = "***"

#: Default URLs of the servers on the development and CI machines; override with the environment variables.
SERVER_URLS = {
    "postgresql": ("POLYQUEUE_TEST_POSTGRESQL_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"),
    "mysql": ("POLYQUEUE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "redis": ("POLYQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    # The 3-master, 3-replica cluster .ci/services starts (the polyqueue-redis plugin's tests and compat column).
    "redis_cluster": ("POLYQUEUE_TEST_REDIS_CLUSTER_URL", "redis+cluster://127.0.0.1:7000/"),
}


def server_url(kind: str) -> str:
    """The URL of the test server of ``kind`` (postgresql, mysql, redis, redis_cluster)."""
    env, default = SERVER_URLS[kind]
    return os.environ.get(env, default)


def backends_required() -> bool:
    """True when an unreachable server must fail the tests rather than skip them."""
    return os.environ.get("POLYQUEUE_REQUIRE_BACKENDS", "").lower() not in ("", "0", "false", "no")


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    default_ports = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "redis": 6379}
    default_port = default_ports.get(parts.scheme.split("+")[0], 0)
    # A cluster URL may list several nodes (``redis+cluster://h1:7000,h2:7001/``): the first one answers for them.
    first = urlsplit(f"//{parts.netloc.rsplit('@', 1)[-1].split(',')[0]}")
    try:
        port = first.port or default_port
    except ValueError:
        return False
    try:
        with socket.create_connection((first.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def unique_prefix() -> str:
    """A table prefix no other test uses, so tests can run in parallel on one database."""
    return f"pqt_{uuid.uuid4().hex[:10]}_"


def drop_schema(queue: Any) -> bool:
    """Remove what ``migrate`` created for this queue's prefix, if its backend can (``drop_schema()``); False if not."""
    drop = getattr(queue.backend, "drop_schema", None)
    if drop is None:
        return False
    try:
        drop()
    except NotImplementedError:
        return False
    return True


@contextmanager
def recorded_statements(containing: str = "") -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement (text, parameters) any SQLAlchemy engine sends inside the block, optionally filtered.

    ``containing`` keeps only statements whose text contains it (a table
    name, say). For tests and benchmarks that count or EXPLAIN what
    polyqueue sends.
    """
    import sqlalchemy as sa

    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if containing in statement:
            sent.append((statement, parameters))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def require_server(kind: str) -> str:
    """The test server's URL; inside a pytest test, skip (or fail when required) if it is unreachable."""
    import pytest

    url = server_url(kind)
    if not reachable(url):
        message = f"{kind} server unreachable at {url.split('@')[-1]}"
        if backends_required():
            pytest.fail(message + " (POLYQUEUE_REQUIRE_BACKENDS is set)", pytrace=False)
        pytest.skip(message + "; start it or set " + SERVER_URLS[kind][0])
    return url


def check_reachable(url: str) -> None:
    """Open ``url`` and reach its store once; raise a polyqueue error (password masked) if that fails.

    ``ConfigurationError`` for a wrong URL, scheme, password, database or
    host name; ``BackendUnavailable`` for a store that does not answer.
    """
    import polyqueue

    with polyqueue.connect(url, table_prefix=unique_prefix()) as q:
        q.backend.check_connection()


def url_secrets(url: str) -> set[str]:
    """The password of ``url`` as it may appear in output: raw and percent-encoded; empty if none."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(url).password
    except Exception:  # an unparsable URL: its text between ':' and the last '@' is what to hide
        netloc = url.partition("://")[2].rpartition("@")[0]
        password = netloc.partition(":")[2] or None
    if not password:
        return set()
    text = str(password)
    return {text, quote(text, safe=""), quote_plus(text)}


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced by ``***`` (longest first, so an encoded form is not half-replaced)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text


def conformance_preflight(url: str) -> None:
    """:func:`check_reachable` for ``polyqueue conformance``: its error says the suite cannot run, password masked."""
    from .errors import PolyqueueError

    try:
        check_reachable(url)
    except PolyqueueError as exc:
        raise type(exc)(scrub(f"cannot run the conformance suite: {exc}", url_secrets(url))) from None

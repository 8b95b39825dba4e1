"""Every mistake at the door gets a fast, one-line answer with no password in it (issue 12, points 1, 2, 9, 10, 11).

The conformance command against a dead server or with a wrong password, driver
errors that no retry can cure, malformed URLs and schemes, odd job ids, and
schemas that are not (or no longer) this polyqueue's: each through the real
entry point, on the real servers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import polyqueue
from polyqueue.backends.sql import SCHEMA_VERSION
from polyqueue.errors import BackendUnavailable, ConfigurationError, SchemaMismatch, SchemaMissing
from polyqueue.testing import drop_schema, require_server, unique_prefix

MakeQueue = Callable[..., polyqueue.Queue]

#: The installed console script, next to this interpreter.
POLYQUEUE = str(Path(sys.executable).parent / "polyqueue")


def run_command(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the installed ``polyqueue`` command; its result and how long it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYQUEUE_")}
    env["COLUMNS"] = "200"
    started = time.monotonic()
    result = subprocess.run([POLYQUEUE, *args], capture_output=True, text=True, env=env, timeout=300)
    return result, time.monotonic() - started


def startup_seconds() -> float:
    """How long the installed command takes to start and exit on this machine now (fastest of three)."""
    return min(run_command("--version")[1] for _ in range(3))


def run_fast_command(*args: str, within: float = 5.0) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run the command until one run takes at most ``within`` seconds, three runs at most.

    Returns the fastest run, its seconds, and the bound it was held to. On
    a shared 2-core machine at load 10 and more, everything runs several
    times slower: the bound grows with the slowdown ``polyqueue --version``
    shows against its 0.75 s on a machine at load 4 (the command itself takes
    ~1.4 s there). :func:`test_the_connection_check_never_retries` proves
    the no-retry part independently of the load.
    """
    bound = within * max(1.0, startup_seconds() / 0.75)
    best: tuple[subprocess.CompletedProcess[str], float] | None = None
    for _ in range(3):
        result, seconds = run_command(*args)
        if best is None or seconds < best[1]:
            best = (result, seconds)
        if seconds <= bound:
            break
    assert best is not None
    return best[0], best[1], bound


def run_pytest(cwd: Path, *args: str, strict: bool = False) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run pytest (with polyqueue's plugin, as installed) in ``cwd``; its result and how long it took."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYQUEUE_")}
    if strict:
        env["POLYQUEUE_REQUIRE_BACKENDS"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    return result, time.monotonic() - started


def with_password(url: str, password: str) -> str:
    """``url`` with its password replaced by ``password``."""
    return make_url(url).set(password=password).render_as_string(hide_password=False)


# --- point 1: the conformance command checks the connection first ------------------------------------------
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_conformance_against_a_dead_server_is_one_line_without_the_password(verbose: bool) -> None:
    require_server("postgresql")  # the same machine; port 1 refuses
    args = ["-v"] if verbose else []
    result, seconds, bound = run_fast_command(
        *args, "conformance", "postgresql://root:s3cr3t@127.0.0.1:1/x", *args, "--tb=long"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert seconds <= bound, f"took {seconds:.1f} s"
    assert len(output.strip().splitlines()) <= 5, output
    assert "s3cr3t" not in output
    assert "root:***@127.0.0.1:1/x" in output and "unavailable" in output


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_conformance_with_a_wrong_password_is_one_line_without_the_password(verbose: bool) -> None:
    url = with_password(require_server("mysql"), "wrong")
    args = ["-v"] if verbose else []
    result, seconds, bound = run_fast_command(*args, "conformance", url, *args, "--tb=long", "-l")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert seconds <= bound, f"took {seconds:.1f} s"
    assert len(output.strip().splitlines()) <= 5, output
    assert ":wrong@" not in output and "'wrong'" not in output
    assert "refused the connection" in output and "Access denied" in output


def test_the_connection_check_never_retries() -> None:
    """A reconnect window of a minute in the URL: the check still answers after one attempt."""
    from polyqueue.testing import conformance_preflight

    require_server("postgresql")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="cannot run the conformance suite"):
        conformance_preflight("postgresql://root:s3cr3t@127.0.0.1:1/x?reconnect_seconds=60")
    assert time.monotonic() - started < 30


def test_the_suite_under_pytest_scrubs_passwords_from_every_report(tmp_path: Path) -> None:
    """Run straight under pytest (no preflight), a failing test's long traceback shows no password."""
    url = require_server("postgresql")
    secret_url = with_password(url, "hunter2secret")
    (tmp_path / "test_leak.py").write_text(
        "def test_shows_the_url(polyqueue_url):\n"
        "    def connect(conninfo):\n"
        "        raise RuntimeError('could not use ' + conninfo)\n"
        "    connect(polyqueue_url)\n"
    )
    result, _ = run_pytest(tmp_path, "--tb=long", "-l", "-v", str(tmp_path), "--polyqueue-url", secret_url)
    output = result.stdout + result.stderr
    # PostgreSQL trusts loopback, so the connection check passes and the test itself fails, printing the URL.
    assert "1 failed" in output, output
    assert "hunter2secret" not in output
    assert "***" in output


def test_a_dead_server_under_pytest_skips_at_once_with_the_reason(tmp_path: Path) -> None:
    """Without strict mode every test is skipped with the connection check's reason, none waits its own timeout."""
    require_server("postgresql")
    dead = "postgresql://root:s3cr3t@127.0.0.1:1/x"
    result, seconds = run_pytest(tmp_path, "--pyargs", "polyqueue.conformance", "--polyqueue-url", dead, "-rs")
    output = result.stdout + result.stderr
    assert " error" not in output and "s3cr3t" not in output
    assert "skipped" in output and "cannot run the conformance suite" in output
    # ~180 tests each waiting a 10 s reconnect window would take half an hour; the check makes it one wait.
    assert seconds < 120, f"took {seconds:.0f} s"


def test_strict_mode_under_pytest_stops_the_run_in_one_line(tmp_path: Path) -> None:
    require_server("postgresql")
    dead = "postgresql://root:s3cr3t@127.0.0.1:1/x"
    result, _ = run_pytest(tmp_path, "--pyargs", "polyqueue.conformance", "--polyqueue-url", dead, strict=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "s3cr3t" not in output and "passed" not in output
    assert "cannot run the conformance suite" in output


# --- point 2: permanent errors at once, outages with back-off ------------------------------------------------
#: A reconnect window no load can hide: an error retried as an outage takes a minute, one refused at once seconds.
PATIENT = 60.0


def _first_error(url: str) -> tuple[Exception, float]:
    """What the first use of ``url`` raises (with a one-minute reconnect window), and how long it took."""
    started = time.monotonic()
    with pytest.raises(Exception) as caught, polyqueue.connect(url, reconnect_seconds=PATIENT) as q:
        q.stats()
    return caught.value, time.monotonic() - started


@pytest.mark.parametrize(
    "change",
    [{"database": "pq_no_such_database"}, {"username": "pq_no_such_role"}, {"host": "pq-no-such-host.invalid"}],
    ids=["database", "role", "host"],
)
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_wrong_url_is_a_configuration_error_at_once(kind: str, change: dict[str, str]) -> None:
    url = make_url(require_server(kind)).set(**change).render_as_string(hide_password=False)
    error, seconds = _first_error(url)
    assert isinstance(error, ConfigurationError), error
    assert seconds < PATIENT / 2, f"took {seconds:.1f} s: retried as an outage"
    assert "refused the connection" in str(error)


def test_a_wrong_password_is_a_configuration_error_at_once() -> None:
    url = with_password(require_server("mysql"), "pq-wrong-password")
    error, seconds = _first_error(url)
    assert isinstance(error, ConfigurationError) and seconds < PATIENT / 2
    assert "pq-wrong-password" not in str(error) and "***" in str(error)


def test_a_missing_sqlite_directory_is_a_configuration_error(tmp_path: Path) -> None:
    error, _ = _first_error(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'q.db'}")
    assert isinstance(error, ConfigurationError), error


def test_a_refused_connection_is_an_outage_retried_with_back_off() -> None:
    require_server("postgresql")
    started = time.monotonic()
    with (
        polyqueue.connect("postgresql://root@127.0.0.1:1/x", reconnect_seconds=1.0) as q,
        pytest.raises(BackendUnavailable),
    ):
        q.stats()
    # It kept trying for its reconnect window before giving up.
    assert time.monotonic() - started >= 1.0


# --- point 11: schema safety -----------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def sql_url(request: pytest.FixtureRequest) -> str:
    """Each SQL backend's test server (SQLite: a fresh file)."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def prefixed(sql_url: str) -> Iterator[polyqueue.Queue]:
    """An unmigrated queue on a fresh prefix; whatever it or the test created is dropped afterwards."""
    q = polyqueue.connect(sql_url, table_prefix=unique_prefix())
    yield q
    try:
        with q.backend.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {q.backend.jobs.name}")  # type: ignore[attr-defined]
        drop_schema(q)
    finally:
        q.close()


def _execute(q: polyqueue.Queue, *statements: str) -> None:
    with q.backend.engine.begin() as conn:  # type: ignore[attr-defined]
        for statement in statements:
            conn.exec_driver_sql(statement)


def test_migrate_refuses_a_foreign_jobs_table_naming_it(prefixed: polyqueue.Queue) -> None:
    table = prefixed.backend.jobs.name  # type: ignore[attr-defined]
    _execute(
        prefixed,
        f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, title VARCHAR(50))",
        f"INSERT INTO {table} VALUES (1, 'x')",
    )
    with pytest.raises(SchemaMismatch, match=f"table {table} .* is not a polyqueue jobs table"):
        prefixed.migrate()
    with prefixed.backend.engine.connect() as conn:  # type: ignore[attr-defined]
        inspector = sa.inspect(conn)
        # Nothing was created beside it, and the table itself is untouched (PostgreSQL: no fillfactor set).
        assert not inspector.has_table(prefixed.backend.schema_table.name)  # type: ignore[attr-defined]
        assert {c["name"] for c in inspector.get_columns(table)} == {"id", "title"}
        if conn.dialect.name == "postgresql":
            options = conn.exec_driver_sql(f"SELECT reloptions FROM pg_class WHERE relname = '{table}'").scalar()
            assert not options
    # Used anyway, it is a configuration error at once, never an outage a worker would wait out.
    with pytest.raises((SchemaMismatch, SchemaMissing)) as caught:
        prefixed.enqueue("t")
    assert "polyqueue migrate" in str(caught.value)


def test_an_older_schema_says_run_migrate_and_a_newer_says_upgrade(sql_url: str, fresh_queue: MakeQueue) -> None:
    q = fresh_queue(sql_url)
    schema = q.backend.schema_table.name  # type: ignore[attr-defined]
    # Newer first: the older case's migrate then brings the schema back to this polyqueue's version.
    for version, advice in ((SCHEMA_VERSION + 1, "upgrade polyqueue"), (SCHEMA_VERSION - 1, "run `polyqueue migrate`")):
        _execute(q, f"UPDATE {schema} SET version = {version}")
        with polyqueue.connect(sql_url, table_prefix=q.backend.prefix) as other:  # type: ignore[attr-defined]
            with pytest.raises(SchemaMismatch, match=re.escape(advice)):
                other.enqueue("t")
            with pytest.raises(SchemaMismatch, match=re.escape(advice)):
                other.stats()
            if version > SCHEMA_VERSION:
                with pytest.raises(SchemaMismatch, match="upgrade polyqueue"):
                    other.migrate()
            else:
                other.migrate()
                other.enqueue("t")
    with polyqueue.connect(sql_url, table_prefix=q.backend.prefix) as other:  # type: ignore[attr-defined]
        assert other.stats()["pending"] == 1


def test_a_jobs_table_without_its_version_row_is_upgraded_not_stamped(mysql_url: str, fresh_queue: MakeQueue) -> None:
    """A MySQL table of polyqueue's first shape (TEXT payloads) and no schema row: migrate upgrades it all."""
    q = fresh_queue(mysql_url)
    table, schema = q.backend.jobs.name, q.backend.schema_table.name  # type: ignore[attr-defined]
    _execute(q, f"DELETE FROM {schema}", f"ALTER TABLE `{table}` MODIFY payload TEXT NOT NULL")
    with polyqueue.connect(mysql_url, table_prefix=q.backend.prefix) as other:  # type: ignore[attr-defined]
        with pytest.raises(SchemaMismatch, match=r"no schema version.*polyqueue migrate"):
            other.enqueue("t")
        other.migrate()
        job_id = other.enqueue("big", {"blob": "x" * 100_000})  # TEXT holds 64 KB: error 1406 if not upgraded
        assert other.require(job_id).payload == {"blob": "x" * 100_000}


# --- point 9: URL and scheme errors ----------------------------------------------------------------------
def _configuration_error(url: str, **options: object) -> str:
    """The ConfigurationError message opening ``url`` (and using it once) gives."""
    # Opening or the first use, whichever refuses.
    prefix = unique_prefix()
    with pytest.raises(ConfigurationError) as caught, polyqueue.connect(url, table_prefix=prefix, **options) as q:
        q.stats()
    return str(caught.value)


def test_a_lifecycle_plugin_is_not_offered_or_taken_as_a_backend() -> None:
    message = _configuration_error("prometheus://sqlite:///x.db")
    assert "'prometheus' is a lifecycle plugin, not a backend" in message and "plugins=['prometheus']" in message
    listed = _configuration_error("nosuchscheme://x").partition("Known schemes:")[2].partition(";")[0]
    assert "sqlite" in listed and "postgresql" in listed and "prometheus" not in listed


def test_a_near_miss_scheme_gets_a_suggestion() -> None:
    assert "did you mean postgresql://?" in _configuration_error("postgres://root@127.0.0.1/test")
    assert "did you mean" not in _configuration_error("nosuchscheme://x")


def test_a_driver_polyqueue_does_not_install_is_named_with_the_way_out() -> None:
    message = _configuration_error("postgresql+psycopg2://root@127.0.0.1/test")
    assert "needs the module 'psycopg2'" in message and "postgresql://" in message
    assert "SQLAlchemy has no driver 'postgresql+nosuch'" in _configuration_error("postgresql+nosuch://root@h/db")


def test_a_bad_port_is_one_clear_line_without_the_password() -> None:
    message = _configuration_error("postgresql://root:s3cr3t@127.0.0.1:notaport/db")
    assert "port 'notaport' is not a number" in message and "s3cr3t" not in message


def test_an_unknown_driver_parameter_is_a_configuration_error(mysql_url: str) -> None:
    message = _configuration_error(mysql_url + "?no_such_parameter=1")
    assert "query parameter its driver does not take" in message and "no_such_parameter" in message


def test_sqlite_with_two_slashes_is_one_line_saying_three() -> None:
    message = _configuration_error("sqlite://polyqueue.db")
    assert "sqlite:///polyqueue.db" in message and "\n" not in message


def test_urls_show_as_written_with_every_password_masked(pg_url: str) -> None:
    with polyqueue.connect("sqlite:///:memory:") as q:
        assert repr(q) == "<polyqueue.Queue sqlite:///:memory:>"
    with_at = with_password(pg_url, "x").replace(":x@", ":p@ss@w0rd@")  # an '@' its owner did not encode
    with polyqueue.connect(with_at, table_prefix=unique_prefix()) as q:
        assert "ss" not in repr(q).partition("@")[0] and "w0rd" not in repr(q)
        assert q.backend.url.password == "p@ss@w0rd"  # type: ignore[attr-defined]
    with polyqueue.connect("sqlite:///:memory:", depth_cache="redis://:cachepw@127.0.0.1:6379/0") as q:
        assert "cachepw" not in repr(q.options) and "cachepw" not in repr(q)


def test_the_command_answers_url_mistakes_in_one_line() -> None:
    for url, fragment in [
        ("postgres://root:s3cr3t@127.0.0.1/test", "did you mean postgresql://?"),
        ("sqlite://polyqueue.db", "three slashes"),
        ("prometheus://sqlite:///x.db", "lifecycle plugin"),
        ("postgresql://root:s3cr3t@127.0.0.1:notaport/db", "is not a number"),
    ]:
        result, _ = run_command("--url", url, "stats")
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "Traceback" not in output and "unexpected" not in output
        assert fragment in output and "s3cr3t" not in output
        assert len(result.stderr.strip().splitlines()) == 1, output


def test_redis_with_an_unknown_host_is_a_configuration_error_at_once() -> None:
    require_server("redis")
    error, seconds = _first_error("redis://pq-no-such-host.invalid:6379/0")
    assert isinstance(error, ConfigurationError), error
    assert seconds < PATIENT / 2, f"took {seconds:.1f} s: retried as an outage"

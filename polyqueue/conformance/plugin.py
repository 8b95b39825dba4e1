"""The pytest plugin behind the conformance suite.

Installed with polyqueue (entry point ``pytest11``) and inert until a URL is
given with ``--polyqueue-url`` (or the ini key ``polyqueue_url``, or the
environment variable ``POLYQUEUE_CONFORMANCE_URL``). It provides:

* fixtures ``polyqueue_url``, ``polyqueue_options``, ``queue`` (a migrated queue
  on a table prefix of its own, dropped afterwards) and ``queue_factory``;
* the marker ``requires(*capabilities)``: a test needing a capability the
  backend lacks is skipped with the reason, never passed;
* known failures: a backend class's ``known_failures = {"TestX::test_y": reason}``
  turns those tests into ``xfail(strict=True)``;
* a capability guard (the suite's meta-test): a suite test that uses an
  optional feature without declaring it with ``requires`` fails;
* strict mode (``--polyqueue-strict`` or ``POLYQUEUE_REQUIRE_BACKENDS=1``):
  an unreachable backend fails the tests instead of skipping them;
* one connection check before the first test (:func:`polyqueue.testing.check_reachable`): an
  unreachable backend or a wrong URL ends the run at once with one line
  (strict mode) or skips every test with that reason, instead of each test
  waiting out its own reconnect window;
* no password in any report: every report's traceback, captured output and
  skip reason is scrubbed of the passwords of the URLs under test, whatever
  the traceback style (pytest prints functions' arguments, the URL among them).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

import polyqueue
from polyqueue.errors import BackendUnavailable, PolyqueueError
from polyqueue.testing import backends_required, check_reachable, drop_schema, scrub, unique_prefix, url_secrets

from .guard import CapabilityGuardQueue

MARKER = "requires"
#: Passwords of the URLs this run has seen, scrubbed from every report.
_SECRETS = pytest.StashKey[set[str]]()
#: Why the configured backend cannot be used (the session's connection check), or None.
_UNREACHABLE = pytest.StashKey["str | None"]()


def remember_secrets(config: pytest.Config, url: str) -> None:
    """Scrub ``url``'s password from every report of this run."""
    config.stash.setdefault(_SECRETS, set()).update(url_secrets(url))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Scrub passwords from the report of each test phase before anything prints it."""
    outcome = yield
    secrets = item.config.stash.get(_SECRETS, set())
    if secrets:
        _scrub_report(outcome.get_result(), secrets)


def _scrub_report(report: pytest.TestReport, secrets: set[str]) -> None:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        path, line, reason = longrepr
        report.longrepr = (path, line, scrub(reason, secrets))
    elif longrepr is not None:
        text = str(longrepr)
        if any(secret in text for secret in secrets):
            report.longrepr = scrub(text, secrets)
    report.sections = [(title, scrub(content, secrets)) for title, content in report.sections]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Check the configured backend once, before any test waits on it."""
    config = session.config
    url = _configured_url(config)
    config.stash[_UNREACHABLE] = None
    if not url:
        return
    remember_secrets(config, url)
    try:
        check_reachable(url)
    except PolyqueueError as exc:
        message = scrub(f"cannot run the conformance suite: {exc}", url_secrets(url))
        if _strict(config):
            pytest.exit(message, returncode=pytest.ExitCode.INTERRUPTED)
        config.stash[_UNREACHABLE] = message


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("polyqueue", "polyqueue conformance suite")
    group.addoption("--polyqueue-url", default=None, help="queue URL the conformance suite runs against")
    group.addoption(
        "--polyqueue-strict",
        action="store_true",
        default=False,
        help="fail (instead of skip) when the backend cannot be reached",
    )
    parser.addini("polyqueue_url", "queue URL the conformance suite runs against", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*capabilities): the test needs these backend capabilities")
    config.addinivalue_line("markers", "slow: multi-process or long-running tests (deselect with -m \"not slow\")")


def _configured_url(config: pytest.Config) -> str | None:
    url = config.getoption("--polyqueue-url") or config.getini("polyqueue_url")
    return url or os.environ.get("POLYQUEUE_CONFORMANCE_URL") or None


def _strict(config: pytest.Config) -> bool:
    return bool(config.getoption("--polyqueue-strict")) or backends_required()


@pytest.fixture
def polyqueue_url(request: pytest.FixtureRequest) -> str:
    """The URL under test; override this fixture (e.g. parametrised) to run the suite on several backends."""
    url = _configured_url(request.config)
    if not url:
        pytest.skip("no --polyqueue-url given: the polyqueue conformance suite is inactive")
    return url


@pytest.fixture
def polyqueue_options() -> dict[str, Any]:
    """Extra ``connect`` options for every queue of the suite (override to add e.g. ``depth_cache``)."""
    return {}


def declared_capabilities(node: pytest.Item) -> set[str]:
    """Capabilities a test declares with ``@requires(...)`` (on the function or its class)."""
    caps: set[str] = set()
    for mark in node.iter_markers(MARKER):
        caps.update(mark.args)
    return caps


def _apply_known_failures(request: pytest.FixtureRequest, queue: polyqueue.Queue) -> None:
    known: dict[str, str] = getattr(type(queue.backend), "known_failures", {}) or {}
    node = request.node
    cls = node.cls.__name__ if node.cls is not None else ""
    name = node.originalname if hasattr(node, "originalname") else node.name
    for key in (f"{cls}::{name}", f"{cls}::{node.name}", name):
        if key in known:
            node.add_marker(pytest.mark.xfail(strict=True, reason=f"known failure: {known[key]}"))
            return


@pytest.fixture
def queue_factory(
    request: pytest.FixtureRequest, polyqueue_url: str, polyqueue_options: dict[str, Any]
) -> Iterator[Callable[..., polyqueue.Queue]]:
    """``queue_factory(**options)``: open a queue on the URL under test.

    The first call creates a fresh table prefix and migrates it; later calls
    share that prefix (another "process" on the same queue) unless they pass
    their own ``table_prefix``. Everything is dropped after the test.
    """
    prefix = unique_prefix()
    opened: list[polyqueue.Queue] = []
    migrated: list[polyqueue.Queue] = []
    declared = declared_capabilities(request.node)
    remember_secrets(request.config, polyqueue_url)
    unreachable = request.config.stash.get(_UNREACHABLE, None)
    if unreachable and polyqueue_url == _configured_url(request.config):
        _unreachable(request, unreachable)

    def make(**options: Any) -> polyqueue.Queue:
        merged = {**polyqueue_options, "table_prefix": prefix, **options}
        try:
            raw = polyqueue.connect(polyqueue_url, **merged)
        except BackendUnavailable as exc:
            _unreachable(request, exc)
        q = CapabilityGuardQueue.wrap(raw, declared)
        opened.append(q)
        if len(opened) == 1:
            missing = sorted(declared - set(q.capabilities))
            if missing:
                pytest.skip(f"backend {q.backend.name!r} lacks capability {', '.join(missing)}")
            _apply_known_failures(request, q)
            try:
                q.migrate()
            except BackendUnavailable as exc:
                _unreachable(request, exc)
            migrated.append(q)
        return q

    yield make
    for q in reversed(opened):
        try:
            if any(q is m for m in migrated):
                drop_schema(q)
        except PolyqueueError as exc:
            # The test's own outcome says what went wrong; a schema left behind is worth a warning, not an error.
            warnings.warn(f"could not drop the test schema {prefix}: {exc}", stacklevel=1)
        finally:
            q.close()


def _unreachable(request: pytest.FixtureRequest, exc: Exception | str) -> None:
    message = exc if isinstance(exc, str) else f"backend unreachable: {exc}"
    if _strict(request.config):
        pytest.fail(message + " (strict mode)", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def queue(queue_factory: Callable[..., polyqueue.Queue]) -> polyqueue.Queue:
    """A migrated queue on a fresh table prefix of the backend under test."""
    return queue_factory()

"""Compatibility runs: the conformance suite against many backends, and the matrix they produce.

* :func:`run_conformance` runs the suite against one URL in this process
  (``polyqueue conformance URL``).
* :func:`run_compat` runs it against every configured target -- SQLite,
  PostgreSQL and MariaDB, each with and without the Redis depth cache, and
  every installed plugin backend that names a ``conformance_url`` -- one
  pytest subprocess per target, and writes ``compat_matrix/README.md`` and
  ``compat_matrix/matrix.json`` (``polyqueue compat``).
* :func:`check_matrix` re-runs, for chosen columns, exactly the tests a
  committed matrix shows as passing and reports any that no longer pass.

Subprocesses get the URL through the environment, never the command line, so
a password never shows in a process listing; the matrix stores only masked
descriptions. Each subprocess loads this module as a pytest plugin (``-p
polyqueue.conformance.matrix``), which writes a JSON report of every test's outcome.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata, util
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import make_url

from ..errors import PolyqueueError
from ..testing import backends_required, conformance_preflight, reachable, server_url, unique_prefix

__all__ = [
    "MARIADB_NOTE",
    "Target",
    "check_matrix",
    "collect_matrix",
    "default_targets",
    "plugin_targets",
    "render_readme",
    "run_compat",
    "run_conformance",
    "write_matrix",
]

#: Environment variable naming the JSON file the in-subprocess report plugin writes.
REPORT_ENV = "POLYQUEUE_COMPAT_REPORT"
#: Environment variable naming a JSON list of test keys to keep (all others are deselected).
ONLY_ENV = "POLYQUEUE_COMPAT_ONLY"
#: What the MariaDB column says about MySQL (no MySQL server runs in this project's CI).
MARIADB_NOTE = "MariaDB {version} tested here; MySQL 8 supported by design, not run in this project's CI"
#: Seconds one target's run may take before it is stopped and reported as an error.
TARGET_TIMEOUT = 900.0

PASSED, FAILED, ERROR, SKIPPED, XFAILED, XPASSED, MISSING = (
    "passed",
    "failed",
    "error",
    "skipped",
    "xfailed",
    "xpassed",
    "missing",
)


# ---------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One column of the matrix: a backend URL and what it needs to be reachable."""

    key: str  #: column id, e.g. ``postgresql+redis``
    label: str  #: column heading
    url: str  #: the URL the suite runs against (may hold a password: never written out)
    needs: tuple[str, ...] = ()  #: server kinds (``postgresql``, ``mysql``, ``redis``) that must answer
    note: str = ""  #: a remark shown under the matrix
    display: str = ""  #: what the matrix shows instead of the URL
    #: Why the target cannot run at all (a plugin that failed to import, or has no conformance URL).
    unavailable: str = ""

    def shown_url(self) -> str:
        """The URL as the matrix shows it: ``display``, or the URL with the password masked."""
        if self.display:
            return self.display
        try:
            url = make_url(self.url)
        except Exception:
            return self.url.split(":", 1)[0] + "://…"
        cache = url.query.get("depth_cache")
        shown = url.difference_update_query(["depth_cache"]).render_as_string(hide_password=True)
        if cache:
            # The cache URL rides in the query string, where SQLAlchemy would not mask its password.
            shown += "?depth_cache=" + make_url(str(cache)).render_as_string(hide_password=True)
        return shown


def _with_depth_cache(url: str, redis_url: str) -> str:
    return make_url(url).update_query_dict({"depth_cache": redis_url}).render_as_string(hide_password=False)


def depth_cache_available() -> bool:
    """Whether the Redis depth cache and its client are importable here."""
    return util.find_spec("polyqueue.depth_cache") is not None and util.find_spec("redis") is not None


def default_targets(workdir: str | Path) -> list[Target]:
    """SQLite (a file in ``workdir``), PostgreSQL and MariaDB, with and without the depth cache, then plugins."""
    workdir = Path(workdir)
    redis_url = server_url("redis")
    bases = [
        Target("sqlite", "SQLite", f"sqlite:///{workdir / 'sqlite.db'}", display="sqlite:///<temporary file>"),
        Target("postgresql", "PostgreSQL", server_url("postgresql"), needs=("postgresql",)),
        Target("mysql", "MariaDB / MySQL", server_url("mysql"), needs=("mysql",), note=MARIADB_NOTE),
    ]
    targets: list[Target] = []
    for base in bases:
        targets.append(base)
        if not depth_cache_available():
            continue
        url = base.url
        if base.key == "sqlite":
            url = f"sqlite:///{workdir / 'sqlite-redis.db'}"  # its own file: the two runs may go in parallel
        targets.append(
            Target(
                f"{base.key}+redis",
                f"{base.label} + Redis depth cache",
                _with_depth_cache(url, redis_url),
                needs=(*base.needs, "redis"),
                note=base.note,
                display=base.display and f"{base.display}?depth_cache=redis://…",
            )
        )
    return targets + plugin_targets()


def plugin_targets() -> list[Target]:
    """One target per URL scheme an installed plugin serves, at its backend class's ``conformance_url``.

    A backend that needs no server (like ``memory://``), or names the test
    server it runs on (``redis+cluster://127.0.0.1:7000/``), sets the class
    attribute ``conformance_url``, and may name its column with
    ``conformance_label``; others are listed as not run, with the command that
    runs them. A plugin that fails to import is listed with the error.
    """
    from ..plugins import ENTRY_POINT_GROUP, make_plugin_manager

    targets: list[Target] = []
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        package = f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
        try:
            pm = make_plugin_manager([ep.name])
        except PolyqueueError as exc:
            targets.append(Target(ep.name, f"{ep.name} (plugin {package})", "", unavailable=str(exc)))
            continue
        for impl in pm.hook.polyqueue_backends.get_hookimpls():
            if impl.plugin_name != ep.name:
                continue
            offered = cast("Mapping[str, type]", impl.function() or {})
            for scheme, cls in sorted(offered.items()):
                url = getattr(cls, "conformance_url", "")
                label = getattr(cls, "conformance_label", "") or scheme
                targets.append(
                    Target(
                        scheme,
                        f"{label} (plugin {package})",
                        url,
                        unavailable="" if url else f"no conformance_url; run `polyqueue conformance {scheme}://…`",
                    )
                )
    return targets


def _as_targets(targets: Iterable[Target | str] | None, workdir: Path) -> list[Target]:
    if targets is None:
        return default_targets(workdir)
    out: list[Target] = []
    for item in targets:
        if isinstance(item, Target):
            out.append(item)
            continue
        scheme = item.split(":", 1)[0]
        kind = scheme.split("+", 1)[0]
        needs = (kind,) if kind in ("postgresql", "mysql", "mariadb") else ()
        key, n = scheme, 2
        while any(t.key == key for t in out):
            key, n = f"{scheme}#{n}", n + 1
        out.append(Target(key, scheme, item, needs=tuple("mysql" if k == "mariadb" else k for k in needs)))
    return out


def unreachable_servers(target: Target) -> list[str]:
    """The server kinds ``target`` needs that do not accept connections now."""
    return [kind for kind in target.needs if not reachable(_server_for(target, kind))]


def _server_for(target: Target, kind: str) -> str:
    if kind == "redis":
        query = make_url(target.url).query.get("depth_cache")
        return str(query) if query else server_url("redis")
    return target.url


# ---------------------------------------------------------------------------
# Running the suite
# ---------------------------------------------------------------------------
def run_conformance(url: str, extra_pytest_args: Sequence[str] = (), *, check: bool = True) -> int:
    """Run the conformance suite against ``url`` in this process; return pytest's exit code.

    Equivalent to ``pytest --pyargs polyqueue.conformance --polyqueue-url URL
    [extra_pytest_args]``: tests needing a capability the backend lacks are
    skipped with the reason, a backend's ``known_failures`` become strict
    xfails, and an unreachable backend skips (fails with ``--polyqueue-strict``).

    Before pytest starts, one connection check (unless ``check`` is False:
    the caller made it): a wrong URL or an unreachable server raises its
    polyqueue error, password masked, at once.
    """
    import pytest

    if check:
        conformance_preflight(url)
    args = ["--pyargs", "polyqueue.conformance", "-p", "no:cacheprovider", "--polyqueue-url", url]
    return int(pytest.main([*args, *extra_pytest_args]))


def _suite_file() -> Path:
    import polyqueue.conformance

    return Path(polyqueue.conformance.__file__).parent / "test_conformance.py"


@dataclass
class _Run:
    target: Target
    status: str = "ran"  #: ran | not run | error
    reason: str = ""
    server_version: str = ""
    capabilities: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    requires: dict[str, list[str]] = field(default_factory=dict)
    exit_code: int | None = None
    seconds: float = 0.0


def _probe(run: _Run) -> bool:
    """Fill in server version and capabilities; False (with the reason) if the target cannot run."""
    import polyqueue

    target = run.target
    if target.unavailable:
        run.status, run.reason = "not run", target.unavailable
        return False
    down = unreachable_servers(target)
    if down:
        run.status, run.reason = "not run", f"{', '.join(down)} server unreachable"
        return False
    try:
        with polyqueue.connect(target.url, table_prefix=unique_prefix()) as q:
            run.capabilities = sorted(q.capabilities)
            run.server_version = _version_text(q.backend.server_version(), target)
    except PolyqueueError as exc:
        run.status, run.reason = "not run", f"cannot connect: {exc}"
        return False
    return True


def _version_text(version: str, target: Target) -> str:
    if "depth_cache" not in make_url(target.url).query:
        return version
    try:
        import redis

        client = redis.Redis.from_url(_server_for(target, "redis"), socket_timeout=2)
        try:
            redis_version = client.info("server").get("redis_version", "?")
        finally:
            client.close()
    except Exception as exc:
        redis_version = f"unknown ({type(exc).__name__})"
    return f"{version} + Redis {redis_version}"


def _run_suite(
    run: _Run, workdir: Path, only: Sequence[str] | None, pytest_args: Sequence[str], *, tag: str = ""
) -> None:
    """Run the suite for one target in a subprocess and read its JSON report into ``run``."""
    report = workdir / f"report-{run.target.key.replace('+', '_').replace('#', '_')}{tag}.json"
    env = {
        **os.environ,
        "POLYQUEUE_CONFORMANCE_URL": run.target.url,
        REPORT_ENV: str(report),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop(ONLY_ENV, None)
    if only is not None:
        keep = workdir / f"only-{report.name}"
        keep.write_text(json.dumps(list(only)))
        env[ONLY_ENV] = str(keep)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(_suite_file()),
        "-p",
        "polyqueue.conformance.matrix",
        "-p",
        "no:cacheprovider",
        "-q",
        "--polyqueue-strict",
        "-o",
        "addopts=",
        *pytest_args,
    ]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TARGET_TIMEOUT)
    except subprocess.TimeoutExpired:
        run.status, run.reason = "error", f"the suite did not finish within {TARGET_TIMEOUT:.0f}s"
        return
    run.seconds = time.monotonic() - started
    run.exit_code = proc.returncode
    if not report.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        run.status, run.reason = "error", "pytest wrote no report: " + " | ".join(tail)
        return
    data = json.loads(report.read_text())
    run.results, run.requires = data["results"], data["requires"]


def collect_matrix(
    targets: Iterable[Target | str] | None = None,
    *,
    parallel: int = 2,
    pytest_args: Sequence[str] = (),
    only: Mapping[str, Sequence[str]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the suite on each target (``parallel`` at a time) and return the matrix as a dict.

    ``targets`` are :class:`Target` objects or URLs; None means
    :func:`default_targets`. ``only`` maps a column key to the test keys to
    run there (``TestArea::test_name``); other columns run everything.
    """
    say = progress or (lambda _message: None)
    with tempfile.TemporaryDirectory(prefix="polyqueue-compat-") as tmp:
        workdir = Path(tmp)
        runs = [_Run(t) for t in _as_targets(targets, workdir)]

        def one(run: _Run) -> _Run:
            if _probe(run):
                say(f"{run.target.key}: running the conformance suite")
                keep = None if only is None else only.get(run.target.key)
                _run_suite(run, workdir, keep, pytest_args)
            say(f"{run.target.key}: {_run_summary(run)}")
            return run

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            done = list(pool.map(one, runs))
    return _matrix(done)


def _run_summary(run: _Run) -> str:
    if run.status != "ran":
        return f"{run.status}: {run.reason}"
    counts: dict[str, int] = {}
    for result in run.results.values():
        counts[result["outcome"]] = counts.get(result["outcome"], 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) + f" in {run.seconds:.0f}s"


def _area_order() -> list[str]:
    from . import suite

    return [name for name in suite.__all__ if name.startswith("Test")]


def _area_doc(area: str) -> str:
    from . import suite

    cls = getattr(suite, area, None)
    doc = (cls.__doc__ or "").strip().splitlines() if cls is not None else []
    return doc[0] if doc else ""


def _matrix(runs: Sequence[_Run]) -> dict[str, Any]:
    import polyqueue

    tests: dict[str, dict[str, Any]] = {}
    for run in runs:
        for key, result in run.results.items():
            entry = tests.setdefault(key, {"area": key.split("::", 1)[0], "requires": [], "results": {}})
            entry["requires"] = sorted(set(entry["requires"]) | set(run.requires.get(key, [])))
            entry["results"][run.target.key] = result
    order = {area: i for i, area in enumerate(_area_order())}
    ordered = dict(sorted(tests.items(), key=lambda kv: (order.get(kv[1]["area"], len(order)), kv[0])))
    backends = {}
    for run in runs:
        note = run.target.note
        if "{version}" in note:
            note = note.format(version=".".join(run.server_version.split(".")[:2]) or "(version unknown)")
        backends[run.target.key] = {
            "label": run.target.label,
            "url": run.target.shown_url(),
            "status": run.status,
            "reason": run.reason,
            "server_version": run.server_version,
            "capabilities": run.capabilities,
            "note": note,
            "exit_code": run.exit_code,
            "seconds": round(run.seconds, 1),
        }
    return {
        "generated_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "polyqueue_version": polyqueue.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "capabilities": sorted(_all_capabilities()),
        "backends": backends,
        "areas": {area: _area_doc(area) for area in _area_order()},
        "tests": ordered,
    }


# ---------------------------------------------------------------------------
# Writing the matrix
# ---------------------------------------------------------------------------
_SYMBOL = {PASSED: "pass", SKIPPED: "skip", XFAILED: "known failure", FAILED: "FAIL", ERROR: "ERROR", XPASSED: "XPASS"}


def _cell(results: Sequence[dict[str, Any]]) -> str:
    """One area x backend cell: how many passed, and every skip, known failure or failure with its reason."""
    if not results:
        return "-"
    counts: dict[str, int] = {}
    reasons: dict[str, set[str]] = {}
    for result in results:
        outcome = result["outcome"]
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome != PASSED and result.get("reason"):
            reasons.setdefault(outcome, set()).add(_short_reason(result["reason"]))
    parts = []
    for outcome in (FAILED, ERROR, XPASSED, MISSING, PASSED, XFAILED, SKIPPED):
        if outcome in counts:
            why = f" ({'; '.join(sorted(reasons[outcome]))})" if outcome in reasons else ""
            parts.append(f"{_SYMBOL.get(outcome, outcome)} {counts[outcome]}{why}")
    return ", ".join(parts)


def _short_reason(reason: str) -> str:
    reason = reason.replace("|", "/").replace("\n", " ").strip()
    if reason.startswith("backend ") and " lacks capability " in reason:
        reason = "lacks " + reason.split(" lacks capability ", 1)[1]
    return reason[:120]


def render_readme(matrix: Mapping[str, Any]) -> str:
    """The matrix as Markdown: backends, capabilities, test areas, then every test that did not pass."""
    backends: dict[str, Any] = matrix["backends"]
    keys = list(backends)
    date = matrix["generated_at"][:10]
    lines = [
        "# Compatibility matrix",
        "",
        f"Generated by `polyqueue compat` on {date} ({matrix['generated_at']}) with polyqueue "
        f"{matrix['polyqueue_version']}, Python {matrix['python']} on {matrix['platform']}: the conformance "
        "suite (`polyqueue.conformance`) run against each backend on a real server. Machine-readable: "
        "[matrix.json](matrix.json). Cells: *pass* = passed, *skip* = skipped because the backend lacks "
        "a capability (never counted as a pass), *known failure* = the backend's declared `known_failures` "
        "(strict xfail), *FAIL* = failed.",
        "",
        "## Backends",
        "",
        "| column | URL | server version | run | note |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        b = backends[key]
        run = "ran" if b["status"] == "ran" else f"{b['status']}: {_short_reason(b['reason'])}"
        if b["status"] == "ran":
            run += f" ({b['seconds']:.0f}s, exit {b['exit_code']})"
        lines.append(f"| **{b['label']}** | `{b['url']}` | {b['server_version'] or '-'} | {run} | {b['note']} |")
    # The capabilities polyqueue had when the matrix was made (older matrices: those some backend had), so
    # the README stays what matrix.json renders to when a later polyqueue adds one.
    known = set(matrix.get("capabilities", ()))
    capabilities = sorted({c for b in backends.values() for c in b["capabilities"]} | known)
    lines += ["", "## Capabilities", "", "| capability | " + " | ".join(backends[k]["label"] for k in keys) + " |"]
    lines.append("|---|" + "---|" * len(keys))
    for cap in capabilities:
        row = [
            ("yes" if cap in backends[k]["capabilities"] else "no") if backends[k]["status"] == "ran" else "-"
            for k in keys
        ]
        lines.append(f"| `{cap}` | " + " | ".join(row) + " |")
    lines += ["", "## Test areas", "", "| area | " + " | ".join(backends[k]["label"] for k in keys) + " |"]
    lines.append("|---|" + "---|" * len(keys))
    tests: dict[str, Any] = matrix["tests"]
    for area, doc in matrix["areas"].items():
        in_area = [t for t in tests.values() if t["area"] == area]
        if not in_area:
            continue
        cells = []
        for key in keys:
            if backends[key]["status"] != "ran":
                cells.append("not run")
                continue
            cells.append(_cell([t["results"][key] for t in in_area if key in t["results"]]))
        lines.append(f"| **{area}** {doc} | " + " | ".join(cells) + " |")
    lines += ["", "## Tests that did not pass everywhere", ""]
    rows = []
    for name, test in tests.items():
        if all(r["outcome"] == PASSED for r in test["results"].values()):
            continue
        cells = []
        for key in keys:
            result = test["results"].get(key)
            if result is None:
                cells.append("-")
            elif result["outcome"] == PASSED:
                cells.append("pass")
            else:
                why = f": {_short_reason(result['reason'])}" if result.get("reason") else ""
                cells.append(f"{_SYMBOL.get(result['outcome'], result['outcome'])}{why}")
        needs = ", ".join(f"`{c}`" for c in test["requires"]) or "-"
        rows.append(f"| `{name}` | {needs} | " + " | ".join(cells) + " |")
    if rows:
        lines.append("| test | requires | " + " | ".join(backends[k]["label"] for k in keys) + " |")
        lines.append("|---|---|" + "---|" * len(keys))
        lines += rows
    else:
        lines.append("None: every test passed on every backend that ran.")
    total = len(tests)
    lines += [
        "",
        f"{total} tests in {len([a for a in matrix['areas'] if any(t['area'] == a for t in tests.values())])} "
        "areas. Regenerate with `polyqueue compat` (servers from `POLYQUEUE_TEST_*_URL`, defaults on loopback); "
        "`tests/test_compat_matrix.py` checks that no cell shown here as passing fails now.",
        "",
    ]
    return "\n".join(lines)


def _all_capabilities() -> set[str]:
    from ..backends.base import CAPABILITIES

    return set(CAPABILITIES)


def write_matrix(matrix: Mapping[str, Any], out_dir: str | Path) -> None:
    """Write ``README.md`` and ``matrix.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps(matrix, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(render_readme(matrix), encoding="utf-8")


def run_compat(
    targets: Iterable[Target | str] | None = None,
    out_dir: str | Path = "compat_matrix",
    *,
    parallel: int = 2,
    pytest_args: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> int:
    """Run the conformance suite on every target and write the compat matrix; return an exit code.

    ``targets`` are URLs or :class:`Target` objects; None means SQLite,
    PostgreSQL and MariaDB (servers from ``POLYQUEUE_TEST_*_URL``, loopback
    defaults), each also with the Redis depth cache when it is importable,
    plus every installed plugin backend with a ``conformance_url``. Writes
    ``out_dir/README.md`` and ``out_dir/matrix.json``. Returns 0 when every
    test that ran passed (or was skipped or a known failure), 1 when one
    failed, and 1 too when a target could not run while
    ``POLYQUEUE_REQUIRE_BACKENDS`` is set.
    """
    say = progress or (lambda message: print(message, file=sys.stderr, flush=True))
    matrix = collect_matrix(targets, parallel=parallel, pytest_args=pytest_args, progress=say)
    write_matrix(matrix, out_dir)
    say(f"wrote {Path(out_dir) / 'README.md'} and {Path(out_dir) / 'matrix.json'}")
    return 1 if _failures(matrix) else 0


def _failures(matrix: Mapping[str, Any]) -> list[str]:
    bad = []
    for name, test in matrix["tests"].items():
        for key, result in test["results"].items():
            if result["outcome"] in (FAILED, ERROR, XPASSED, MISSING):
                bad.append(f"{key} {name}: {result['outcome']}")
    for key, backend in matrix["backends"].items():
        if backend["status"] == "error" or (backend["status"] != "ran" and backends_required()):
            bad.append(f"{key}: {backend['status']}: {backend['reason']}")
    return bad


# ---------------------------------------------------------------------------
# Checking a committed matrix
# ---------------------------------------------------------------------------
def check_matrix(
    matrix_path: str | Path = "compat_matrix/matrix.json",
    columns: Iterable[str] | None = None,
    *,
    leave_out: Iterable[str] = (),
    shards: int = 2,
    parallel: int = 6,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Re-run, per column, the tests the committed matrix shows passing; return every regression found.

    ``columns`` limits the check to those column keys (default: all);
    ``leave_out`` names capabilities whose tests are not re-run (for a
    quicker check: ``multi_process`` tests start worker processes). Each
    column's tests are split into ``shards`` subprocesses (the suite is
    mostly waiting on leases and timers), ``parallel`` running at once. A
    column whose server is unreachable is left out (reported as a problem
    when ``POLYQUEUE_REQUIRE_BACKENDS`` is set). A regression is a test shown
    as passing that now fails, errors, is skipped or no longer exists. An
    empty list means every checked cell still passes.
    """
    say = progress or (lambda _message: None)
    committed = json.loads(Path(matrix_path).read_text(encoding="utf-8"))
    wanted = set(committed["backends"]) if columns is None else set(columns)
    passing: dict[str, list[str]] = {}
    skipped_capabilities = set(leave_out)
    for name, test in committed["tests"].items():
        if skipped_capabilities & set(test["requires"]):
            continue
        for key, result in test["results"].items():
            if key in wanted and result["outcome"] == PASSED:
                passing.setdefault(key, []).append(name)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="polyqueue-compat-check-") as tmp:
        root = Path(tmp)
        available = {t.key: t for t in default_targets(root)}
        for key in sorted(wanted - set(available)):
            problems.append(f"column {key!r} of the committed matrix has no target here (plugin not installed?)")
        work: list[tuple[_Run, list[str], str]] = []
        for key in sorted(set(passing) & set(available)):
            names = sorted(passing[key])
            for i in range(max(1, shards)):
                part = names[i :: max(1, shards)]
                if part:
                    shard_dir = root / f"shard-{len(work)}"
                    shard_dir.mkdir()
                    # A SQLite target gets a file of its own per shard; server URLs are unchanged.
                    target = replace(available[key], url=available[key].url.replace(str(root), str(shard_dir)))
                    work.append((_Run(target), part, f"{len(work)}"))

        def one(item: tuple[_Run, list[str], str]) -> _Run:
            run, part, tag = item
            if _probe(run):
                _run_suite(run, root, part, (), tag=tag)
            say(f"{run.target.key} (shard {tag}): {_run_summary(run)}")
            return run

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            list(pool.map(one, work))
    reported: set[str] = set()
    for run, part, _tag in work:
        key = run.target.key
        if run.status != "ran":
            if (run.status == "error" or backends_required()) and key not in reported:
                reported.add(key)
                problems.append(f"{key}: {run.status}: {run.reason}")
            continue
        for name in part:
            result = run.results.get(name, {"outcome": MISSING})
            if result["outcome"] != PASSED:
                why = f" ({_short_reason(result.get('reason', ''))})" if result.get("reason") else ""
                problems.append(f"{key} {name}: committed matrix says passed, now {result['outcome']}{why}")
    return problems


# ---------------------------------------------------------------------------
# The pytest plugin each subprocess loads (-p polyqueue.conformance.matrix)
# ---------------------------------------------------------------------------
def _test_key(nodeid: str) -> str:
    """``path/to/test_conformance.py::TestX::test_y[p]`` -> ``TestX::test_y[p]``."""
    return nodeid.split("::", 1)[1] if "::" in nodeid else nodeid


_RANK = {PASSED: 0, XFAILED: 1, SKIPPED: 1, XPASSED: 2, FAILED: 3, ERROR: 3}


def _failure_message(text: str) -> str:
    """The last ``E   ...`` line of a pytest failure (the assertion or exception), else its last line."""
    lines = text.strip().splitlines()
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return (errors[-1] if errors else lines[-1] if lines else "")[:300]


class _ReportPlugin:
    """Records each test's outcome, reason and declared capabilities; writes them as JSON at the end."""

    def __init__(self, path: str, only: set[str] | None) -> None:
        self.path = path
        self.only = only
        self.results: dict[str, dict[str, Any]] = {}
        self.requires: dict[str, list[str]] = {}

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        if self.only is not None:
            keep = [item for item in items if _test_key(item.nodeid) in self.only]
            dropped = [item for item in items if _test_key(item.nodeid) not in self.only]
            if dropped:
                config.hook.pytest_deselected(items=dropped)
            items[:] = keep
            for key in sorted(self.only - {_test_key(item.nodeid) for item in keep}):
                self.results[key] = {"outcome": MISSING, "reason": "no longer in the suite"}
        for item in items:
            caps = sorted({c for mark in item.iter_markers("requires") for c in mark.args})
            self.requires[_test_key(item.nodeid)] = caps

    def pytest_runtest_logreport(self, report: Any) -> None:
        key = _test_key(report.nodeid)
        outcome, reason = self._outcome(report)
        if outcome is None:
            return
        current = self.results.get(key)
        if current is None or _RANK[outcome] >= _RANK[current["outcome"]]:
            self.results[key] = {"outcome": outcome, "reason": reason} if reason else {"outcome": outcome}

    @staticmethod
    def _outcome(report: Any) -> tuple[str | None, str]:
        if report.failed:
            return (FAILED if report.when == "call" else ERROR), _failure_message(report.longreprtext or "")
        if report.skipped:
            if hasattr(report, "wasxfail"):
                return XFAILED, str(report.wasxfail)
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
            return SKIPPED, reason.removeprefix("Skipped: ")
        if report.when == "call":
            return (XPASSED, str(report.wasxfail)) if hasattr(report, "wasxfail") else (PASSED, "")
        return None, ""

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        data = {"exit_status": int(exitstatus), "results": self.results, "requires": self.requires}
        Path(self.path).write_text(json.dumps(data, indent=1), encoding="utf-8")


def pytest_configure(config: Any) -> None:
    """Active only inside a compat subprocess: register the JSON report plugin."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    only_file = os.environ.get(ONLY_ENV)
    only = set(json.loads(Path(only_file).read_text())) if only_file else None
    config.pluginmanager.register(_ReportPlugin(path, only), "polyqueue-compat-report")

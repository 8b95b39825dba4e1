"""The committed compat matrix stays true: no cell it shows as passing fails now.

Where the check runs: the SQLite, PostgreSQL and MariaDB columns are the
very runs ``tests/test_conformance.py`` makes in this same test session, and
the memory and Redis Cluster columns are ``plugins/polyqueue-memory/tests``
and ``plugins/polyqueue-redis/tests``; a regression there already fails the
session. The remaining columns -- the Redis depth cache
over each database -- are run nowhere else, so this module re-runs exactly
their passing cells, except the multi-process ones (sharded subprocesses,
well under a minute). Everything else
here is cheap: the matrix's tests still exist, README.md is what matrix.json
renders to, and the check itself can fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from polyqueue.conformance import matrix as compat
from polyqueue.conformance import suite

ROOT = Path(__file__).resolve().parent.parent
MATRIX = ROOT / "compat_matrix" / "matrix.json"
#: Columns whose cells other tests of the session already run, and where.
COVERED_ELSEWHERE = {
    "sqlite": "tests/test_conformance.py",
    "postgresql": "tests/test_conformance.py",
    "mysql": "tests/test_conformance.py",
    "memory": "plugins/polyqueue-memory/tests",
    "redis": "plugins/polyqueue-redis/tests",
}


@pytest.fixture(scope="module")
def matrix() -> dict[str, Any]:
    return json.loads(MATRIX.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_matrix_covers_every_built_in_backend_and_says_what_mysql_means(matrix: dict[str, Any]) -> None:
    backends = matrix["backends"]
    assert {"sqlite", "postgresql", "mysql", "memory"} <= set(backends)
    for key in ("sqlite", "postgresql", "mysql"):
        assert backends[key]["status"] == "ran", f"{key} was not run when the matrix was made"
    assert (
        backends["mysql"]["note"]
        == "MariaDB 10.11 tested here; MySQL 8 supported by design, not run in this project's CI"
    )
    assert "MariaDB 10.11 tested here; MySQL 8 supported by design" in (MATRIX.parent / "README.md").read_text()


def test_every_test_the_matrix_names_still_exists_in_the_suite(matrix: dict[str, Any]) -> None:
    gone = []
    for name in matrix["tests"]:
        area, test = name.split("::", 1)
        if not hasattr(getattr(suite, area, None), test.split("[", 1)[0]):
            gone.append(name)
    assert gone == [], "regenerate the matrix with `polyqueue compat`"


def test_readme_is_what_the_matrix_renders_to(matrix: dict[str, Any]) -> None:
    assert (MATRIX.parent / "README.md").read_text(encoding="utf-8") == compat.render_readme(matrix)


def test_no_passing_cell_of_the_depth_cache_columns_fails_now(matrix: dict[str, Any]) -> None:
    columns = [key for key, b in matrix["backends"].items() if key not in COVERED_ELSEWHERE and b["status"] == "ran"]
    if not columns:
        pytest.skip("the committed matrix has no columns beyond those other tests run")
    # The multi_process tests start several worker processes each, most of the check's cost; they ran on
    # these columns when the matrix was made, and the same tests run on the plain columns every session.
    problems = compat.check_matrix(MATRIX, columns, leave_out=["multi_process"])
    assert problems == []


def test_the_check_reports_cells_that_no_longer_pass(tmp_path: Path, matrix: dict[str, Any]) -> None:
    really_passing = next(
        k for k, t in matrix["tests"].items() if t["results"].get("memory", {}).get("outcome") == "passed"
    )
    claimed = [
        really_passing,
        "TestTransactionalEnqueue::test_commit_makes_the_job_visible",  # memory lacks the capability: a skip
        "TestEnqueue::test_that_was_renamed_away",  # no longer in the suite
    ]
    passed = {"memory": {"outcome": "passed"}}
    fake = {
        **matrix,
        "backends": {"memory": matrix["backends"]["memory"]},
        "tests": {name: {"area": name.split("::")[0], "requires": [], "results": passed} for name in claimed},
    }
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps(fake))
    problems = compat.check_matrix(path, ["memory"])
    assert len(problems) == 2, problems
    assert any("test_commit_makes_the_job_visible" in p and "now skipped" in p for p in problems)
    assert any("test_that_was_renamed_away" in p and "now missing" in p for p in problems)

"""Two polyqueue commits in one run: the same harness against each, interleaved, medians and ratios.

    python -m polyqueue_bench.compare OLD NEW [--repetitions 3] [harness options ...]

Each commit is checked out into a temporary git worktree and imported from
there (``PYTHONPATH``), while the harness itself is this checkout's, so the
two sides differ only in polyqueue. The repetitions alternate which side runs
first, so a machine that speeds up or slows down during the run biases
neither. Unknown options go to the harness (``--backends``, ``--scenarios``,
``--drain-jobs``, ``--batch-size`` ...). Prints each figure's median per side
and NEW/OLD, and writes the whole comparison as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _checkout(repo: Path, revision: str, into: Path) -> tuple[str, Path]:
    commit = _git("rev-parse", "--short", revision, cwd=repo)
    path = into / commit
    _git("worktree", "add", "--detach", str(path), commit, cwd=repo)
    return commit, path


def _run_side(source: Path, harness_args: list[str], out: Path) -> list[dict[str, Any]]:
    """One harness run importing polyqueue from ``source``; its figures."""
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(source)}
    cmd = [sys.executable, "-m", "polyqueue_bench", *harness_args, "--repetitions", "1", "--output-dir", str(out)]
    # Run from the checkout: ``python -m`` puts the working directory first on sys.path, so started from
    # this repository's root both sides would import this working tree's polyqueue, not their commit's.
    subprocess.run([*cmd, "--no-chart"], env=env, check=True, cwd=source)
    (report,) = out.glob("*.json")
    figures: list[dict[str, Any]] = json.loads(report.read_text())["figures"]
    return [f for f in figures if f["system"] == "polyqueue"]


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; exit status 0 when every run finished."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the whole comparison")
    args, harness_args = parser.parse_known_args(argv)
    repo = Path(_git("rev-parse", "--show-toplevel", cwd=Path.cwd()))
    values: dict[tuple[str, str, str, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="polyqueue-compare-") as tmp:
        root = Path(tmp)
        sides = dict(
            [("old", _checkout(repo, args.old, root)), ("new", _checkout(repo, args.new, root))]
        )
        try:
            for rep in range(args.repetitions):
                order = ["old", "new"] if rep % 2 == 0 else ["new", "old"]
                for side in order:
                    commit, source = sides[side]
                    print(f"repetition {rep + 1}/{args.repetitions}: {side} ({commit})", file=sys.stderr)
                    for figure in _run_side(source, harness_args, root / f"out-{side}-{rep}"):
                        key = (figure["scenario"], figure["variant"], figure["backend"], figure["unit"])
                        values.setdefault(key, {"old": [], "new": []})[side].extend(figure["values"])
        finally:
            for _, source in sides.values():
                _git("worktree", "remove", "--force", str(source), cwd=repo)
    rows = []
    for key, by_side in sorted(values.items()):
        old = statistics.median(by_side["old"]) if by_side["old"] else None
        new = statistics.median(by_side["new"]) if by_side["new"] else None
        ratio = new / old if old and new is not None else None
        rows.append({"scenario": key[0], "variant": key[1], "backend": key[2], "unit": key[3],
                     "old": old, "new": new, "new_over_old": ratio, "values": by_side})  # fmt: skip
        print(f"{key[2]:10} {key[0]:8} {key[1]:28} old {old or 0:>12.2f}  new {new or 0:>12.2f}  "
              f"new/old {ratio or 0:.3f}  {key[3]}")  # fmt: skip
    if args.out:
        meta = {"old": sides["old"][0], "new": sides["new"][0], "harness_args": harness_args}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

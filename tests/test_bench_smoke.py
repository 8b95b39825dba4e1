"""Smoke test of the benchmark harness: a tiny SQLite run must produce verified figures and a JSON report.

It times nothing against a threshold: speed is measured by ``polyqueue bench``, never in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from polyqueue_bench import run_bench
from rich.console import Console


def test_tiny_sqlite_bench_writes_a_verified_report(tmp_path: Path) -> None:
    with open(tmp_path / "out.txt", "w") as out:
        report = run_bench(
            backends=("sqlite",),
            scenarios=("enqueue", "drain"),
            baselines=("naive",),
            repetitions=1,
            bulk_jobs=200,
            single_jobs=20,
            drain_jobs=300,
            processes=(1,),
            output_dir=str(tmp_path),
            chart=False,
            console=Console(file=out, width=150),
        )
    figures = {(f["scenario"], f["variant"], f["system"]): f for f in report["figures"]}
    for key in [("drain", "1 process", "polyqueue"), ("drain", "1 process", "naive"), ("enqueue", "bulk", "polyqueue")]:
        assert key in figures and figures[key]["median"] > 0, key
    assert any(r["vs"] == "naive" and r["scenario"] == "drain" for r in report["ratios"])
    (written,) = tmp_path.glob("*.json")
    assert json.loads(written.read_text())["figures"] == json.loads(json.dumps(report["figures"]))

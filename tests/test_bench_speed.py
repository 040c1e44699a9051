"""bench/speed.py --quick: the result file has the shape BENCH_RESULTS.md gives for `speed` (no timing assertions),
as a script and as a module, in one process and with one process per case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW_KEYS = {
    "stage",
    "size",
    "device",
    "dose",
    "s_per_slice",
    "peak_mem_mb",
    "network_evals",
    "s_per_slice_one_at_a_time",
    "peak_mem_mb_one_at_a_time",
    "speedup",
    "max_abs_diff",
}


def test_speed_quick_writes_result_file(tmp_path, head_ct_path):
    output = tmp_path / "speed.json"
    completed = subprocess.run(
        [sys.executable, "bench/speed.py", "--quick", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| stage |" in completed.stdout  # the Markdown table is printed

    report = json.loads(output.read_text())
    assert report["benchmark"] == "speed"
    assert {"created", "command", "machine", "rows"} <= set(report)
    assert report["machine"]["device"] == "cpu"
    rows = report["rows"]
    assert {row["stage"] for row in rows} == {"spdiff", "fbp", "dgdiff", "need"}
    assert {row["size"] for row in rows} == {256}
    assert {row["dose"] for row in rows} == {0.25}
    for row in rows:
        assert ROW_KEYS <= set(row), row
        assert row["s_per_slice"] > 0 and row["s_per_slice_one_at_a_time"] > 0 and row["speedup"] > 0
        assert row["peak_mem_mb"] is not None

    assert report["batched_vs_reference_ratio"] > 0
    assert report["batched_vs_reference_ratio_case"]["stage"] == "need"
    # NEED_SPEC.md §2: t* + 1 evaluations per slice with the reference schedule
    assert report["network_evaluations"]["spdiff"] == {"0.5": 2, "0.25": 4, "0.1": 10, "0.05": 10}
    by_stage = {row["stage"]: row for row in rows}
    assert by_stage["spdiff"]["network_evals"] == 4
    assert by_stage["fbp"]["network_evals"] is None
    steps = report["dgdiff_start_steps"]["cpu_256"]["0.25"]
    assert by_stage["dgdiff"]["network_evals"] == sum(steps) / len(steps)
    assert by_stage["need"]["network_evals"] == 4 + by_stage["need"]["network_evals_by_model"]["dgdiff"]
    # the reference makes one network call per slice: more calls than the batched sampler
    for stage in ("spdiff", "need"):
        assert (
            by_stage[stage]["network_calls_per_slice_one_at_a_time"]["spdiff"]
            > by_stage[stage]["network_calls_per_slice"]["spdiff"]
        )
    # batched and one-at-a-time compute the same thing (SPDiff compared where no Poisson draw is made)
    assert report["max_abs_diff_without_poisson"] < 1e-4
    assert by_stage["fbp"]["max_abs_diff"] < 1e-2
    assert by_stage["dgdiff"]["max_abs_diff"] < 1.0


def test_speed_runs_as_a_module_with_one_process_per_case(tmp_path, head_ct_path):
    output = tmp_path / "speed.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.speed", "--quick", "--no-in-process", "--stages", "fbp", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    assert report["settings"]["memory_isolation"] == "fresh subprocess per case"
    (row,) = report["rows"]
    assert row["stage"] == "fbp" and row["max_abs_diff"] < 1e-2 and row["peak_mem_mb"] is not None

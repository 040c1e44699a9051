"""bench/throughput.py --quick: the result file has the keys BENCH_RESULTS.md gives for `throughput`, with sane
values (no timing assertions): the flow, the in-process reference and the floor measured the same work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCALARS = {
    "flow_s_per_slice_dose",
    "inprocess_s_per_slice_dose",
    "flop_floor_s_per_slice_dose",
    "startup_s",
    "flow_vs_inprocess_ratio",
    "flow_vs_flop_floor_ratio",
    "device",
}


@pytest.mark.slow
def test_throughput_quick_writes_result_file(tmp_path, head_ct_path):
    output = tmp_path / "throughput.json"
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}  # its own server, as a user's
    completed = subprocess.run(
        [sys.executable, "bench/throughput.py", "--quick", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr

    report = json.loads(output.read_text())
    assert report["benchmark"] == "throughput"
    assert {"created", "command", "machine", "rows"} <= set(report)
    assert SCALARS <= set(report)
    assert report["device"] == "cpu" and report["quick"] is True
    assert {row["case"] for row in report["rows"]} == {"flow", "inprocess", "flop_floor"}
    assert report["slice_doses"] == 2 and report["doses"] == [0.25]
    for key in SCALARS - {"device"}:
        assert report[key] > 0, key
    assert report["flow_vs_inprocess_ratio"] == pytest.approx(
        report["flow_s_per_slice_dose"] / report["inprocess_s_per_slice_dose"], rel=0.01, abs=1e-3
    )
    assert report["startup_s"] >= report["startup"]["server_s"]
    assert 0 < report["worker_busy_fraction"] <= 1
    # the floor counts what the flow ran: SPDiff t*+1 evaluations on every sampled slice (halos included)
    # t* = 3 at 25 %: 4 evaluations of each slice SPDiff samples, cell 0-1 and its context slice 2
    assert report["network_evaluations"]["0.25"]["spdiff"] == 4 * 3
    assert report["flops_per_evaluation"]["spdiff"] > 0 and report["flops_per_evaluation"]["dgdiff"] > 0
    assert report["matmul_gflops"] > 0
    # every lever ran beside the default flow; the worker environment does not change a stored value
    levers = {row["lever"]: row for row in report["levers"]}
    assert set(levers) == {"dask_default_worker_environment"}  # --quick skips the timing-only lever
    assert levers["dask_default_worker_environment"]["max_abs_diff_vs_default_hu"] == 0.0
    assert all(row["vs_default"] > 0 for row in levers.values())
    assert report["gpu"].startswith("not measured") or report["machine"]["gpu"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_refused_by_name():
    completed = subprocess.run(
        [sys.executable, "bench/throughput.py", "--device", "cuda"], cwd=ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert "--device cuda: no CUDA GPU is visible here" in completed.stderr

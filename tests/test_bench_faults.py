"""bench/faults.py --quick: a few kill-and-rerun trials and a sample of bad inputs; the result file has the keys of
BENCH_RESULTS.md and meets the targets (nothing lost, nothing different, no stale lock, no orphan)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_quick_fault_bench_meets_its_targets(tmp_path):
    out = tmp_path / "faults.json"
    done = subprocess.run(
        [sys.executable, "bench/faults.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("benchmark", "created", "command", "machine", "rows", "trials", "kills", "slices_lost", "mismatches"):
        assert key in result
    for key in ("stale_locks", "orphans", "clear_errors", "total", "slowest_error_s"):
        assert key in result
    assert result["benchmark"] == "faults" and result["trials"] == 3 and result["kills"] >= 1
    assert {key: result[key] for key in result["targets"]} == result["targets"], result["rows"]
    assert result["clear_errors"] == result["total"], [row for row in result["rows"] if row.get("clear") is False]

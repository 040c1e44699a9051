"""bench/faults.py --quick: a few kill-and-rerun trials and a sample of bad inputs; the result file has the keys of
BENCH_RESULTS.md and meets the targets (nothing lost, nothing different, no stale lock, no orphan), every trial is
killed at its point of the run's progress, and a Ctrl-C ends in one line. Fast: kill points are drawn from the
phases a watched run went through and reached by progress."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.faults_progress import CLOSING_MIN_S, PHASES, STARTUP_FROM_S, KillPoint, draw_point, reached

ROOT = Path(__file__).resolve().parents[1]
TIMELINE = {"server": 10.0, "cluster": 30.0, "first_done": 40.0, "all_done": 50.0, "exit": 60.0, "cells": 24}


def test_kill_points_are_drawn_from_the_phases_the_watched_run_went_through():
    rng = np.random.default_rng(0)
    points = [draw_point(rng, TIMELINE) for _ in range(400)]
    assert {point.phase for point in points} == set(PHASES)
    assert all(STARTUP_FROM_S <= p.value <= TIMELINE["server"] for p in points if p.phase == "startup")
    assert {int(p.value) for p in points if p.phase == "slices"} == set(range(1, 24))
    short = {**TIMELINE, "all_done": TIMELINE["exit"] - CLOSING_MIN_S / 2, "cluster": None}
    assert {draw_point(rng, short).phase for _ in range(400)} == {"startup", "server", "slices"}


@pytest.mark.parametrize(
    ("point", "at", "not_at"),
    [
        (KillPoint("slices", 5), (1.0, set(), 5), (99.0, set(), 4)),
        (KillPoint("server"), (0.1, {"server"}, 0), (99.0, {"cluster"}, 20)),
        (KillPoint("cluster"), (0.1, {"server", "cluster"}, 0), (99.0, {"server"}, 20)),
        (KillPoint("closing"), (0.1, set(), 24), (99.0, {"server", "cluster"}, 23)),
        (KillPoint("startup", 2.0), (2.0, set(), 0), (1.9, {"server"}, 0)),
    ],
    ids=lambda value: value.phase if isinstance(value, KillPoint) else "",
)
def test_a_kill_point_is_reached_by_progress_not_by_the_clock(point, at, not_at):
    assert reached(point, *at, cells=24) and not reached(point, *not_at, cells=24)


@pytest.mark.slow
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
    assert result["benchmark"] == "faults" and result["trials"] == 3
    trials = [row for row in result["rows"] if "phase" in row]
    assert result["kills"] == 3 and all(row["killed"] for row in trials), trials
    assert result["sigint_one_line"] == result["sigint_kills"] == 1, trials
    assert {key: result[key] for key in result["targets"]} == result["targets"], result["rows"]
    assert result["clear_errors"] == result["total"], [row for row in result["rows"] if row.get("clear") is False]

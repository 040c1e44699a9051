"""bench/demo.py's reading of the demo's terminal and rows (the measured runs themselves are the benchmark's)."""

from __future__ import annotations

import time

import pytest

from bench.demo import console_summary, first_log_time, max_psnr_difference

CONSOLE = (
    "05:01:02.250 | INFO    | Flow run 'demo' - Beginning flow run\n"
    "\rreconstruct:   0%|   | 0/80\rreconstruct:  50%|#  | 40/80\rreconstruct: 100%|## | 80/80\n"
    "05:01:09.000 | WARNING | distributed.nanny - something\n"
    "| dose | method |\n"
    "Traceback (most recent call last):\n  File x\n"
)


def test_a_bars_redraws_are_one_line_and_log_lines_are_counted_by_level():
    summary = console_summary(CONSOLE)
    assert summary["lines"] == 6
    assert summary["log_lines"] == 2 and summary["levels"] == {"INFO": 1, "WARNING": 1}
    assert summary["warning_lines"] == ["05:01:09.000 | WARNING | distributed.nanny - something"]
    assert summary["tracebacks"] == 1


def test_startup_is_read_from_the_first_log_lines_clock():
    launched = time.mktime(time.strptime("2026-12-02 05:00:50", "%Y-%m-%d %H:%M:%S"))
    assert first_log_time(CONSOLE, launched) - launched == pytest.approx(12.25)
    with pytest.raises(RuntimeError, match="no log line"):
        first_log_time("no log here\n", launched)


def test_rows_of_other_methods_are_refused_and_psnr_compared_per_dose_and_method():
    demo = [{"dose": 0.5, "method": "need", "psnr": 42.0}, {"dose": 0.5, "method": "tv", "psnr": 41.0}]
    stages = [{"dose": 0.5, "method": "need", "psnr": 42.25}, {"dose": 0.5, "method": "tv", "psnr": 41.0}]
    assert max_psnr_difference(demo, stages) == pytest.approx(0.25)
    with pytest.raises(RuntimeError, match="different methods"):
        max_psnr_difference(demo, stages[:1])

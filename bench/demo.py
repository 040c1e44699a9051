"""What `need demo` costs against its own work: the demo command's wall time beside the same stages run in this
process with all cores, in one run, and what its terminal showed. Writes bench/results/demo.json (format of
/work/shared/BENCH_RESULTS.md).

    python bench/demo.py                            # the shipped cpu weights, doses 0.5,0.25,0.1,0.05
    python bench/demo.py --output /tmp/demo.json    # elsewhere

What is measured
- demo: `need demo --workdir W` as a user types it (a fresh workdir, MLflow's default store in a fresh directory),
  from launch to exit; startup_s = launch -> its first log line (imports + the temporary Prefect server).
- stages: the demo's stages called in this process, torch threads = cores, on a fresh catalog: ingest (the bundled
  head CT read and every slice simulated at every dose: tasks.ingest's functions), baselines (tasks.baselines per
  dose), reconstruct (the chunk function on the demo's grid cells: bench/throughput_runs.inprocess_reference),
  evaluate (flows.demo.score_and_plot: scores, panels, plot, per-slice CSV, metrics.json) and tracking (registering
  the shipped models and logging the quality runs to a fresh MLflow store). demo_vs_stages_ratio = demo wall time /
  their sum (issue #16: <= 1.3).
- console: the demo's stdout and stderr, progress-bar redraws apart: log lines, warnings, tracebacks.
- max_psnr_difference_db: the demo's metrics.json against the stages' rows (torch thread counts round DGDiff
  differently, at the 1e-4 HU level).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import machine_info, use_local_prefect, write_result  # noqa: E402 (repo root added above)

TARGET_RATIO = 1.3
"""Issue #16: the demo spends at most 1.3x the sum of its stages' in-process times."""
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (\w+) +\|")
"""Prefect's console format: `HH:MM:SS.mmm | LEVEL | ...`."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="result file (default bench/results/demo.json)")
    return parser.parse_args(argv)


def timed_demo(work: Path) -> dict[str, Any]:
    """`need demo` in a fresh directory: wall time, its console and its quality rows."""
    work.mkdir()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    launched = time.time()
    result = subprocess.run(
        ["need", "demo", "--workdir", str(work / "out")],
        cwd=work,
        env=environment,
        capture_output=True,
        check=False,
    )
    wall = time.time() - launched
    console = (result.stdout + result.stderr).decode(errors="replace")  # bytes: a bar's carriage returns kept
    if result.returncode != 0:
        raise RuntimeError(f"need demo failed ({result.returncode}):\n{console[-4000:]}")
    return {
        "wall_s": wall,
        "startup_s": first_log_time(console, launched) - launched,
        "console": console_summary(console),
        "rows": json.loads((work / "out" / "metrics.json").read_text()),
    }


def first_log_time(console: str, launched: float) -> float:
    """The epoch time of the console's first log line (its clock time, on the day of `launched`)."""
    for line in console.splitlines():
        if LOG_LINE.match(line):
            clock = time.strptime(time.strftime("%Y-%m-%d ", time.localtime(launched)) + line[:8], "%Y-%m-%d %H:%M:%S")
            return time.mktime(clock) + float(line[8:12])
    raise RuntimeError("need demo printed no log line")


def console_summary(console: str) -> dict[str, Any]:
    """Counts of what the terminal kept: a progress bar's redraws after carriage returns are one line, and so is a
    table row; log lines by level, warnings in full (200 characters), tracebacks."""
    lines = [part for line in console.split("\n") for part in line.split("\r")[-1:] if part.strip()]
    levels = [m.group(1) for line in lines if (m := LOG_LINE.match(line))]
    return {
        "lines": len(lines),
        "log_lines": len(levels),
        "warning_lines": [line[:200] for line in lines if LOG_LINE.match(line) and "WARNING" in line[:30]],
        "tracebacks": console.count("Traceback (most recent call last)"),
        "levels": {level: levels.count(level) for level in sorted(set(levels))},
    }


def timed(seconds: dict[str, float], stage: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `function`, adding its wall time to `seconds[stage]`."""
    clock = time.perf_counter()
    value = function(*args, **kwargs)
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - clock
    return value


def inprocess_stages(work: Path) -> dict[str, Any]:
    """The demo's stages in this process on a fresh catalog under `work`: seconds per stage and the quality rows."""
    import torch

    from bench.throughput_runs import default_sampling, inprocess_reference
    from flows.demo import DEMO_CHUNK_SLICES, DEMO_EXPERIMENT, DEMO_MODELS, score_and_plot, shipped_models
    from flows.ingest import DEFAULT_DOSES
    from flows.registration import register_shipped_models
    from flows.tracking.runs import log_quality_runs
    from flows.tracking.store import open_tracker
    from storage.catalog import open_or_create_catalog, row_for_archive
    from storage.readers import BUNDLED_HEAD_CT
    from storage.readers.series import discover_series
    from storage.splits import HEAD_CT_SPLIT
    from tasks.baselines import baseline_images
    from tasks.chunking import contiguous_chunks
    from tasks.ingest import ingest_chunk, prepare_study

    torch.set_num_threads(os.cpu_count() or 1)
    work.mkdir()
    catalog, doses, heldout = work / "head_ct.zarr", list(DEFAULT_DOSES), list(HEAD_CT_SPLIT.heldout)
    models = shipped_models()
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    (series,) = discover_series([str(BUNDLED_HEAD_CT)]).series
    store = open_or_create_catalog(catalog)
    prepare_study.fn(str(catalog), series, doses, 0)
    study = store.study(series.key, "r+")
    study.add_doses(doses)
    for chunk in contiguous_chunks(range(study.n_slices), 8):
        ingest_chunk.fn(str(study.path), chunk, doses)
    store.upsert([row_for_archive(series.key, study, ingest="done")])
    seconds["ingest"] = time.perf_counter() - clock

    baselines = {
        dose: timed(
            seconds, "baselines", baseline_images.fn, str(catalog), dose, heldout, models["redcnn"], models["dgdiff"]
        )
        for dose in doses
    }
    paths = (models["spdiff"], models["dgdiff"])
    reference = inprocess_reference(catalog, doses, heldout, DEMO_CHUNK_SLICES, paths, default_sampling(paths))
    seconds["reconstruct"] = reference["wall_s"]

    clock = time.perf_counter()
    evaluations = score_and_plot(str(catalog), heldout, baselines, work)
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    seconds["evaluate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    tracker = open_tracker(True, DEMO_EXPERIMENT)
    assert tracker is not None
    register_shipped_models(tracker)
    log_quality_runs(tracker, "demo", str(catalog), evaluations, {"demo_models": [m.kind for m in DEMO_MODELS]})
    seconds["tracking"] = time.perf_counter() - clock
    return {"seconds": seconds, "rows": rows, "reconstruct_stages": reference["seconds"]}


def max_psnr_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The largest PSNR difference between two sets of quality rows over their (dose, method) pairs, which must
    match."""
    left = {(row["dose"], row["method"]): row["psnr"] for row in a}
    right = {(row["dose"], row["method"]): row["psnr"] for row in b}
    if left.keys() != right.keys():
        raise RuntimeError(f"the demo and the stages scored different methods: {sorted(left.keys() ^ right.keys())}")
    return max(abs(left[key] - right[key]) for key in left)


def main(argv: list[str] | None = None) -> None:
    """Run the stages in process, then the demo command, and write the result file."""
    args = parse_args(argv)
    use_local_prefect()
    from flows.log_levels import quiet_logging

    quiet_logging(verbose=False)
    with tempfile.TemporaryDirectory(prefix="need-demo-bench-") as tmp:
        load = {"before_stages": os.getloadavg()[0]}
        stages = inprocess_stages(Path(tmp) / "stages")
        load["after_stages"] = os.getloadavg()[0]
        demo = timed_demo(Path(tmp) / "demo")
        load["after_demo"] = os.getloadavg()[0]
    total = sum(stages["seconds"].values())
    rows = [{"case": "demo", "wall_s": round(demo["wall_s"], 2)}] + [
        {"case": f"stage {stage}", "wall_s": round(value, 2)} for stage, value in stages["seconds"].items()
    ]

    write_result(
        "demo",
        rows,
        machine=machine_info("cpu"),
        path=args.output,
        demo_wall_s=round(demo["wall_s"], 2),
        stages_inprocess_s=round(total, 2),
        demo_vs_stages_ratio=round(demo["wall_s"] / total, 3),
        target_ratio=TARGET_RATIO,
        startup_s=round(demo["startup_s"], 2),
        stage_seconds={stage: round(value, 2) for stage, value in stages["seconds"].items()},
        reconstruct_stage_seconds={stage: round(value, 2) for stage, value in stages["reconstruct_stages"].items()},
        console=demo["console"],
        max_psnr_difference_db=round(max_psnr_difference(demo["rows"], stages["rows"]), 4),
        methods=sorted({row["method"] for row in demo["rows"]}),
        load_average_1min=load,
        device="cpu",
    )


if __name__ == "__main__":
    main()

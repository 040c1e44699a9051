"""Fault injection: kill `need ingest` / `need reconstruct` at seeded points of their progress and rerun; bad inputs
through the CLI.

    python bench/faults.py                 # writes bench/results/faults.json (~40 min on 2 shared cores)
    python bench/faults.py --quick --out /tmp/faults_quick.json
    python bench/faults.py --inputs-only   # redo the bad inputs, keep the trials of bench/results/faults.json

A small catalog (12 head-CT slices at 64², doses 0.25 and 0.1, tiny SPDiff/DGDiff from tasks.quick_models) is
ingested and reconstructed once without interruption, watched: the reference and its timeline. Each trial then runs
one command as a subprocess in its own process group, kills it at a seeded point of its observed progress drawn
from the phases the reference went through (bench/faults_progress: start-up, Prefect server, Dask cluster, a seeded
number of slices done, closing), cycling SIGKILL to the group, SIGKILL to the main process alone and SIGINT to the
group, and counts:
- `orphans`: processes of the trial (marked by an environment variable their children inherit) still running
  5 s after the kill;
- `slices_lost`: slice-doses done in the ledger whose data is missing or differs from the reference;
- `stale_locks`: reruns refused because a dead process's lock is still held;
- `mismatches`: slice-doses of the archive after the rerun not done or not bit-identical to the reference.
Targets: 0 each; every trial is killed (`kills` = `trials`), and every SIGINT ends in one line (`sigint_one_line`).
Then ~40 bad inputs (bench/faults_inputs.py) count `clear_errors` of `total`, the slowest and median time to the
message, how many came `under_2s`, and, for each that did not, the heavy imports that made it slow
(`slow_inputs`).

Commands run from a snapshot of the packages taken at the start (bench/faults_kills.snapshot_code): the checkout
may change while the benchmark runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import RESULTS_DIR, machine_info, use_local_prefect, write_result  # noqa: E402 (path set above)
from bench.faults_inputs import run_inputs  # noqa: E402
from bench.faults_kills import (  # noqa: E402
    KILL_MODES,
    Trial,
    fresh_copy,
    need_command,
    run_trial,
    run_watched,
    snapshot_code,
)
from bench.faults_progress import PHASES, draw_point  # noqa: E402

HEAD_CT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
DOSES = "0.25,0.1"
N_SLICES = {"full": 12, "quick": 4}
"""Slices of the small catalog: the full benchmark's, and --quick's (the test's)."""
COMMANDS = ("ingest", "reconstruct")
TARGETS = {"slices_lost": 0, "mismatches": 0, "stale_locks": 0, "orphans": 0}


def commands(work: Path, seed: int) -> dict[str, Any]:
    """The two commands of a trial, as functions of the catalog they write."""
    source, models = work / "head_small.npy", work
    spdiff, dgdiff = str(models / "spdiff_tiny.pt"), str(models / "dgdiff_tiny.pt")
    return {
        "ingest": lambda cat: need_command(
            "ingest",
            str(source),
            str(cat),
            "--doses",
            DOSES,
            "--spacing",
            "3,3.8,3.8",
            "--chunk-slices",
            "1",
            "--workers",
            "1",
            "--seed",
            str(seed),
        ),
        "reconstruct": lambda cat: need_command(
            "reconstruct",
            str(cat),
            "--doses",
            DOSES,
            "--spdiff",
            spdiff,
            "--dgdiff",
            dgdiff,
            "--chunk-slices",
            "2",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--seed",
            str(seed),
            "--no-tracking",
        ),
    }


def build_reference(work: Path, seed: int, n_slices: int) -> dict[str, dict[str, float | None]]:
    """Source, reference ingest (kept as `ref_ingest.zarr`), tiny models, reference reconstruct, each watched
    (bench/faults_progress.watch): their timelines, reused from `reference.json` when the work folder has one."""
    from tasks.quick_models import write_tiny_models
    from tests.pipeline_fixtures import write_small_head_npy

    done = work / "reference.json"
    if done.is_file() and json.loads(done.read_text()).get("n_slices") == n_slices:
        return json.loads(done.read_text())["timelines"]
    write_small_head_npy(HEAD_CT, work, n_slices=n_slices)
    make = commands(work, seed)
    timelines = {}
    for name, catalog in (("ingest", work / "ref_ingest.zarr"), ("reconstruct", work / "ref_reconstruct.zarr")):
        if name == "reconstruct":
            write_tiny_models(work / "ref_ingest.zarr", work)
            fresh_copy(work / "ref_ingest.zarr", catalog)
        else:
            for old in (catalog, Path(f"{catalog}.locks")):
                shutil.rmtree(old, ignore_errors=True)
        status, timelines[name] = run_watched(make[name](catalog), work / "reference.log", catalog, name)
        if status != 0:
            raise RuntimeError(f"reference {name} failed ({status}); see {work / 'reference.log'}")
    done.write_text(json.dumps({"n_slices": n_slices, "timelines": timelines}))
    return timelines


def plan_trials(n_trials: int, seed: int, timelines: dict[str, dict[str, float | None]]) -> list[Trial]:
    """Trial i: command and kill mode cycling over all six pairs (any prefix alternates the commands); the kill
    point drawn (seeded) from the phases its command's reference run went through (faults_progress.draw_point)."""
    rng = np.random.default_rng(seed)
    pairs = [(COMMANDS[i % len(COMMANDS)], KILL_MODES[i % len(KILL_MODES)]) for i in range(6)]
    trials = []
    for i in range(n_trials):
        command, mode = pairs[i % len(pairs)]
        point = draw_point(rng, timelines[command])
        trials.append(Trial(i, command, mode, point, cells=int(timelines[command]["cells"] or 0)))
    return trials


def run_trials(work: Path, trials: list[Trial], seed: int) -> list[Trial]:
    make = commands(work, seed)
    for trial in trials:
        catalog = work / "trial.zarr"
        if trial.command == "ingest":
            for old in (catalog, Path(f"{catalog}.locks")):
                shutil.rmtree(old, ignore_errors=True)
            reference = work / "ref_ingest.zarr"
        else:
            fresh_copy(work / "ref_ingest.zarr", catalog)
            reference = work / "ref_reconstruct.zarr"
        run_trial(trial, make[trial.command](catalog), catalog, reference, work / f"trial-{trial.index}.log")
        print(
            f"trial {trial.index:2d} {trial.command:11s} {trial.mode:13s} {trial.point.phase:8s} "
            f"{trial.point.value or '':>5} at {trial.kill_at_s} s ({trial.done_at_kill} done): "
            f"exit {trial.exit_status} after {trial.exit_after_s} s, orphans {trial.orphans}, "
            f"lost {trial.slices_lost}, stale lock {trial.stale_lock}, rerun {trial.rerun_status}, "
            f"mismatches {trial.mismatches}",
            flush=True,
        )
    return trials


def trial_figures(trials: list[Trial], timelines: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    """The kill-and-rerun scalars of the result file."""
    sigint = [t for t in trials if t.killed and t.mode == "sigint"]
    return {
        "trials": len(trials),
        "kills": sum(t.killed for t in trials),
        "kills_by_mode": {mode: sum(t.killed and t.mode == mode for t in trials) for mode in KILL_MODES},
        "kills_by_phase": {phase: sum(t.killed and t.point.phase == phase for t in trials) for phase in PHASES},
        "reference_timeline_s": timelines,
        "slowest_exit_after_kill_s": max((t.exit_after_s or 0.0) for t in trials),
        "sigint_kills": len(sigint),
        "sigint_one_line": sum(bool(t.one_line) for t in sigint),
        "slices_lost": sum(t.slices_lost for t in trials),
        "mismatches": sum(t.mismatches for t in trials),
        "stale_locks": sum(t.stale_lock for t in trials),
        "reruns_failed_first": sum(bool(t.rerun_error) for t in trials),
        "orphans": sum(t.orphans for t in trials),
        "targets": TARGETS,
    }


def input_context(work: Path) -> dict[str, Path]:
    """Paths the bad inputs use: the reference catalog and models, and scratch places."""
    return {
        "catalog": work / "ref_reconstruct.zarr",
        "source": work / "head_small.npy",
        "spdiff": work / "spdiff_tiny.pt",
        "dgdiff": work / "dgdiff_tiny.pt",
        "tmp": work / "inputs",
        "empty_dir": work / "inputs" / "empty",
        "text_dir": work / "inputs" / "text",
        "text_file": work / "inputs" / "notes.pt",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="4 slices, 3 trials, every 5th bad input (the test)")
    parser.add_argument("--skip-inputs", action="store_true")
    parser.add_argument(
        "--inputs-only", action="store_true", help="rerun the bad inputs; keep the trials of the existing result file"
    )
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/faults.json)")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the work folder here; a reference already built there is reused"
    )
    args = parser.parse_args()
    use_local_prefect()
    out = args.out or RESULTS_DIR / "faults.json"
    kept: dict[str, Any] = json.loads(out.read_text()) if args.inputs_only and out.is_file() else {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="need-faults-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        snapshot_code(work / "code")
        timelines = build_reference(work, args.seed, N_SLICES["quick" if args.quick else "full"])
        if args.inputs_only:
            rows = [row for row in kept.get("rows", []) if "case" not in row]
            own = {"benchmark", "created", "command", "machine", "rows", "clear_errors", "total", "slowest_error_s"}
            own |= {"median_error_s", "under_2s", "slow_inputs", "read_only_cases"}
            figures = {key: value for key, value in kept.items() if key not in own}
            if kept:
                figures["trials_command"] = figures.get("trials_command", kept["command"])
        else:
            trials = run_trials(work, plan_trials(3 if args.quick else args.trials, args.seed, timelines), args.seed)
            rows = [trial.row() for trial in trials]
            figures = {**trial_figures(trials, timelines), "trials_wall_s": round(time.perf_counter() - started, 1)}
        if not args.skip_inputs:
            inputs = run_inputs(input_context(work), every=5 if args.quick else 1)
            rows += inputs.pop("input_rows")
            figures |= inputs
    write_result("faults", rows, machine=machine_info("cpu"), path=out, table=False, **figures)


if __name__ == "__main__":
    main()

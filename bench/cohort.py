"""Benchmark the reconstruct flow at cohort scale: planning a synthetic catalog, and 2 workers vs 1 on 4 studies.

    python bench/cohort.py                                  # writes bench/results/cohort.json (~7 min, 2 cores)
    python bench/cohort.py --studies 3 --slices 20 --compare-slices 10 --skip-scaling --out /tmp/cohort_smoke.json

Planning: a synthetic catalog of STUDIES x SLICES (8x8 zero images; the head CT's fan-beam settings, so the shipped
SPDiff fits; ingest ledgers done; reconstruct ledgers per grid cell 60 % done by the right models, 10 % failed,
10 % stale, 20 % pending, and a few single failed slices), built untimed. Timed as the reconstruct flow does it,
inside one flow run: resolving the models, opening the catalog and its study table, `plan_study` for every study at
one dose (the model fit check included), and the submit loop of one no-op task per (study, dose, grid cell) with
the flow's arguments, on the flow's Dask runner and on Prefect's thread runner. Waiting for the no-op tasks
(`drain_s`) and starting the runner are reported, not counted. The same planning without Prefect, on SLICES and on
COMPARE_SLICES slices per study, counts zarr array opens and store reads (LocalStore.get) per study.

Scaling: 4 slabs of 8 head-CT slices, ingested as 4 .npy studies, reconstructed at dose 0.25 with the shipped CPU
weights on 1 and then 2 local Dask workers (tasks.runner's cluster, unchanged), each on a copy of one catalog;
`non_task_s` = wall − Σ task time / workers. It runs first: the planning part leaves the shared Prefect server
busy recording its no-op task runs (it delayed the next flow run's start by ~14 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import head_ct, machine_info, use_local_prefect, write_result  # noqa: E402 (path set above)

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SPDIFF_WEIGHTS, DGDIFF_WEIGHTS = str(WEIGHTS / "spdiff_cpu.pt"), str(WEIGHTS / "dgdiff_cpu.pt")
PLAN_TARGET_S = 5.0
SPEEDUP_TARGET = 1.6
SLABS = (20, 40, 60, 80)
"""First slice of each scaling study (--slab-slices each, default 8: two grid cells of 4, so 8 tasks keep two workers
busy; a timing case, so training slices are as good as held-out ones)."""
LEDGER_MIX = {"done": 0.6, "failed": 0.1, "stale": 0.1, "pending": 0.2}
"""Reconstruct-ledger state of each grid cell of the synthetic studies at MIX_DOSE (other doses: all pending)."""
MIX_DOSE = 0.25


def shipped_models() -> tuple[Any, Any]:
    """The shipped CPU SPDiff and DGDiff, resolved as the reconstruct flow resolves its model references."""
    from flows.models import resolve_model

    return resolve_model(SPDIFF_WEIGHTS, "spdiff"), resolve_model(DGDIFF_WEIGHTS, "dgdiff")


# --- the synthetic catalog ----------------------------------------------------------------------------------------


def build_study(
    catalog_path: str, index: int, n_slices: int, doses: list[float], chunk_slices: int, models: tuple
) -> Any:
    """Create synthetic study `index` with its ledgers marked (done by `models`, or not); return its table row (runs
    in a pool process)."""
    from need_core.physics import FanBeamGeometry, PhysicsSettings
    from storage.catalog import open_catalog, row_for_archive
    from tasks.reconstruct import ReconstructOptions

    geometry = FanBeamGeometry.for_image((256, 256), (0.957, 0.957))  # the head CT's: what the shipped SPDiff fits
    catalog = open_catalog(catalog_path, mode="r+")
    key = f"study-{index:016x}"
    archive = catalog.create_study(
        key,
        image_hu=np.zeros((n_slices, 8, 8), np.float32),
        spacing_mm=(1.5, 0.957, 0.957),
        z_mm=np.arange(n_slices) * 1.5,
        doses=doses,
        geometry=geometry.to_dict(),
        physics=PhysicsSettings().to_dict(),
        seed=0,
        source={"format": "synthetic", "subject_key": f"subject-{index}"},
        sinogram_shape=geometry.sinogram_shape,
    )
    archive.mark("ingest", range(n_slices), "done", produced_by=archive.settings_hash)
    for dose in doses:
        archive.mark("ingest_ld", range(n_slices), "done", dose=dose, produced_by=archive.settings_hash)
    result_key = ReconstructOptions(device="cpu", chunk_slices=chunk_slices).result_key(*models, archive)
    rng = np.random.default_rng(index)
    by_state: dict[str, list[int]] = {state: [] for state in LEDGER_MIX}
    for start in range(0, n_slices, chunk_slices):
        state = rng.choice(list(LEDGER_MIX), p=list(LEDGER_MIX.values()))
        by_state[str(state)].extend(range(start, min(start + chunk_slices, n_slices)))
    bad = set(rng.choice(by_state["done"], size=len(by_state["done"]) // 50, replace=False).tolist())
    by_state["done"] = [s for s in by_state["done"] if s not in bad]  # bad input: single failed slices
    by_state["failed"].extend(bad)
    dose = MIX_DOSE
    marks = {
        "done": {"produced_by": result_key},
        "stale": {"produced_by": "spdiff:old/dgdiff:old/000000000000"},
        "failed": {"error": "RuntimeError: synthetic failure"},
    }
    for state, kwargs in marks.items():
        if by_state[state]:
            archive.mark(
                "reconstruct", sorted(by_state[state]), "failed" if state == "failed" else "done", dose=dose, **kwargs
            )
    return row_for_archive(key, archive, ingest="done")


def build_synthetic_catalog(
    path: Path, n_studies: int, n_slices: int, doses: list[float], chunk_slices: int, models: tuple
) -> float:
    """Create the catalog at `path` with `n_studies` synthetic studies (one pool process per core); return seconds."""
    from storage.catalog import create_catalog

    started = time.perf_counter()
    catalog = create_catalog(path)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = [pool.submit(build_study, str(path), i, n_slices, doses, chunk_slices, models) for i in range(n_studies)]
        catalog.upsert([job.result() for job in jobs])
    return time.perf_counter() - started


# --- planning -----------------------------------------------------------------------------------------------------


@contextmanager
def store_counter() -> Any:
    """Count zarr array opens and store reads (LocalStore.get / get_partial_values) while inside."""
    import zarr
    from zarr.storage import LocalStore

    counts: Counter[str] = Counter()
    open_array, get, get_partial = zarr.open_array, LocalStore.get, LocalStore.get_partial_values

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        counts["array_opens"] += 1
        return open_array(*args, **kwargs)

    async def counting_get(self: LocalStore, *args: Any, **kwargs: Any) -> Any:
        counts["store_gets"] += 1
        return await get(self, *args, **kwargs)

    async def counting_partial(self: LocalStore, key_ranges: Any, *args: Any, **kwargs: Any) -> Any:
        key_ranges = list(key_ranges)
        counts["store_gets"] += len(key_ranges)
        return await get_partial(self, key_ranges, *args, **kwargs)

    with (
        mock.patch.object(zarr, "open_array", counting_open),
        mock.patch.object(LocalStore, "get", counting_get),
        mock.patch.object(LocalStore, "get_partial_values", counting_partial),
    ):
        yield counts


def plan_cohort(path: Path, models: tuple, chunk_slices: int, dose: float) -> tuple[dict, dict[str, float]]:
    """Open the catalog, read its study table and plan every study at `dose`, as the reconstruct flow does."""
    from flows.reconstruct import choose_studies, plan_study
    from storage.catalog import open_catalog
    from tasks.reconstruct import ReconstructOptions

    options = ReconstructOptions(device="cpu", chunk_slices=chunk_slices)
    started = time.perf_counter()
    store = open_catalog(path, mode="r+")
    keys = choose_studies(store, None, None, None)
    opened = time.perf_counter()
    plans = {key: plan_study(store, key, [dose], models, options, None) for key in keys}
    return plans, {"open_s": opened - started, "plan_s": time.perf_counter() - opened}


def planning_rows(built: dict[int, Path], n_studies: int, models: tuple, args: argparse.Namespace) -> list[dict]:
    """Planning of each catalog ({slices per study: path}, models already loaded), best of `repeats` rounds taken in
    turn (so background load hits both alike), and its zarr array opens and store reads per study."""
    times: dict[int, list[dict[str, float]]] = {n: [] for n in built}
    for _ in range(args.repeats):
        for n, path in built.items():
            times[n].append(plan_cohort(path, models, args.chunk_slices, args.dose)[1])
    rows = []
    for n, path in built.items():
        with store_counter() as counts:
            plans, _ = plan_cohort(path, models, args.chunk_slices, args.dose)
        refused = [plan.refused for plan in plans.values() if plan.refused]
        if refused:
            raise RuntimeError(f"the synthetic studies do not fit the shipped SPDiff: {refused[0]}")
        best = min(t["plan_s"] for t in times[n])
        rows.append(
            {
                "part": "planning",
                "n_studies": n_studies,
                "n_slices": n,
                "open_s": min(t["open_s"] for t in times[n]),
                "plan_s": best,
                "plan_s_per_study": best / n_studies,
                "plan_s_worst": max(t["plan_s"] for t in times[n]),
                "n_cells": sum(plan.n_cells for plan in plans.values()),
                "array_opens_per_study": counts["array_opens"] / n_studies,
                "store_gets_per_study": counts["store_gets"] / n_studies,
            }
        )
    return rows


def noop_chunk_task() -> Any:
    """A Prefect task taking reconstruct_chunk's arguments and doing nothing."""
    from prefect import task

    @task(name="noop-chunk", task_run_name="dose {dose} · slices {chunk.label}")
    def noop_chunk(archive_path: str, dose: float, chunk: Any, spdiff: Any, dgdiff: Any, options: Any, key: str) -> int:
        return len(chunk.todo)

    return noop_chunk


def plan_and_submit(catalog: str, dose: float, spdiff: str, dgdiff: str, chunk_slices: int) -> dict[str, Any]:
    """Flow body: the reconstruct flow's planning (models, catalog, plans, locks) and submit loop, with no-op
    tasks; each phase timed, then the wait for the tasks."""
    from prefect.context import FlowRunContext

    from flows.models import resolve_model
    from flows.reconstruct import TASKS_PER_RUN, choose_studies, plan_study, task_plans
    from storage.catalog import open_catalog
    from tasks.reconstruct import ReconstructOptions

    noop = noop_chunk_task()
    times = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[name], clock = now - clock, now

    models = resolve_model(spdiff, "spdiff"), resolve_model(dgdiff, "dgdiff")
    options = ReconstructOptions(device="cpu", chunk_slices=chunk_slices)
    lap("models_s")
    store = open_catalog(catalog, mode="r+")
    keys = choose_studies(store, None, None, None)
    lap("open_s")
    plans = {key: plan_study(store, key, [dose], models, options, None) for key in keys}
    lap("plan_s")
    runner = FlowRunContext.get().task_runner
    if hasattr(runner, "client"):  # prefect-dask starts its cluster on first use: do it here, outside submission
        runner.client  # noqa: B018 (the property starts the cluster)
    lap("runner_start_s")
    with ExitStack() as locks:
        for plan in plans.values():
            locks.enter_context(plan.archive.lock("reconstruct"))
        futures = [
            noop.submit(
                str(plans[job.study].archive.path), job.dose, job.batch, *models, options, plans[job.study].result_key
            )
            for job in task_plans(plans, TASKS_PER_RUN)
        ]
        lap("submit_s")
        slice_doses = sum(future.result() for future in futures)
        lap("drain_s")
    n_cells = sum(plan.n_cells for plan in plans.values())
    return {**times, "n_tasks": len(futures), "n_cells": n_cells, "n_slice_doses": slice_doses}


def timed_submission(path: Path, runner_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One flow run of plan_and_submit on `runner_name` ("dask-2": the flow's runner, 2 workers; "threads")."""
    from prefect import flow
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.models import load_spdiff
    from tasks.runner import dask_task_runner

    load_spdiff.cache_clear()  # the fit check loads the checkpoint afresh, as in a new flow run
    runner = dask_task_runner(workers=2) if runner_name == "dask-2" else ThreadPoolTaskRunner()
    bench_flow = flow(name="cohort-planning-bench", task_runner=runner)(plan_and_submit)
    started = time.perf_counter()
    times = bench_flow(str(path), args.dose, SPDIFF_WEIGHTS, DGDIFF_WEIGHTS, args.chunk_slices)
    wall = time.perf_counter() - started
    total = times["models_s"] + times["open_s"] + times["plan_s"] + times["submit_s"]
    return {"part": "submission", "runner": runner_name, **times, "total_s": total, "flow_wall_s": wall}


def planning_part(root: Path, args: argparse.Namespace) -> tuple[list[dict], dict[str, Any]]:
    """Build the two synthetic catalogs, time planning on each, then planning and submission inside a flow."""
    from bench.common import DOSES

    doses = list(DOSES)
    models = shipped_models()
    built = {}
    for n_slices in (args.compare_slices, args.slices):
        path = root / f"synthetic_{n_slices}.zarr"
        seconds = build_synthetic_catalog(path, args.studies, n_slices, doses, args.chunk_slices, models)
        built[n_slices] = path
        print(f"built {args.studies} x {n_slices} synthetic studies in {seconds:.0f} s (untimed)")
    plan_cohort(built[args.compare_slices], models, args.chunk_slices, args.dose)  # loads the SPDiff checkpoint once
    rows = planning_rows(built, args.studies, models, args)
    rows += [timed_submission(built[args.slices], runner, args) for runner in ("dask-2", "threads")]
    small, large, dask_run, threads_run = rows
    scalars = {
        "planning_s": dask_run["total_s"],
        "plan_s": dask_run["plan_s"],
        "submit_s": dask_run["submit_s"],
        "total_s": dask_run["total_s"],
        "planning_target_s": PLAN_TARGET_S,
        "planning_pass": dask_run["total_s"] <= PLAN_TARGET_S,
        "n_studies": args.studies,
        "n_slices": args.slices,
        "n_tasks": dask_run["n_tasks"],
        "submit_ms_per_task": 1000 * dask_run["submit_s"] / max(dask_run["n_tasks"], 1),
        "planning_s_threads": threads_run["total_s"],
        "submit_ms_per_task_threads": 1000 * threads_run["submit_s"] / max(threads_run["n_tasks"], 1),
        "plan_dose": args.dose,
        "plan_chunk_slices": args.chunk_slices,
        "plan_ratio_slices": f"{args.slices} vs {args.compare_slices}",
        "plan_time_ratio": large["plan_s"] / small["plan_s"],
        "store_gets_ratio": large["store_gets_per_study"] / small["store_gets_per_study"],
        "array_opens_ratio": large["array_opens_per_study"] / small["array_opens_per_study"],
    }
    return rows, scalars


# --- scaling ------------------------------------------------------------------------------------------------------


def worker_environment() -> dict[str, Any]:
    """What tasks.runner's local cluster gives each worker: its settings and the environment a worker sees."""
    from distributed import Client, LocalCluster

    from tasks.runner import LOCAL_CLUSTER

    names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    with LocalCluster(n_workers=1, **LOCAL_CLUSTER) as cluster, Client(cluster) as client:
        seen = next(iter(client.run(lambda: {name: os.environ.get(name) for name in names}).values()))
    return {"local_cluster": dict(LOCAL_CLUSTER), "worker_env": seen}


def timed_cohort_reconstruct(catalog: Path, workers: int, chunk_slices: int) -> dict[str, Any]:
    """One reconstruct flow run on `workers` local Dask workers: wall time and per-stage task time over all studies."""
    from flows.reconstruct import run_reconstruct

    started = time.perf_counter()
    summary = run_reconstruct(
        workers=workers,
        catalog=str(catalog),
        doses=[0.25],
        spdiff=SPDIFF_WEIGHTS,
        dgdiff=DGDIFF_WEIGHTS,
        chunk_slices=chunk_slices,
        device="cpu",
        tracking=False,
    )
    wall = time.perf_counter() - started
    entries = [study["doses"][0.25] for study in summary["studies"].values()]
    stages: Counter[str] = Counter()
    for entry in entries:
        stages.update(entry["seconds"])
    return {
        "part": "scaling",
        "workers": workers,
        "wall_s": wall,
        "task_s_sum": sum(entry["task_seconds"] for entry in entries),
        "chunks": sum(entry["chunks"] for entry in entries),
        "slices": sum(len(entry["done"]) for entry in entries),
        "studies": len(entries),
        "non_task_s": wall - sum(entry["task_seconds"] for entry in entries) / workers,
        **{f"{stage}_s_sum": seconds for stage, seconds in stages.items()},
    }


def need_images(catalog: Path) -> dict[str, np.ndarray]:
    """The `need` images at dose 0.25 of every study of a catalog."""
    from storage.catalog import open_catalog

    store = open_catalog(catalog)
    studies = {row.study: store.study(row.study) for row in store.rows()}
    return {key: archive.read("need", 0, archive.n_slices, dose=0.25) for key, archive in studies.items()}


def scaling_part(root: Path, args: argparse.Namespace) -> tuple[list[dict], dict[str, Any]]:
    """Ingest 4 head-CT slabs as 4 studies once, then reconstruct copies of that catalog on 1 and 2 workers."""
    from flows.ingest import run_ingest

    volume = head_ct()
    sources = []
    for first in SLABS:
        sources.append(root / f"slab_{first:03d}.npy")
        np.save(sources[-1], volume.hu[first : first + args.slab_slices])
    pristine = root / "cohort.zarr"
    started = time.perf_counter()
    run_ingest(
        sources=[str(s) for s in sources],
        catalog=str(pristine),
        doses=[0.25],
        seed=0,
        spacing_mm=list(volume.spacing_mm),
        workers=2,
    )
    ingest_s = time.perf_counter() - started
    rows, images = [], []
    for workers in (1, 2):
        catalog = root / f"cohort_{workers}.zarr"
        shutil.copytree(pristine, catalog)
        rows.append(timed_cohort_reconstruct(catalog, workers, args.scaling_chunk_slices))
        images.append(need_images(catalog))
    one, two = rows
    differences = [float(np.nanmax(np.abs(images[0][key] - images[1][key]))) for key in images[0]]
    scalars = {
        "speedup_2_workers": one["wall_s"] / two["wall_s"],
        "speedup_target": SPEEDUP_TARGET,
        "speedup_pass": one["wall_s"] / two["wall_s"] >= SPEEDUP_TARGET,
        "scaling_studies": len(SLABS),
        "scaling_slices_per_study": args.slab_slices,
        "scaling_spacing_mm": list(volume.spacing_mm),
        "scaling_chunk_slices": args.scaling_chunk_slices,
        "scaling_ingest_s": ingest_s,
        "max_abs_diff_1_vs_2_workers": max(differences),
        "cluster": worker_environment(),
    }
    return rows, scalars


def main() -> None:
    """Run the planning and scaling parts in one process and write one result file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=50, help="synthetic studies to plan")
    parser.add_argument("--slices", type=int, default=200, help="slices per synthetic study")
    parser.add_argument("--compare-slices", type=int, default=50, help="slices per study of the comparison catalog")
    parser.add_argument("--chunk-slices", type=int, default=8, help="grid cell of the planning part")
    parser.add_argument("--dose", type=float, default=MIX_DOSE, help="dose to plan (the ledger mix is at 0.25)")
    parser.add_argument("--repeats", type=int, default=2, help="planning runs per catalog (best is reported)")
    parser.add_argument("--slab-slices", type=int, default=8, help="slices per scaling study")
    parser.add_argument("--scaling-chunk-slices", type=int, default=4)
    parser.add_argument("--skip-scaling", action="store_true", help="only the planning part")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/cohort.json)")
    args = parser.parse_args()
    use_local_prefect()
    from flows.runtime import shared_prefect_api

    rows: list[dict] = []
    scalars: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, shared_prefect_api():
        # scaling first: the planning part's ~1,200 no-op task runs keep the Prefect server busy for a while after
        parts = [planning_part] if args.skip_scaling else [scaling_part, planning_part]
        for part in parts:
            part_rows, part_scalars = part(Path(tmp), args)
            rows += part_rows
            scalars.update(part_scalars)
    write_result("cohort", rows, machine=machine_info("cpu"), path=args.out, **scalars)


if __name__ == "__main__":
    main()

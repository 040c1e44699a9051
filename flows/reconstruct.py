"""Reconstruct flow: every slice still to do, at every requested dose, through SPDiff -> FBP -> DGDiff.

    need reconstruct ARCHIVE --doses 0.25,0.1 --spdiff SPDIFF.pt --dgdiff DGDIFF.pt [--slices 45-64]

Only slices (of `slices`, default all) that are pending, failed, or stale (made by other models or settings) are
computed; done slices are never rewritten. Chunks run as Prefect tasks on Dask; a failing chunk marks its slices
failed and the rest go on.
Metrics against the normal-dose image, read back from the archive, go to MLflow (a parent run, a child run per
dose) unless tracking=False; an unusable tracking store fails the flow before any compute.
"""

from __future__ import annotations

from typing import Any

import dask
from prefect import flow, get_run_logger
from prefect.futures import as_completed
from tqdm.auto import tqdm

from flows.evaluate import track_reconstruct
from flows.models import resolve_model
from flows.tracking.store import default_experiment, open_tracker
from need_core.physics.validation import validate_doses
from storage.archive import Archive, open_archive
from tasks.chunking import DEFAULT_CHUNK_SLICES, grid_cells
from tasks.reconstruct import ReconstructOptions, check_models_fit_archive, reconstruct_chunk
from tasks.runner import dask_task_runner, uses_gpu


class ReconstructFailed(RuntimeError):
    """Some slices failed; they are marked failed in the ledger and a rerun retries only them."""


@flow(name="reconstruct", task_runner=dask_task_runner())
def reconstruct(
    archive: str,
    doses: list[float],
    spdiff: str,
    dgdiff: str,
    chunk_slices: int = DEFAULT_CHUNK_SLICES,
    device: str = "auto",
    seed: int = 0,
    write_projections: bool = False,
    slices: list[int] | None = None,
    tracking: bool = True,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Reconstruct the slices of `archive` (or of `slices`) that are not done at each dose; return a per-dose summary.

    Work is cut on a fixed grid of `chunk_slices` slices (a result-shaping setting): a cell holding any slice to do
    is computed whole, with one context slice either side, and its slices that are not done are written, so a rerun
    of failed slices writes exactly what an uninterrupted run would have."""
    logger = get_run_logger()
    doses = validate_doses(doses)
    tracker = open_tracker(tracking, experiment or default_experiment(archive))
    spdiff_model, dgdiff_model = resolve_model(spdiff, "spdiff"), resolve_model(dgdiff, "dgdiff")
    options = ReconstructOptions(
        device=device, seed=seed, chunk_slices=chunk_slices, write_projections=write_projections
    )
    store = open_archive(archive, mode="r+")
    for dose in doses:
        store.dose_index(dose)  # unknown doses fail here, before any compute
    check_models_fit_archive(spdiff_model, store)
    wanted = check_slices(slices, store.n_slices)
    result_key = options.result_key(spdiff_model, dgdiff_model, store)
    resources = {"GPU": 1} if uses_gpu(device) else {}

    with store.lock("reconstruct"):
        futures = {}
        with dask.annotate(resources=resources):
            for dose in doses:
                todo = [s for s in store.todo("reconstruct", dose=dose, produced_by=result_key) if s in wanted]
                chunks = grid_cells(todo, chunk_slices, store.n_slices)
                logger.info("dose %g: %d slices to do in %d chunks", dose, len(todo), len(chunks))
                for chunk in chunks:
                    future = reconstruct_chunk.submit(
                        str(store.path), dose, chunk, spdiff_model, dgdiff_model, options, result_key
                    )
                    futures[future] = (dose, chunk)
        summary = collect_reports(futures, store, doses)

    logged = (
        track_reconstruct(tracker, store, summary, spdiff_model, dgdiff_model, options, result_key)
        if tracker
        else {"disabled": True}
    )
    if "error" in logged:
        logger.warning("%s", logged["error"])
    failures = {dose: sorted(entry["failed"]) for dose, entry in summary.items() if entry["failed"]}
    if failures:
        listing = "; ".join(f"dose {dose:g}: slices {slices}" for dose, slices in failures.items())
        raise ReconstructFailed(
            f"{sum(map(len, failures.values()))} slice(s) failed ({listing}); "
            f"see `need info {archive}` for the errors. "
            "Fix the cause and rerun the same command: only failed and pending slices are recomputed."
        )
    return {"archive": str(store.path), "result_key": result_key, "doses": summary, "tracking": logged}


def check_slices(slices: list[int] | None, n_slices: int) -> set[int]:
    """The chosen slice indices (all when None); a slice outside the archive is an error before any compute."""
    if slices is None:
        return set(range(n_slices))
    outside = sorted({s for s in slices if not 0 <= s < n_slices})
    if not slices or outside:
        raise ValueError(f"slices must be a non-empty subset of [0, {n_slices}); got {outside or 'none'} outside it")
    return set(slices)


def collect_reports(futures: dict, store: Archive, doses: list[float]) -> dict[float, dict[str, Any]]:
    """Wait for every chunk; sum what each did per dose and mark failed slices (whole chunks or bad input)."""
    summary = {dose: {"done": [], "failed": {}, "seconds": {}, "chunks": 0, "task_seconds": 0.0} for dose in doses}
    with tqdm(
        total=sum(len(chunk.todo) for _, chunk in futures.values()), desc="reconstruct", unit="slice"
    ) as progress:
        for future in as_completed(list(futures)):
            dose, chunk = futures[future]
            entry = summary[dose]
            entry["chunks"] += 1
            try:
                report = future.result()
            except Exception as err:  # retries are spent: the whole chunk failed
                failed = {s: f"{type(err).__name__}: {err}" for s in chunk.todo}
            else:
                failed = report.bad_input
                entry["done"].extend(report.done)
                entry["task_seconds"] += report.task_seconds
                for stage, seconds in report.seconds.items():
                    entry["seconds"][stage] = entry["seconds"].get(stage, 0.0) + seconds
                entry["spdiff_start_step"] = report.spdiff_start_step
                entry.setdefault("dgdiff_start_steps", {}).update(report.dgdiff_start_steps)
            for s, message in failed.items():
                store.mark("reconstruct", [s], "failed", dose=dose, error=message[:2000])
            entry["failed"].update(failed)
            progress.update(len(chunk.todo))
    return summary


def run_reconstruct(dask_address: str | None = None, workers: int | None = None, **params: Any) -> dict[str, Any]:
    """Run the reconstruct flow on a chosen Dask cluster (an address, or a LocalCluster of `workers` processes)."""
    gpu = uses_gpu(str(params.get("device", "auto")))
    return reconstruct.with_options(task_runner=dask_task_runner(dask_address, workers, gpu=gpu))(**params)

"""Reconstruct flow: every slice still to do, of every chosen study, at every requested dose, through SPDiff -> FBP
-> DGDiff, in one flow run.

    need reconstruct CATALOG [--doses 0.25,0.1] [--spdiff REF --dgdiff REF] [--split test | --studies K1,K2]

Only slices that are pending, failed, or stale (made by other models or settings) are computed; done slices are
never rewritten. (study, dose, chunk) tasks run as Prefect tasks on Dask; a failing chunk marks its slices failed
and the rest go on; a study the models do not fit (another sinogram shape) fails alone, named with both shapes.
The MLflow run starts before the chunks are submitted and is RUNNING while they compute (flows.evaluate.
reconstruct_run); at the end it scores exactly the slices this run wrote, read back from the catalog (the archive's
whole state apart, as `archive_*` metrics), unless tracking=False; an unusable tracking store fails the flow before
any compute. A rerun with nothing to compute logs nothing to MLflow. Prefect shows a progress artifact while chunks
finish, the quality table and failed slices as artifacts, and per-stage timings in the flow log (flows.reports).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import dask
from prefect import flow, get_run_logger
from prefect.futures import as_completed

from flows.console import UI_ONLY
from flows.models import default_model, resolve_model
from flows.progress import SliceProgress
from flows.reconstruct_tracking import reconstruct_run, track_reconstruct
from flows.reports import ChunkProgress, reconstruct_run_name, report_reconstruct
from flows.sampling import choose_sampling
from flows.tracking.store import default_experiment, open_tracker
from need_core.doses import DOSE_TOLERANCE
from need_core.physics.validation import validate_doses
from storage.archive import Archive
from storage.catalog import Catalog, open_catalog
from tasks.chunking import DEFAULT_CHUNK_SLICES, CellBatch, GridCell, batch_cells, grid_cells
from tasks.models import ResolvedModel
from tasks.reconstruct import ModelArchiveMismatch, ReconstructOptions, check_models_fit_archive, reconstruct_chunk
from tasks.runner import dask_task_runner, uses_gpu
from tasks.train import training_studies


class ReconstructFailed(RuntimeError):
    """Some slices failed; they are marked failed in the ledger and a rerun retries only them."""


TASKS_PER_RUN = 64
"""About how many tasks a run submits: when a run has more grid cells than this, consecutive cells of one study and
dose share a task. prefect-dask costs ~70 ms per submitted task on this CPU (bench/results/cohort.json), so a
cohort's thousands of cells in as many tasks would spend minutes submitting."""


@dataclass(frozen=True)
class TaskPlan:
    """One task of a reconstruct run: consecutive grid cells of one study at one dose."""

    study: str
    dose: float
    batch: CellBatch


@dataclass
class StudyPlan:
    """What one study contributes to a run: its result key, its grid cells to compute per dose, or why the models
    cannot process it."""

    key: str
    archive: Archive
    result_key: str
    cells: dict[float, list[GridCell]]
    refused: str = ""

    @property
    def n_cells(self) -> int:
        return sum(len(cells) for cells in self.cells.values())


def plan_study(
    catalog: Catalog,
    key: str,
    doses: list[float],
    models: tuple[ResolvedModel, ResolvedModel],
    options: ReconstructOptions,
    wanted: set[int] | None,
) -> StudyPlan:
    """The grid cells of `key` holding slices to do at each dose: two bulk ledger reads per dose (states, then the
    producers of done cells), never a round trip per slice."""
    archive = catalog.study(key, "r+")
    for dose in doses:
        archive.dose_index(dose)  # unknown doses fail here, before any compute
    result_key = options.result_key(models[0], models[1], archive)
    try:
        check_models_fit_archive(models[0], archive)
    except ModelArchiveMismatch as err:
        return StudyPlan(key, archive, result_key, {}, refused=f"study {key}: {err}")
    cells = {}
    for dose in doses:
        stale = archive.stale_slices("reconstruct", dose, result_key)
        todo = [int(s) for s in stale if wanted is None or int(s) in wanted]
        cells[dose] = grid_cells(todo, options.chunk_slices, archive.n_slices)
    return StudyPlan(key, archive, result_key, cells)


def scored_training_studies(models: tuple[ResolvedModel, ResolvedModel], keys: list[str]) -> list[str]:
    """The chosen studies either model was trained on (from its checkpoint's training record)."""
    trained = set().union(*(training_studies(model.path, model.kind) for model in models))
    return sorted(trained & set(keys))


def task_plans(plans: dict[str, StudyPlan], tasks_per_run: int) -> list[TaskPlan]:
    """The run's tasks: each study's cells at each dose in batches of ceil(cells / tasks_per_run) cells, the lowest
    dose first: its sampling starts at later steps, so its tasks are the longest, and workers that start the long
    tasks first finish together (the order shapes no result)."""
    per_task = max(1, -(-sum(plan.n_cells for plan in plans.values()) // tasks_per_run))
    tasks = [
        TaskPlan(plan.key, dose, batch)
        for plan in plans.values()
        for dose, cells in plan.cells.items()
        if cells
        for batch in batch_cells(cells, per_task)
    ]
    return sorted(tasks, key=lambda task: task.dose)


def choose_studies(
    catalog: Catalog, split: str | None, studies: list[str] | None, slices: list[int] | None
) -> list[str]:
    """The keys of the studies to reconstruct; `slices` only make sense for one study."""
    rows = catalog.select(split=split, studies=studies)
    if not rows:
        raise ValueError(f"no ingested study in {catalog.path}: run `need ingest` first")
    if slices is not None and len(rows) != 1:
        raise ValueError(f"--slices needs a single study; {len(rows)} are chosen (use --studies KEY)")
    return [row.study for row in rows]


@flow(name="reconstruct", flow_run_name=reconstruct_run_name, task_runner=dask_task_runner())
def reconstruct(
    catalog: str,
    doses: list[float] | None = None,
    spdiff: str | None = None,
    dgdiff: str | None = None,
    chunk_slices: int = DEFAULT_CHUNK_SLICES,
    device: str = "auto",
    seed: int = 0,
    write_projections: bool = False,
    slices: list[int] | None = None,
    split: str | None = None,
    studies: list[str] | None = None,
    tracking: bool = True,
    experiment: str | None = None,
    sampling: str | None = None,
) -> dict[str, Any]:
    """Reconstruct what is not done of the chosen studies (default every ingested study; or `split`, or `studies`;
    `slices` of a single study) at each dose (default every dose the chosen studies hold); return a per-study,
    per-dose summary. A model not named is flows.models.default_model's: the registry's `@champion`, else the shipped
    weights; the log says which. `sampling`: `reference` (the spec's settings), a profile file, or by default the
    profile `need calibrate` made for the two models (flows.sampling), else the reference; part of the result key.

    Work is cut on a fixed grid of `chunk_slices` slices (a result-shaping setting): a cell holding any slice to do
    is computed whole, with one context slice either side, and its slices that are not done are written, so a rerun
    of failed slices writes exactly what an uninterrupted run would have."""
    logger = get_run_logger()
    doses = validate_doses(doses) if doses is not None else None
    tracker = open_tracker(tracking, experiment or default_experiment(catalog))
    models = chosen_model(spdiff, "spdiff"), chosen_model(dgdiff, "dgdiff")
    profile, why = choose_sampling(sampling, *models)
    logger.info("sampling: %s, %s", profile.describe(), why)
    options = ReconstructOptions(
        device=device, seed=seed, chunk_slices=chunk_slices, write_projections=write_projections, sampling=profile
    )
    store = open_catalog(catalog, mode="r+")
    keys = choose_studies(store, split, studies, slices)
    if doses is None:
        doses = held_doses(store, keys)
        logger.info("doses: %s (every dose the chosen studies hold)", ", ".join(f"{d:g}" for d in doses))
    wanted = check_slices(slices, store.study(keys[0], "r").n_slices) if slices is not None else None
    plans = {key: plan_study(store, key, doses, models, options, wanted) for key in keys}
    seen = scored_training_studies(models, keys)
    if seen:
        logger.warning(
            "the models were trained on %d of the studies scored here (%s): their metrics are not held-out",
            len(seen),
            ", ".join(seen),
        )
    summary = {key: new_study_summary(plan, doses) for key, plan in plans.items()}
    jobs = task_plans(plans, TASKS_PER_RUN)
    if not jobs and not any(plan.refused for plan in plans.values()):
        logger.info("nothing to do: every chosen slice is done with these models and settings; nothing logged")
        return {"catalog": str(store.path), "studies": summary, "tracking": {"noop": "nothing to compute"}}
    resources = {"GPU": 1} if uses_gpu(device) else {}
    started = time.monotonic()

    with ExitStack() as stack:
        for plan in plans.values():
            stack.enter_context(plan.archive.lock("reconstruct"))
        live = stack.enter_context(reconstruct_run(tracker, store, plans, doses, models, options, seen))
        if live is not None:
            logger.info("MLflow run %s: %s", live.run_id, live.url)
        for plan in plans.values():
            if plan.refused:
                logger.warning("%s", plan.refused)
                refuse_study(plan, doses, wanted, summary[plan.key])
        total = sum(len(job.batch.todo) for job in jobs)
        logger.info("%d studies, %d chunks, %d slice-doses to do", len(plans), len(jobs), total)
        paths = {key: str(plan.archive.path) for key, plan in plans.items()}  # as the tasks receive them
        with SliceProgress((paths[j.study], j.dose, s) for j in jobs for s in j.batch.todo) as bar:
            futures = {}  # submitted after the bar subscribed to the chunks' events, so none is published unheard
            with dask.annotate(resources=resources):
                for job in jobs:
                    plan = plans[job.study]
                    future = reconstruct_chunk.submit(
                        paths[job.study], job.dose, job.batch, *models, options, plan.result_key
                    )
                    futures[future] = job
            shown = ChunkProgress(total, f"slice-doses of {len(futures)} chunks finished")
            collect_reports(futures, plans, summary, shown, bar)
        compute_s = time.monotonic() - started
        logged = (
            track_reconstruct(tracker, store, plans, summary, models, options, seen, live)
            if live is not None and tracker is not None
            else {"disabled": True}
        )
    report_reconstruct(store.path, summary, logged, compute_s)
    failed = failure_message(catalog, summary)
    if failed:
        raise ReconstructFailed(failed)
    logged.pop("rows", None)
    return {"catalog": str(store.path), "studies": summary, "tracking": logged}


def chosen_model(reference: str | None, kind: str) -> ResolvedModel:
    """The named model, else flows.models.default_model's, pinned; the flow log says which file or version runs."""
    why = ""
    if reference is None:
        reference, why = default_model(kind)
    model = resolve_model(reference, kind)
    named = model.registered or model.reference
    get_run_logger().info("%s: %s%s, checkpoint %s", kind, named, f" ({why})" if why else "", model.identity)
    return model


def held_doses(catalog: Catalog, keys: list[str]) -> list[float]:
    """The doses every chosen study holds, in the first study's order (a study missing one would fail it)."""
    studies = [catalog.study(key, "r") for key in keys]
    common = [d for d in studies[0].doses if all(any(abs(d - o) <= DOSE_TOLERANCE for o in s.doses) for s in studies)]
    if not common:
        raise ValueError(f"the chosen studies of {catalog.path} hold no dose in common: name them with --doses")
    return common


def new_study_summary(plan: StudyPlan, doses: list[float]) -> dict[str, Any]:
    """The empty per-dose tallies of one study; `lasting` lists the failed slices a rerun would fail again."""
    return {
        "result_key": plan.result_key,
        "refused": plan.refused,
        "doses": {
            dose: {"done": [], "failed": {}, "lasting": [], "seconds": {}, "chunks": 0, "task_seconds": 0.0}
            for dose in doses
        },
    }


def failure_message(catalog: str, summary: dict[str, dict[str, Any]]) -> str:
    """What failed, per study and dose, and the advice that fits: a rerun for slices whose task failed, mending the
    input or other models for slices a rerun would fail again ("" when nothing failed)."""
    counts = [
        f"study {key} dose {dose:g}: {len(entry['failed'])} slice(s)"
        for key, study in summary.items()
        for dose, entry in study["doses"].items()
        if entry["failed"]
    ]
    if not counts:
        return ""
    entries = [entry for study in summary.values() for entry in study["doses"].values()]
    lasting = sum(len(entry["lasting"]) for entry in entries)
    curable = sum(len(entry["failed"]) for entry in entries) - lasting
    advice = []
    if curable:
        advice.append(
            f"{curable} failed in their task: fix the cause and rerun the same command (only failed and pending "
            "slices are recomputed)"
        )
    if lasting:
        advice.append(
            f"{lasting} cannot be made from what is stored (corrupt or invalid input, or models that do not fit the "
            "study): a rerun fails them again; mend the input or choose other models as each error says"
        )
    return f"slices failed ({'; '.join(counts)}); errors: `need info {catalog}`. " + "; ".join(advice) + "."


def refuse_study(plan: StudyPlan, doses: list[float], wanted: set[int] | None, summary: dict[str, Any]) -> None:
    """Mark every slice to do of a study the models cannot process as failed, with the reason."""
    archive = plan.archive
    for dose in doses:
        todo = [s for s in archive.todo("reconstruct", dose=dose) if wanted is None or s in wanted]
        if todo:
            archive.mark("reconstruct", todo, "failed", dose=dose, error=plan.refused[:2000])
        summary["doses"][dose]["failed"].update({s: plan.refused for s in todo})
        summary["doses"][dose]["lasting"].extend(todo)


def check_slices(slices: list[int] | None, n_slices: int) -> set[int]:
    """The chosen slice indices (all when None); a slice outside the study is an error before any compute."""
    if slices is None:
        return set(range(n_slices))
    outside = sorted({s for s in slices if not 0 <= s < n_slices})
    if not slices or outside:
        raise ValueError(f"slices must be a non-empty subset of [0, {n_slices}); got {outside or 'none'} outside it")
    return set(slices)


def collect_reports(
    futures: dict,
    plans: dict[str, StudyPlan],
    summary: dict[str, dict[str, Any]],
    shown: ChunkProgress,
    bar: SliceProgress,
) -> None:
    """Wait for every chunk; sum what each did per study and dose, mark failed slices (whole chunks or bad input),
    and count each ended chunk's slices on the terminal's `bar` (which the chunks also move per slice) and on the
    progress artifact `shown`."""
    logger = get_run_logger()
    for future in as_completed(list(futures)):
        chunk: TaskPlan = futures[future]
        entry = summary[chunk.study]["doses"][chunk.dose]
        entry["chunks"] += 1
        try:
            report = future.result()
        except Exception as err:  # retries are spent: the whole chunk failed
            failed = {s: f"{type(err).__name__}: {err}" for s in chunk.batch.todo}
        else:
            failed = report.bad_input
            entry["lasting"].extend(report.bad_input)
            entry["done"].extend(report.done)
            entry["task_seconds"] += report.task_seconds
            for stage, seconds in report.seconds.items():
                entry["seconds"][stage] = entry["seconds"].get(stage, 0.0) + seconds
            entry["spdiff_start_step"] = report.spdiff_start_step
            entry.setdefault("dgdiff_start_steps", {}).update(report.dgdiff_start_steps)
        for s, message in failed.items():
            plans[chunk.study].archive.mark("reconstruct", [s], "failed", dose=chunk.dose, error=message[:2000])
        entry["failed"].update(failed)
        bar.chunk_ended(str(plans[chunk.study].archive.path), chunk.dose, chunk.batch.todo)
        shown.advance(len(chunk.batch.todo))
        logger.info(
            "chunk %s dose %g slices %s: %d done, %d failed (%d/%d slice-doses finished)",
            chunk.study,
            chunk.dose,
            chunk.batch.label,
            len(chunk.batch.todo) - len(failed),
            len(failed),
            shown.finished,
            shown.total,
            extra=UI_ONLY,
        )


def run_reconstruct(dask_address: str | None = None, workers: int | None = None, **params: Any) -> dict[str, Any]:
    """Run the reconstruct flow on a chosen Dask cluster (an address, or a LocalCluster of `workers` processes)."""
    gpu = uses_gpu(str(params.get("device", "auto")))
    return reconstruct.with_options(task_runner=dask_task_runner(dask_address, workers, gpu=gpu))(**params)

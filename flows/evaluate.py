"""Evaluate flow: score the results stored in an archive against the normal-dose image and log them to MLflow.

    need evaluate CATALOG [--doses 0.25,0.1] [--split test | --studies K1,K2] [--experiment NAME]

Metrics are read back from the catalog, never from a reconstruct run's memory, so this re-logs any run whose
tracking failed, or scores a catalog reconstructed elsewhere. A cohort's metrics are per study and for the cohort
(mean ± std over slices and over studies). The reconstruct flow scores its own run here too
(`track_reconstruct`), so scoring and logging fail separately and say which of them failed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tracking.datasets import log_catalog_inputs
from flows.tracking.runs import (
    catalog_params,
    evaluation_dose_params,
    log_quality_runs,
    log_reconstruct_run,
    reconstruct_params,
)
from flows.tracking.store import Tracker, default_experiment, open_tracker
from need_core.physics import PhysicsSettings
from need_core.physics.validation import validate_doses
from need_core.reporting import format_quality_table
from storage.archive import Archive
from storage.catalog import Catalog, open_catalog
from tasks.evaluation import DoseEvaluation, NothingToEvaluate, combine_studies, done_slices, evaluate_dose_task
from tasks.models import ResolvedModel
from tasks.reconstruct import ReconstructOptions


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count()))
def evaluate(
    catalog: str,
    doses: list[float] | None = None,
    slices: list[int] | None = None,
    split: str | None = None,
    studies: list[str] | None = None,
    tracking: bool = True,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Score every reconstructed dose (or `doses`) of the chosen studies (default all; `split`; `studies`) on their
    done slices (or `slices` of a single study); log a parent run and a child run per dose; return the cohort rows,
    the per-study rows, a printable table and the parent run id."""
    tracker = open_tracker(tracking, experiment or default_experiment(catalog))
    store = open_catalog(catalog)
    archives = {row.study: store.study(row.study, "r") for row in store.select(split=split, studies=studies)}
    if slices is not None and len(archives) != 1:
        raise ValueError(f"--slices needs a single study; {len(archives)} are chosen (use --studies KEY)")
    if doses:
        doses = validate_doses(doses)
        for archive in archives.values():
            for dose in doses:
                archive.dose_index(dose)  # unknown doses fail before any compute
    else:
        held = {dose for archive in archives.values() for dose in archive.doses if done_slices(archive, dose)}
        doses = sorted(held, reverse=True)
    if not doses:
        raise NothingToEvaluate(f"nothing is reconstructed in {store.path}: run `need reconstruct` first")
    futures = {
        (key, dose): evaluate_dose_task.submit(str(archive.path), dose, slices)
        for dose in doses
        for key, archive in archives.items()
        if slices is not None or done_slices(archive, dose)
    }
    by_dose: dict[float, dict[str, DoseEvaluation]] = {dose: {} for dose in doses}
    for (key, dose), future in futures.items():
        by_dose[dose][key] = future.result()
    evaluations = [combine_studies(dose, found) for dose, found in by_dose.items() if found]
    parent = None
    if tracker:
        physics = PhysicsSettings.from_dict(next(iter(archives.values())).settings["physics"])
        dose_params = {
            e.dose: evaluation_dose_params(tracker, e, physics.incident_count_at(e.dose)) for e in evaluations
        }
        params = catalog_params(store, list(archives.values()))
        parent = log_quality_runs(tracker, "evaluate", str(store.path), evaluations, params, dose_params)
        log_catalog_inputs(tracker, parent, store, [row for row in store.rows() if row.study in archives], "evaluation")
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    study_rows = [row for evaluation in evaluations for row in evaluation.study_rows]
    return {"rows": rows, "study_rows": study_rows, "table": format_quality_table(rows), "parent_run_id": parent}


def reconstruct_dose_physics(
    archive: Archive, summary: Mapping[str, Mapping[str, Any]], doses: list[float]
) -> dict[float, dict[str, Any]]:
    """Per dose: the incident count I0·d and, where this run sampled SPDiff, the start step t* its chunks reported
    (one value: t* depends on the dose and the model only)."""
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    values: dict[float, dict[str, Any]] = {}
    for dose in doses:
        values[dose] = {"incident_count": physics.incident_count_at(dose)}
        steps = {study["doses"][dose].get("spdiff_start_step") for study in summary.values()} - {None}
        if steps:
            values[dose]["spdiff_start_step"] = min(steps)
    return values


def track_reconstruct(
    tracker: Tracker,
    store: Catalog,
    plans: Mapping[str, Any],
    summary: Mapping[str, Mapping[str, Any]],
    models: tuple[ResolvedModel, ResolvedModel],
    options: ReconstructOptions,
    seen_in_training: Sequence[str] = (),
) -> dict[str, Any]:
    """Score every reconstructed dose of a reconstruct run's studies from the catalog, then log the run and its dose
    runs.

    Neither step fails the flow, whose results are stored: a failure comes back as {"error": ...} naming the step
    that failed (evaluation or MLflow logging) and the command that scores and logs the run again. The studies are
    the run's dataset input ("evaluation"); `seen_in_training` (studies the models trained on) is tagged.
    """
    again = f"The results are stored; score and log them with `need evaluate {store.path}`"
    archives = {key: plan.archive for key, plan in plans.items()}
    doses = list(next(iter(summary.values()))["doses"]) if summary else []
    try:
        evaluations = []
        for dose in doses:
            found = {
                key: evaluate_dose_task(str(archive.path), dose)
                for key, archive in archives.items()
                if done_slices(archive, dose)
            }
            if found:
                evaluations.append(combine_studies(dose, found))
        physics = reconstruct_dose_physics(next(iter(archives.values())), summary, [e.dose for e in evaluations])
    except Exception as err:  # scoring stored results must not turn a good reconstruct run into a failure
        return {"error": f"evaluation failed: {type(err).__name__}: {err}. {again}"}
    if not evaluations:
        return {"error": "nothing reconstructed yet: no run logged"}
    try:
        result_keys = {key: study["result_key"] for key, study in summary.items()}
        common = reconstruct_params(store, list(archives.values()), models, options, result_keys)
        common["scored_training_studies"] = len(seen_in_training)
        parent = log_reconstruct_run(tracker, str(store.path), evaluations, summary, physics, common)
        if seen_in_training:
            tracker.set_tags(parent, {"need.scored_training_studies": ",".join(seen_in_training)[:4900]})
        log_catalog_inputs(tracker, parent, store, [row for row in store.rows() if row.study in archives], "evaluation")
    except Exception as err:  # nor must logging them
        return {"error": f"MLflow logging failed: {type(err).__name__}: {err}. {again}"}
    return {"parent_run_id": parent, "experiment": tracker.experiment}

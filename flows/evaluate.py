"""Evaluate flow: score the results stored in an archive against the normal-dose image and log them to MLflow.

    need evaluate ARCHIVE [--doses 0.25,0.1] [--experiment NAME]

Metrics are read back from the archive, never from a reconstruct run's memory, so this re-logs any run whose
tracking failed, or scores an archive reconstructed elsewhere. The reconstruct flow scores its own run here too
(`track_reconstruct`), so scoring and logging fail separately and say which of them failed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.tracking.runs import (
    archive_params,
    evaluation_dose_params,
    log_quality_runs,
    log_reconstruct_run,
    reconstruct_params,
)
from flows.tracking.store import Tracker, default_experiment, open_tracker
from need_core.physics import PhysicsSettings
from need_core.physics.validation import validate_doses
from need_core.reporting import format_quality_table
from storage.archive import Archive, open_archive
from tasks.evaluation import NothingToEvaluate, done_slices, evaluate_dose_task
from tasks.models import ResolvedModel
from tasks.reconstruct import ReconstructOptions


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count()))
def evaluate(
    archive: str,
    doses: list[float] | None = None,
    slices: list[int] | None = None,
    tracking: bool = True,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Score every reconstructed dose (or `doses`) on the done slices (or `slices`); log a parent run and a child
    run per dose; return the summary rows, a printable table and the parent run id."""
    tracker = open_tracker(tracking, experiment or default_experiment(archive))
    store = open_archive(archive)
    if doses:
        doses = validate_doses(doses)
        for dose in doses:
            store.dose_index(dose)  # unknown doses fail before any compute
    else:
        doses = [dose for dose in store.doses if done_slices(store, dose)]
    if not doses:
        raise NothingToEvaluate(f"nothing is reconstructed in {store.path}: run `need reconstruct` first")
    futures = [evaluate_dose_task.submit(str(store.path), dose, slices) for dose in doses]
    evaluations = [future.result() for future in futures]
    parent = None
    if tracker:
        physics = PhysicsSettings.from_dict(store.settings["physics"])
        dose_params = {
            e.dose: evaluation_dose_params(tracker, e, physics.incident_count_at(e.dose)) for e in evaluations
        }
        parent = log_quality_runs(tracker, "evaluate", str(store.path), evaluations, archive_params(store), dose_params)
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    return {"rows": rows, "table": format_quality_table(rows), "parent_run_id": parent}


def reconstruct_dose_physics(
    store: Archive, summary: Mapping[float, Mapping[str, Any]], doses: list[float]
) -> dict[float, dict[str, Any]]:
    """Per dose: the incident count I0·d and, where this run sampled SPDiff, the start step t* its chunks reported."""
    physics = PhysicsSettings.from_dict(store.settings["physics"])
    values: dict[float, dict[str, Any]] = {}
    for dose in doses:
        values[dose] = {"incident_count": physics.incident_count_at(dose)}
        if summary[dose].get("spdiff_start_step") is not None:
            values[dose]["spdiff_start_step"] = summary[dose]["spdiff_start_step"]
    return values


def track_reconstruct(
    tracker: Tracker,
    store: Archive,
    summary: Mapping[float, Mapping[str, Any]],
    spdiff_model: ResolvedModel,
    dgdiff_model: ResolvedModel,
    options: ReconstructOptions,
    result_key: str,
) -> dict[str, Any]:
    """Score every reconstructed dose of a reconstruct run from the archive, then log the run and its dose runs.

    Neither step fails the flow, whose results are stored: a failure comes back as {"error": ...} naming the step
    that failed (evaluation or MLflow logging) and the command that scores and logs the run again."""
    again = f"The results are stored; score and log them with `need evaluate {store.path}`"
    try:
        evaluations = [evaluate_dose_task(str(store.path), dose) for dose in summary if done_slices(store, dose)]
        physics = reconstruct_dose_physics(store, summary, [e.dose for e in evaluations])
    except Exception as err:  # scoring stored results must not turn a good reconstruct run into a failure
        return {"error": f"evaluation failed: {type(err).__name__}: {err}. {again}"}
    if not evaluations:
        return {"error": "nothing reconstructed yet: no run logged"}
    try:
        common = reconstruct_params(store, spdiff_model, dgdiff_model, options, result_key)
        parent = log_reconstruct_run(tracker, str(store.path), evaluations, summary, physics, common)
    except Exception as err:  # nor must logging them
        return {"error": f"MLflow logging failed: {type(err).__name__}: {err}. {again}"}
    return {"parent_run_id": parent, "experiment": tracker.experiment}

"""Evaluate flow: score the results stored in an archive against the normal-dose image and log them to MLflow.

    need evaluate ARCHIVE [--doses 0.25,0.1] [--experiment NAME]

Metrics are read back from the archive, never from a reconstruct run's memory, so this re-logs any run whose
tracking failed, or scores an archive reconstructed elsewhere.
"""
from __future__ import annotations

import os
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.ingest import validate_doses
from need_core.reporting import format_quality_table
from storage.archive import open_archive
from tasks.evaluation import NothingToEvaluate, done_slices, evaluate_dose_task
from tasks.tracking import default_experiment, evaluation_dose_params, log_quality_runs, open_tracker


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
        incident = store.settings["physics"]["incident_count"]
        dose_params = {e.dose: evaluation_dose_params(tracker, e, incident * e.dose) for e in evaluations}
        common = {"geometry": store.settings["geometry"], "physics": store.settings["physics"],
                  "archive_settings_hash": store.settings_hash}
        parent = log_quality_runs(tracker, "evaluate", str(store.path), evaluations, common, dose_params)
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    return {"rows": rows, "table": format_quality_table(rows), "parent_run_id": parent}

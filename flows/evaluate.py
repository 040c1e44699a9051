"""Evaluate flow: score the results stored in an archive against the normal-dose image and log them to MLflow.

    need evaluate CATALOG [--doses 0.25,0.1] [--split test | --studies K1,K2] [--experiment NAME]

Metrics are read back from the catalog, never from a reconstruct run's memory, so this re-logs any run whose
tracking failed, or scores a catalog reconstructed elsewhere. A cohort's metrics are per study and for the cohort
(mean ± std over slices and over studies). The MLflow run is RUNNING while the flow scores; an evaluation of what an
earlier finished evaluate run of the experiment scored (same slices, same producers) logs nothing new. The
reconstruct flow scores its own run with flows.reconstruct_tracking.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.reports import evaluate_run_name, publish_quality
from flows.tracking.datasets import log_catalog_inputs
from flows.tracking.live import LiveRun, live_run
from flows.tracking.quality_runs import archive_tags, log_quality_runs, model_namer
from flows.tracking.runs import (
    catalog_params,
    evaluation_dose_params,
)
from flows.tracking.store import RUN_KIND_TAG, Tracker, default_experiment, open_tracker
from need_core.physics import PhysicsSettings
from need_core.physics.validation import validate_doses
from need_core.reporting import format_quality_table
from storage.archive import Archive
from storage.catalog import Catalog, open_catalog
from tasks.evaluation import (
    DoseEvaluation,
    NothingToEvaluate,
    combine_studies,
    done_slices,
    evaluate_dose_task,
    long_table,
)

STATE_TAG = "need.state_digest"
"""Tag of an evaluate run: the digest of what it scored (studies, doses, slices and what produced them)."""


@flow(name="evaluate", flow_run_name=evaluate_run_name, task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count()))
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
    the per-study rows, a printable table and the parent run id.

    When nothing changed since the experiment's last finished evaluate run of the same selection (same done slices,
    made by the same models and settings), nothing new is logged and that run is returned."""
    logger = get_run_logger()
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
    state = evaluation_state(archives, doses, slices)
    previous = unchanged_run(tracker, state) if tracker else None
    if previous:
        logger.info(
            "nothing changed since MLflow run %s (same slices, models and settings): nothing new logged", previous
        )
    params = catalog_params(store, list(archives.values())) if tracker else {}
    with live_run(
        None if previous else tracker,
        f"evaluate {Path(store.path).name}",
        "evaluate",
        source="flows/evaluate.py",
        description=f"Score the stored results of {len(archives)} studies of {Path(store.path).resolve()} at doses "
        f"{','.join(f'{d:g}' for d in doses)} against the normal-dose image.",
        tags={**archive_tags(str(store.path)), STATE_TAG: state},
        params={**params, "doses": ",".join(f"{d:g}" for d in doses)},
    ) as live:
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
        if live is not None and tracker is not None:
            log_evaluate_run(tracker, live, store, archives, evaluations, params, by_dose)
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    study_rows = [row for evaluation in evaluations for row in evaluation.study_rows]
    parent = live.run_id if live else previous
    logged: dict[str, Any] = (
        {"parent_run_id": parent, "url": tracker.run_url(parent)} if tracker and parent else {"disabled": True}
    )
    publish_quality("evaluate", store.path, f"evaluate {Path(store.path).name}", rows, logged)
    return {"rows": rows, "study_rows": study_rows, "table": format_quality_table(rows), "parent_run_id": parent}


def log_evaluate_run(
    tracker: Tracker,
    live: LiveRun,
    store: Catalog,
    archives: Mapping[str, Archive],
    evaluations: list[DoseEvaluation],
    params: Mapping[str, Any],
    by_dose: Mapping[float, Mapping[str, DoseEvaluation]],
) -> None:
    """Log an evaluate flow's evaluations into its live run: dose and method runs, the long table, the dataset."""
    physics = PhysicsSettings.from_dict(next(iter(archives.values())).settings["physics"])
    dose_params = {e.dose: evaluation_dose_params(tracker, e, physics.incident_count_at(e.dose)) for e in evaluations}
    table = long_table(by_dose, model_namer(tracker))
    log_quality_runs(tracker, "evaluate", str(store.path), evaluations, params, dose_params, live=live, table=table)
    log_catalog_inputs(
        tracker, live.run_id, store, [row for row in store.rows() if row.study in archives], "evaluation"
    )


def evaluation_state(archives: Mapping[str, Archive], doses: Sequence[float], slices: list[int] | None) -> str:
    """A digest of what an evaluation scores: per study and dose, the done (or chosen) slices and what produced
    them; equal digests give equal metrics."""
    state = []
    for key, archive in sorted(archives.items()):
        for dose in doses:
            chosen = sorted(slices) if slices is not None else done_slices(archive, dose)
            producers = archive.produced_by("reconstruct", dose=dose)
            state.append([key, float(dose), [[s, producers[s]] for s in chosen]])
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def unchanged_run(tracker: Tracker, state: str) -> str | None:
    """The experiment's latest finished evaluate run of `state`, if any."""
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`{STATE_TAG}` = '{state}' AND tags.`{RUN_KIND_TAG}` = 'evaluate' "
        "AND attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return found[0].info.run_id if found else None

"""A reconstruct run's MLflow run: started before its chunks are submitted (RUNNING while they compute), and at the end
filled with the scores of exactly the slices the run wrote, read back from the catalog, and the archive's whole state
apart. Scoring and logging fail separately and say which of them failed (`track_reconstruct`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.tracking.datasets import log_catalog_inputs
from flows.tracking.live import LiveRun, live_run
from flows.tracking.quality_runs import archive_tags, dose_run, model_namer
from flows.tracking.runs import log_reconstruct_run, per_study_ranges, reconstruct_params
from flows.tracking.store import Tracker
from need_core.physics import PhysicsSettings
from storage.archive import Archive
from storage.catalog import Catalog
from tasks.evaluation import DoseEvaluation, combine_studies, done_slices, evaluate_dose_task, long_table
from tasks.models import ResolvedModel
from tasks.reconstruct import ReconstructOptions


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


@contextmanager
def reconstruct_run(
    tracker: Tracker | None,
    store: Catalog,
    plans: Mapping[str, Any],
    doses: Sequence[float],
    models: tuple[ResolvedModel, ResolvedModel],
    options: ReconstructOptions,
    seen_in_training: Sequence[str] = (),
) -> Iterator[LiveRun | None]:
    """The MLflow run of a reconstruct flow, started before its chunks are submitted: params, the studies as the
    dataset input, and a RUNNING child per dose with slices to compute, tagged with them (None without a tracker)."""
    if tracker is None:
        yield None
        return
    archives = [plan.archive for plan in plans.values()]
    params = reconstruct_params(store, archives, models, options, {k: p.result_key for k, p in plans.items()})
    params["scored_training_studies"] = len(seen_in_training)
    todo = {
        dose: {key: [s for cell in p.cells.get(dose, []) for s in cell.todo] for key, p in plans.items()}
        for dose in doses
    }
    count = sum(len(v) for per_study in todo.values() for v in per_study.values())
    names = " and ".join(f"{m.kind} {m.registered or m.identity}" for m in models)
    tags = archive_tags(str(store.path))
    if seen_in_training:
        tags["need.scored_training_studies"] = ",".join(seen_in_training)[:4900]
    with live_run(
        tracker,
        f"reconstruct {Path(store.path).name}",
        "reconstruct",
        source="flows/reconstruct.py",
        description=f"Reconstruct {count} slice-doses of {len(plans)} studies of {Path(store.path).resolve()} at "
        f"doses {','.join(f'{d:g}' for d in doses)} with {names}; metrics cover exactly the slices this run made "
        "(`archive_*` metrics: every done slice).",
        tags=tags,
        params={**params, "doses": ",".join(f"{d:g}" for d in doses)},
    ) as live:
        assert live is not None
        log_catalog_inputs(tracker, live.run_id, store, [r for r in store.rows() if r.study in plans], "evaluation")
        refused = any(plan.refused for plan in plans.values())
        for dose in doses:
            if refused or any(todo[dose].values()):  # a dose with nothing to do gets no run
                child = dose_run(live, "reconstruct", str(store.path), dose, params)
                tracker.set_tags(child, {"need.todo_slices": per_study_ranges(todo[dose])})
        yield live


def score_reconstruct_run(
    plans: Mapping[str, Any], summary: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[float, dict[str, DoseEvaluation]], dict[float, DoseEvaluation]]:
    """Per dose, the evaluation of each study on exactly the slices this run wrote, and the archive's state (every
    done slice, of every study), scored once when the two are the same slices."""
    own: dict[float, dict[str, DoseEvaluation]] = {}
    state: dict[float, DoseEvaluation] = {}
    doses = list(next(iter(summary.values()))["doses"]) if summary else []
    for dose in doses:
        own[dose], whole = {}, {}
        for key, plan in plans.items():
            path = str(plan.archive.path)
            made = sorted({int(s) for s in summary[key]["doses"][dose]["done"]})
            done = done_slices(plan.archive, dose)
            if made:
                own[dose][key] = evaluate_dose_task(path, dose, made)
            if done:
                whole[key] = own[dose][key] if made == done else evaluate_dose_task(path, dose)
        if whole:
            state[dose] = combine_studies(dose, whole)
    return {dose: found for dose, found in own.items() if found}, state


def track_reconstruct(
    tracker: Tracker,
    store: Catalog,
    plans: Mapping[str, Any],
    summary: Mapping[str, Mapping[str, Any]],
    models: tuple[ResolvedModel, ResolvedModel],
    options: ReconstructOptions,
    seen_in_training: Sequence[str] = (),
    live: LiveRun | None = None,
) -> dict[str, Any]:
    """Score what a reconstruct run wrote (and the archive's whole state apart) from the catalog, then log it into
    the run's `live` MLflow run (started now when None) and end that run: FAILED where slices failed.

    Neither step fails the flow, whose results are stored: a failure comes back as {"error": ...} naming the step
    that failed (evaluation or MLflow logging) and the command that scores and logs the results again, and the run
    ends FAILED. Otherwise: the parent run id and address, and the quality rows of the run's slices."""
    again = f"The results are stored; score and log them with `need evaluate {store.path}`"
    try:
        by_dose, archive_state = score_reconstruct_run(plans, summary)
        evaluations = [combine_studies(dose, found) for dose, found in by_dose.items()]
        first = next(iter(plans.values())).archive
        physics = reconstruct_dose_physics(first, summary, [e.dose for e in evaluations])
    except Exception as err:  # scoring stored results must not turn a good reconstruct run into a failure
        if live is not None:
            live.fail()
        return {"error": f"evaluation failed: {type(err).__name__}: {err}. {again}"}
    try:
        if live is None:
            doses = list(next(iter(summary.values()))["doses"])
            with reconstruct_run(tracker, store, plans, doses, models, options, seen_in_training) as started:
                assert started is not None
                return track_reconstruct(tracker, store, plans, summary, models, options, seen_in_training, started)
        result_keys = {key: study["result_key"] for key, study in summary.items()}
        common = reconstruct_params(store, [p.archive for p in plans.values()], models, options, result_keys)
        common["scored_training_studies"] = len(seen_in_training)
        failed = frozenset(d for study in summary.values() for d, e in study["doses"].items() if e["failed"])
        if failed:
            live.fail()
        table = long_table(by_dose, model_namer(tracker, models))
        log_reconstruct_run(
            tracker, live, str(store.path), evaluations, summary, physics, common, archive_state, table, failed
        )
    except Exception as err:  # nor must logging them
        if live is not None:
            live.fail()
        return {"error": f"MLflow logging failed: {type(err).__name__}: {err}. {again}"}
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    if not evaluations:
        live.fail()
        return {"error": "no slice was reconstructed in this run", "parent_run_id": live.run_id, "url": live.url}
    return {"parent_run_id": live.run_id, "experiment": tracker.experiment, "url": live.url, "rows": rows}

"""Logging a scoring flow's run (reconstruct, evaluate, demo) from the evaluations it computed: a parent run, a run per
dose, under it a run per method. Nothing here evaluates; runs start with the flow (flows.tracking.live).

    <flow> <catalog>             kind <flow>: params of the run, `<method>_<metric>_d<dose>`, quality.csv,
      |                          metric_vs_dose.png, quality_per_slice.json (TABLE_COLUMNS, one row per slice)
      +- dose <d>                kind <flow>-dose: `<method>_<metric>` over the slices the run scored,
         |                       `archive_<method>_<metric>` over every done slice, slice/… per slice, panels
         +- dose <d> · <method>  kind <flow>-method: `psnr`, `ssim`, `rmse_hu`; params method, dose, models
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from flows.tracking.live import LiveRun, live_run
from flows.tracking.registry import REGISTERED_NAMES, registered_version
from flows.tracking.store import Tracker
from need_core.display import comparison_panel, metric_vs_dose_plot
from need_core.reporting import METRICS
from tasks.evaluation import TABLE_COLUMNS, DoseEvaluation, method_models, write_rows_csv
from tasks.models import ResolvedModel


def archive_tags(archive_path: str) -> dict[str, str]:
    """Tags of every run scoring a catalog."""
    return {"need.archive": str(Path(archive_path).resolve())}


def dose_run(live: LiveRun, flow_name: str, archive_path: str, dose: float, common_params: Mapping[str, Any]) -> str:
    """The child run of `dose`, started on first use (a flow starts them with its run, so they are RUNNING while it
    computes)."""
    return live.child(
        dose,
        f"dose {dose:g}",
        f"{flow_name}-dose",
        tags={**archive_tags(archive_path), "need.dose": f"{dose:g}"},
        params={**common_params, "dose": dose},
    )


def log_quality_runs(
    tracker: Tracker,
    flow_name: str,
    archive_path: str,
    evaluations: list[DoseEvaluation],
    common_params: Mapping[str, Any],
    dose_params: Mapping[float, Mapping[str, Any]] | None = None,
    dose_tags: Mapping[float, Mapping[str, str]] | None = None,
    dose_points: Mapping[float, list[tuple[str, float, int]]] | None = None,
    *,
    live: LiveRun | None = None,
    archive_state: Mapping[float, DoseEvaluation] | None = None,
    table: list[dict[str, Any]] | None = None,
    failed_doses: frozenset[float] = frozenset(),
) -> str:
    """Log a flow's evaluations into its run `live` (one is started now when None): per dose a child run (params,
    mean and per-slice metrics, per-slice CSV, panels) and under it a run per method with plain `psnr`/`ssim`/
    `rmse_hu` metrics; in the parent the per-dose summaries `<method>_<metric>_d<dose>`, the metric-vs-dose plot, all
    summary rows and the long-format table `quality_per_slice.json` (`table`). Returns the parent's id.

    `dose_params`, `dose_tags` and `dose_points` (extra (key, value, step) metrics) add to the child of a dose;
    `archive_state` (the whole archive's evaluation per dose) adds `archive_<method>_<metric>` metrics to it; a dose
    in `failed_doses` ends FAILED."""
    if live is None:
        doses = ",".join(f"{e.dose:g}" for e in evaluations)
        with live_run(
            tracker,
            f"{flow_name} {Path(archive_path).name}",
            flow_name,
            source=f"flows/{flow_name}.py",
            description=f"{flow_name} of {Path(archive_path).resolve()} at doses {doses}",
            tags=archive_tags(archive_path),
        ) as started:
            assert started is not None  # a tracker was given
            return log_quality_runs(
                tracker,
                flow_name,
                archive_path,
                evaluations,
                common_params,
                dose_params,
                dose_tags,
                dose_points,
                live=started,
                archive_state=archive_state,
                table=table,
                failed_doses=failed_doses,
            )
    parent = live.run_id
    with tempfile.TemporaryDirectory(prefix="need-tracking-") as scratch:
        if not live.params_logged:
            tracker.log_params(parent, {**common_params, "doses": ",".join(f"{e.dose:g}" for e in evaluations)})
        for evaluation in evaluations:
            dose = evaluation.dose
            child = dose_run(live, flow_name, archive_path, dose, common_params)
            extra = dict((dose_params or {}).get(dose, {}))
            tracker.set_tags(child, (dose_tags or {}).get(dose, {}))
            tracker.log_params(child, {**extra, "n_slices": len(evaluation.slices)})
            metrics = summary_metrics(evaluation)
            if archive_state and dose in archive_state:
                metrics.update(archive_metrics(archive_state[dose]))
            tracker.log_metrics(child, metrics)
            tracker.log_metrics(
                parent, {f"{key}_d{dose:g}": value for key, value in summary_metrics(evaluation).items()}
            )
            one_study = not any("study" in row for row in evaluation.per_slice)
            slice_points = [
                (f"slice/{row['method']}_{name}", row[name], row["slice"])
                for row in (evaluation.per_slice if one_study else [])
                for name in METRICS
            ]
            tracker.log_points(child, slice_points + list((dose_points or {}).get(dose, [])))
            log_dose_artifacts(tracker, child, evaluation, Path(scratch) / f"dose_{dose:g}")
            log_method_runs(live, flow_name, evaluation, child, {**common_params, **extra})
            live.end_child(dose, failed=dose in failed_doses)
        rows = [row for evaluation in evaluations for row in evaluation.summary]
        if rows:
            tracker.log_artifact(parent, metric_vs_dose_plot(rows, Path(scratch) / "metric_vs_dose.png"))
            tracker.log_artifact(parent, write_rows_csv(rows, Path(scratch) / "quality.csv"))
        study_rows = [row for evaluation in evaluations for row in evaluation.study_rows]
        if study_rows:
            tracker.log_artifact(parent, write_rows_csv(study_rows, Path(scratch) / "quality_by_study.csv"))
        if table:
            with warnings.catch_warnings():  # MLflow selects "object" columns, which pandas 3 warns about for str ones
                warnings.filterwarnings("ignore", message="For backward compatibility, 'str' dtypes")
                tracker.client.log_table(parent, pd.DataFrame(table, columns=list(TABLE_COLUMNS)), QUALITY_TABLE)
    return parent


QUALITY_TABLE = "quality_per_slice.json"


def log_dose_artifacts(tracker: Tracker, run_id: str, evaluation: DoseEvaluation, folder: Path) -> None:
    """A dose run's per-slice (and per-study) CSV and comparison panels."""
    dose = evaluation.dose
    tracker.log_artifact(run_id, write_rows_csv(evaluation.per_slice, folder / "per_slice_metrics.csv"))
    if evaluation.study_rows:
        tracker.log_artifact(run_id, write_rows_csv(evaluation.study_rows, folder / "per_study_metrics.csv"))
    for label, images in evaluation.panels.items():
        name = f"slice{label:04d}" if isinstance(label, int) else re.sub(r"[^A-Za-z0-9]+", "_", label)
        panel = comparison_panel(
            images["reference"],
            {m: images[m] for m in images if m != "reference"},
            folder / f"panel_{name}.png",
            title=f"{'slice ' if isinstance(label, int) else ''}{label}, dose {dose:g}",
        )
        tracker.log_artifact(run_id, panel, "panels")


def log_method_runs(
    live: LiveRun, flow_name: str, evaluation: DoseEvaluation, dose_run_id: str, params: Mapping[str, Any]
) -> None:
    """Under a dose run, one finished run per method (kind `<flow>-method`): params and tags `method`, `dose`, the
    models the method depends on, `n_slices`; metrics `psnr`, `ssim`, `rmse_hu` (and `*_study_mean/_std` for a
    cohort), so MLflow's runs table groups and compares them by method, dose and model."""
    dose = evaluation.dose
    for row in evaluation.summary:
        method = str(row["method"])
        models = {f"{kind}_model": model_label(params, kind) for kind in method_models(method)}
        run = live.child(
            (dose, method),
            f"dose {dose:g} · {method}",
            f"{flow_name}-method",
            tags={"need.method": method, "need.dose": f"{dose:g}"},
            params={"method": method, "dose": dose, "n_slices": int(row.get("n_slices", len(evaluation.slices)))}
            | models,
            parent=dose_run_id,
        )
        live.tracker.log_metrics(run, {key: float(value) for key, value in row.items() if key in METHOD_RUN_METRICS})
        live.end_child((dose, method))


def model_label(params: Mapping[str, Any], kind: str) -> str:
    """A model as the method runs and the long table name it: its registered version ("need-spdiff/3"), else its
    checkpoint identity (from a run's `<kind>_model` and `<kind>_identity` params; "" when neither is known)."""
    named = str(params.get(f"{kind}_model", ""))
    if re.fullmatch(rf"{REGISTERED_NAMES[kind]}/\d+", named):
        return named
    return str(params.get(f"{kind}_identity", named))


METHOD_RUN_METRICS = {f"{name}{suffix}" for name in METRICS for suffix in ("", "_std", "_study_mean", "_study_std")} | {
    "n_studies"
}


def archive_metrics(evaluation: DoseEvaluation) -> dict[str, float]:
    """The whole archive's state at a dose, apart from a run's own slices: `archive_<method>_<metric>` and
    `archive_n_slices`."""
    return {f"archive_{key}": value for key, value in summary_metrics(evaluation).items()} | {
        "archive_n_slices": float(len(evaluation.slices))
    }


def model_namer(tracker: Tracker, known: Sequence[ResolvedModel] = ()) -> Callable[[str, str], str]:
    """`name(kind, identity)`: the registered version ("need-spdiff/3") of a checkpoint, else its identity; `known`
    models name themselves, others are looked up once each in the registry."""
    names = {(model.kind, model.identity): model.registered or model.identity for model in known}

    def name(kind: str, identity: str) -> str:
        if (kind, identity) not in names:
            names[kind, identity] = registered_version(tracker, kind, identity) or identity
        return names[kind, identity]

    return name


def summary_metrics(evaluation: DoseEvaluation) -> dict[str, float]:
    """`<method>_<metric>` (mean over slices) and, for a cohort, `<method>_<metric>_study_mean/_study_std` and
    `n_studies`."""
    metrics: dict[str, float] = {}
    for row in evaluation.summary:
        for name in METRICS:
            metrics[f"{row['method']}_{name}"] = row[name]
            for suffix in ("_study_mean", "_study_std"):
                if f"{name}{suffix}" in row:
                    metrics[f"{row['method']}_{name}{suffix}"] = row[f"{name}{suffix}"]
        if "n_studies" in row:
            metrics["n_studies"] = float(row["n_studies"])
    return metrics

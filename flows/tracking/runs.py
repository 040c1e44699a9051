"""Logging runs: a reconstruct, evaluate or demo run (a parent run and a run per dose) from the evaluations the flow
computed, and a training run with its loss curve, validation samples and registered model. Nothing here evaluates."""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows.tracking.registry import CHECKSUM_TAG, register_checkpoint, registered_version
from flows.tracking.store import Tracker
from need_core.device import resolve_device
from need_core.display import comparison_panel, metric_vs_dose_plot
from storage.archive import Archive
from storage.catalog import Catalog
from tasks.evaluation import METRICS, DoseEvaluation, write_rows_csv
from tasks.models import ResolvedModel
from tasks.reconstruct import ReconstructOptions


def slice_ranges(slices: list[int]) -> str:
    """Compact text of slice indices: [0, 1, 2, 5] -> '0-2,5' ('' when none)."""
    parts, ordered = [], sorted(set(slices))
    start = previous = None
    for index in ordered + [None]:
        if start is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ",".join(parts)


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def log_quality_runs(
    tracker: Tracker,
    flow_name: str,
    archive_path: str,
    evaluations: list[DoseEvaluation],
    common_params: Mapping[str, Any],
    dose_params: Mapping[float, Mapping[str, Any]] | None = None,
    dose_tags: Mapping[float, Mapping[str, str]] | None = None,
    dose_points: Mapping[float, list[tuple[str, float, int]]] | None = None,
) -> str:
    """A parent run for one flow run and a child run per dose: params, mean and per-slice metrics, per-slice CSV,
    comparison panels, and in the parent the metric-vs-dose plot and all summary rows. Returns the parent's id.

    `dose_params`, `dose_tags` and `dose_points` (extra (key, value, step) metrics) add to the child of a dose."""
    tags = {"need.archive": str(Path(archive_path).resolve())}
    commit = git_commit()
    if commit:
        tags["need.git_commit"] = commit
    with (
        tracker.run(f"{flow_name} {Path(archive_path).name}", flow_name, tags=tags) as parent,
        tempfile.TemporaryDirectory(prefix="need-tracking-") as scratch,
    ):
        tracker.log_params(parent, {**common_params, "doses": ",".join(f"{e.dose:g}" for e in evaluations)})
        for evaluation in evaluations:
            dose = evaluation.dose
            child_tags = {**tags, "need.dose": f"{dose:g}", **(dose_tags or {}).get(dose, {})}
            with tracker.run(f"dose {dose:g}", f"{flow_name}-dose", parent_id=parent, tags=child_tags) as child:
                tracker.log_params(
                    child,
                    {
                        **common_params,
                        "dose": dose,
                        **(dose_params or {}).get(dose, {}),
                        "n_slices": len(evaluation.slices),
                    },
                )
                tracker.log_metrics(child, summary_metrics(evaluation))
                one_study = not any("study" in row for row in evaluation.per_slice)
                slice_points = [
                    (f"slice/{row['method']}_{name}", row[name], row["slice"])
                    for row in (evaluation.per_slice if one_study else [])
                    for name in METRICS
                ]
                tracker.log_points(child, slice_points + list((dose_points or {}).get(dose, [])))
                folder = Path(scratch) / f"dose_{dose:g}"
                tracker.log_artifact(child, write_rows_csv(evaluation.per_slice, folder / "per_slice_metrics.csv"))
                if evaluation.study_rows:
                    tracker.log_artifact(child, write_rows_csv(evaluation.study_rows, folder / "per_study_metrics.csv"))
                for label, images in evaluation.panels.items():
                    name = f"slice{label:04d}" if isinstance(label, int) else re.sub(r"[^A-Za-z0-9]+", "_", label)
                    panel = comparison_panel(
                        images["reference"],
                        {m: images[m] for m in images if m != "reference"},
                        folder / f"panel_{name}.png",
                        title=f"{'slice ' if isinstance(label, int) else ''}{label}, dose {dose:g}",
                    )
                    tracker.log_artifact(child, panel, "panels")
        rows = [row for evaluation in evaluations for row in evaluation.summary]
        tracker.log_artifact(parent, metric_vs_dose_plot(rows, Path(scratch) / "metric_vs_dose.png"))
        tracker.log_artifact(parent, write_rows_csv(rows, Path(scratch) / "quality.csv"))
        study_rows = [row for evaluation in evaluations for row in evaluation.study_rows]
        if study_rows:
            tracker.log_artifact(parent, write_rows_csv(study_rows, Path(scratch) / "quality_by_study.csv"))
    return parent


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


MAX_LISTED_STUDIES = 40  # MLflow params hold a few kB: longer study lists go to the per-study tables only


def catalog_params(catalog: Catalog, archives: list[Archive]) -> dict[str, Any]:
    """Params of every run that scores studies of a catalog: which studies (digest, count, keys), their physics, and
    for a single study its geometry and settings hash."""
    keys = sorted(archive.path.name for archive in archives)
    rows = [row for row in catalog.rows() if row.study in keys] if not catalog.legacy else catalog.rows()
    params: dict[str, Any] = {
        "catalog_digest": catalog.digest(rows),
        "n_studies": len(archives),
        "studies": ",".join(keys[:MAX_LISTED_STUDIES]) + (",..." if len(keys) > MAX_LISTED_STUDIES else ""),
        "physics": archives[0].settings["physics"],
    }
    if len(archives) == 1:
        params["geometry"] = archives[0].settings["geometry"]
        params["archive_settings_hash"] = archives[0].settings_hash
    return params


def reconstruct_params(
    catalog: Catalog,
    archives: list[Archive],
    models: tuple[ResolvedModel, ResolvedModel],
    options: ReconstructOptions,
    result_keys: Mapping[str, str],
) -> dict[str, Any]:
    """Params shared by a reconstruct run and its dose runs: studies, models (name/version or path, identity),
    physics, sampling options, chunk size, device, and the result key (of a single study) or their digest."""
    keys = sorted(result_keys.values())
    params: dict[str, Any] = {
        **catalog_params(catalog, archives),
        "chunk_slices": options.chunk_slices,
        "device": options.device,
        "device_resolved": str(resolve_device(options.device)),
        "seed": options.seed,
        "guidance": options.guidance.to_dict(),
        "batch_size": options.batch_size,
        "result_key": keys[0] if len(keys) == 1 else f"{len(keys)} study keys, {keys[0].rsplit('/', 1)[0]}",
    }
    for model in models:
        params[f"{model.kind}_model"] = model.registered or model.reference
        params[f"{model.kind}_identity"] = model.identity
    return params


def log_reconstruct_run(
    tracker: Tracker,
    catalog_path: str,
    evaluations: list[DoseEvaluation],
    summary: Mapping[str, Mapping[str, Any]],
    dose_physics: Mapping[float, Mapping[str, Any]],
    common_params: Mapping[str, Any],
) -> str:
    """Log a reconstruct run (parent) and its dose runs (children); return the parent's id.

    Besides the evaluations, a dose run records `dose_physics` (the incident count and SPDiff start step the flow
    worked out), the DGDiff start steps of the slices this run recomputed, and which slices (of which studies) it
    recomputed or failed."""
    dose_params, dose_tags, dose_points = {}, {}, {}
    one_study = len(summary) == 1
    for evaluation in evaluations:
        dose = evaluation.dose
        entries = {key: study["doses"][dose] for key, study in summary.items()}
        steps = sorted(k for entry in entries.values() for k in entry.get("dgdiff_start_steps", {}).values())
        dose_params[dose] = {
            **dose_physics[dose],
            "dgdiff_start_steps": f"{steps[0]}-{steps[-1]}" if steps else "none recomputed",
        }
        if one_study:
            (entry,) = entries.values()
            dose_points[dose] = [
                ("slice/dgdiff_start_step", k, s) for s, k in entry.get("dgdiff_start_steps", {}).items()
            ]
        dose_tags[dose] = {
            "need.recomputed_slices": _per_study_ranges({k: e.get("done", []) for k, e in entries.items()}, one_study),
            "need.failed_slices": _per_study_ranges(
                {k: list(e.get("failed", {})) for k, e in entries.items()}, one_study
            ),
        }
    return log_quality_runs(
        tracker, "reconstruct", catalog_path, evaluations, common_params, dose_params, dose_tags, dose_points
    )


def _per_study_ranges(slices: Mapping[str, list[int]], one_study: bool) -> str:
    """'0-5' for one study; 'study-a: 0-5; study-b: 2' for several (studies without slices left out); 'none'."""
    if one_study:
        return slice_ranges(next(iter(slices.values()))) or "none"
    text = "; ".join(f"{key}: {slice_ranges(values)}" for key, values in slices.items() if values)
    return text[:4900] or "none"


def evaluation_dose_params(tracker: Tracker, evaluation: DoseEvaluation, incident_count: float) -> dict[str, Any]:
    """Params of an evaluate dose run: what produced the stored results (ledger keys) and, where the model
    identities in them are registered, the model names and versions."""
    params: dict[str, Any] = {"incident_count": incident_count, "result_key": ";".join(evaluation.produced_by)}
    for kind, identity in evaluation.model_identities.items():
        params[f"{kind}_model"] = registered_version(tracker, kind, identity) or f"unregistered {identity}"
        params[f"{kind}_identity"] = identity
    return params


class TrainingRunLog:
    """The MLflow run of one training, continued by a resumed training; every method does nothing without a tracker."""

    def __init__(
        self,
        tracker: Tracker | None,
        kind: str,
        run_id: str | None,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
    ) -> None:
        self.tracker, self.kind = tracker, kind
        self.run_id: str | None = None
        if tracker is None:
            return
        resumed = run_id is not None and tracker.has_run(run_id)
        self.run_id = run_id if resumed else tracker.start_run(name, f"train-{kind}")
        if resumed:
            tracker.client.update_run(self.run_id, status="RUNNING")
        tracker.log_params(self.run_id, params)
        tracker.set_tags(self.run_id, {**tags, "need.resumed": str(resumed).lower()})

    def log_progress(self, step: int, losses: list[tuple[int, float]], validation: Any, scratch: Path) -> None:
        """The loss curve since the last call, validation metrics at `step`, and a sample panel."""
        if self.tracker is None:
            return
        points = [("loss", loss, s) for s, loss in losses] + [(k, v, step) for k, v in validation.metrics.items()]
        self.tracker.log_points(self.run_id, points)
        sample = validation.sample
        panel = comparison_panel(
            sample["reference"],
            {"input": sample["input"], self.kind: sample["model"]},
            scratch / f"step_{step:07d}.png",
            title=f"{self.kind} validation, step {step}",
        )
        self.tracker.log_artifact(self.run_id, panel, "samples")

    def finish(self, checkpoint: Path, digest: str) -> str | None:
        """Register `checkpoint` as a new version of need-<kind> (once per checkpoint digest) and end the run."""
        if self.tracker is None:
            return None
        tags = self.tracker.client.get_run(self.run_id).data.tags
        version = tags.get("need.model_version") if tags.get(CHECKSUM_TAG) == digest else None
        if version is None:
            version = register_checkpoint(self.tracker, self.run_id, checkpoint, self.kind, digest)
            self.tracker.set_tags(self.run_id, {"need.model_version": version, CHECKSUM_TAG: digest})
        self.tracker.client.set_terminated(self.run_id, status="FINISHED")
        return version

    def fail(self) -> None:
        """Mark the run failed (a later --resume continues it)."""
        if self.tracker is not None and self.run_id is not None:
            self.tracker.client.set_terminated(self.run_id, status="FAILED")

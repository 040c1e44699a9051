"""Run contents: the params of reconstruct and evaluate runs, a reconstruct run's dose runs (flows.tracking.
quality_runs logs the evaluations), and a training run with its loss curve, validation samples and registered model.
Nothing here evaluates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from flows.tracking.live import LiveRun, prefect_flow_run_tags, source_tags, system_metrics
from flows.tracking.live import git_commit as git_commit  # re-exported: flows.tracking.runs.git_commit
from flows.tracking.quality_runs import log_quality_runs as log_quality_runs  # re-exported for flows.demo
from flows.tracking.registry import CHECKSUM_TAG, register_checkpoint, registered_version
from flows.tracking.store import Tracker
from need_core.device import resolve_device
from need_core.display import comparison_panel
from storage.archive import Archive
from storage.catalog import Catalog
from storage.ledger import slice_ranges
from tasks.evaluation import DoseEvaluation
from tasks.models import ResolvedModel
from tasks.reconstruct import ReconstructOptions

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
    physics, the sampling profile (name, per-dose settings), chunk size, device, and the result key (of a single
    study) or their digest."""
    keys = sorted(result_keys.values())
    params: dict[str, Any] = {
        **catalog_params(catalog, archives),
        "chunk_slices": options.chunk_slices,
        "device": options.device,
        "device_resolved": str(resolve_device(options.device)),
        "seed": options.seed,
        "sampling": options.sampling.name,
        "sampling_settings": options.sampling.result_settings() or "the spec's at every dose",
        "batch_size": options.batch_size,
        "result_key": keys[0] if len(keys) == 1 else f"{len(keys)} study keys, {keys[0].rsplit('/', 1)[0]}",
    }
    for model in models:
        params[f"{model.kind}_model"] = model.registered or model.reference
        params[f"{model.kind}_identity"] = model.identity
    return params


def log_reconstruct_run(
    tracker: Tracker,
    live: LiveRun,
    catalog_path: str,
    evaluations: list[DoseEvaluation],
    summary: Mapping[str, Mapping[str, Any]],
    dose_physics: Mapping[float, Mapping[str, Any]],
    common_params: Mapping[str, Any],
    archive_state: Mapping[float, DoseEvaluation],
    table: list[dict[str, Any]],
    failed_doses: frozenset[float],
) -> str:
    """Log a reconstruct run's evaluations into its live run (parent) and dose runs; return the parent's id.

    Besides the evaluations (of the slices this run wrote) and the archive's state, a dose run records
    `dose_physics` (the incident count and SPDiff start step the flow worked out), the DGDiff start steps of the
    slices this run recomputed, and which slices (of which studies) it recomputed or failed: every dose, also one
    where nothing was written."""
    dose_params, dose_points = {}, {}
    one_study = len(summary) == 1
    for dose in next(iter(summary.values()))["doses"]:
        entries = {key: study["doses"][dose] for key, study in summary.items()}
        if dose in live.children:
            live.tracker.set_tags(
                live.children[dose],
                {
                    "need.recomputed_slices": per_study_ranges({k: e.get("done", []) for k, e in entries.items()}),
                    "need.failed_slices": per_study_ranges({k: list(e.get("failed", {})) for k, e in entries.items()}),
                },
            )
        steps = sorted(k for entry in entries.values() for k in entry.get("dgdiff_start_steps", {}).values())
        dose_params[dose] = {
            **dose_physics.get(dose, {}),
            "dgdiff_start_steps": f"{steps[0]}-{steps[-1]}" if steps else "none recomputed",
        }
        if one_study:
            (entry,) = entries.values()
            dose_points[dose] = [
                ("slice/dgdiff_start_step", k, s) for s, k in entry.get("dgdiff_start_steps", {}).items()
            ]
    return log_quality_runs(
        tracker,
        "reconstruct",
        catalog_path,
        evaluations,
        common_params,
        {dose: dose_params[dose] for dose in (e.dose for e in evaluations)},
        None,
        dose_points,
        live=live,
        archive_state=archive_state,
        table=table,
        failed_doses=failed_doses,
    )


def per_study_ranges(slices: Mapping[str, list[int]]) -> str:
    """'0-5' for one study; 'study-a: 0-5; study-b: 2' for several (studies without slices left out); 'none'."""
    if len(slices) == 1:
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
        self.monitor: SystemMetricsMonitor | None = None
        if tracker is None:
            return
        resumed = run_id is not None and tracker.has_run(run_id)
        run = run_id if run_id is not None and resumed else tracker.start_run(name, f"train-{kind}")
        self.run_id = run
        if resumed:
            tracker.client.update_run(run, status="RUNNING")
        tracker.log_params(run, params)
        description = f"{name} on {tags.get('need.archive', 'a catalog')}, {tags.get('need.target_steps', '?')} steps"
        tracker.set_tags(
            run,
            {
                **source_tags("flows/train.py", description),
                **prefect_flow_run_tags(),
                **tags,
                "need.resumed": str(resumed).lower(),
            },
        )
        self.monitor = system_metrics(tracker, run, resume=resumed)

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
        if self.monitor is not None:
            self.monitor.finish()
        self.tracker.client.set_terminated(self.run_id, status="FINISHED")
        return version

    def fail(self) -> None:
        """Mark the run failed (a later --resume continues it)."""
        if self.tracker is not None and self.run_id is not None:
            if self.monitor is not None:
                self.monitor.finish()
            self.tracker.client.set_terminated(self.run_id, status="FAILED")

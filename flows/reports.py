"""What a flow run shows in Prefect: a name that says what runs, a progress artifact updated as chunks finish, the
quality table and the failed slices as artifacts linking the MLflow run, and per-stage timings in the flow log.

Builders of text and rows are plain functions (tested without Prefect); `publish_*` and `ChunkProgress` create the
artifacts of the current flow run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from need_core.reporting import format_quality_table
from storage.ledger import slice_ranges

STAGES = ("spdiff", "fbp", "dgdiff", "io")
"""The stages a reconstruct chunk times (tasks.reconstruct.ChunkReport.seconds)."""


def catalog_label(catalog: str | Path) -> str:
    """A catalog's folder name without `.zarr`."""
    return Path(catalog).name.removesuffix(".zarr") or str(catalog)


def doses_label(doses: Iterable[float] | None) -> str:
    """Doses as `0.25,0.1` ("all doses" when None)."""
    return ",".join(f"{float(d):g}" for d in doses) if doses else "all doses"


def selection_label(parameters: Mapping[str, Any]) -> str:
    """Which studies or slices of the catalog a run chose ("" for all)."""
    if parameters.get("slices"):
        return f" · slices {slice_ranges(list(parameters['slices']))}"
    if parameters.get("studies"):
        return f" · {len(parameters['studies'])} studies"
    if parameters.get("split"):
        return f" · {parameters['split']} split"
    return ""


def run_name(flow: str, parameters: Mapping[str, Any]) -> str:
    """`<flow> <catalog> · <doses>[ · selection]`, from a flow's parameters."""
    return (
        f"{flow} {catalog_label(parameters.get('catalog', '?'))} · {doses_label(parameters.get('doses'))}"
        f"{selection_label(parameters)}"
    )


def reconstruct_run_name() -> str:
    """The reconstruct flow's run name (Prefect's `flow_run_name`), e.g. `reconstruct head_ct · 0.25,0.1`."""
    return run_name("reconstruct", flow_run.parameters)


def evaluate_run_name() -> str:
    """The evaluate flow's run name, e.g. `evaluate head_ct · all doses`."""
    return run_name("evaluate", flow_run.parameters)


def ingest_run_name() -> str:
    """The ingest flow's run name, e.g. `ingest head_ct · 0.5,0.25,0.1`."""
    return run_name("ingest", flow_run.parameters)


def demo_run_name() -> str:
    """The demo flow's run name, e.g. `demo head_ct · 0.5,0.25,0.1,0.05`."""
    return f"demo head_ct · {doses_label(flow_run.parameters.get('doses'))}"


def calibrate_run_name() -> str:
    """The calibrate flow's run name, e.g. `calibrate head_ct · 0.5,0.25,0.1,0.05` (its default doses when unnamed)."""
    from tasks.calibration import CALIBRATION_DOSES  # loads torch: only inside a calibrate run

    parameters = dict(flow_run.parameters)
    parameters["doses"] = parameters.get("doses") or list(CALIBRATION_DOSES)
    return run_name("calibrate", parameters)


def train_run_name() -> str:
    """The train flow's run name, e.g. `train spdiff cpu · head_ct`."""
    parameters = flow_run.parameters
    model, profile = parameters.get("model", "spdiff"), parameters.get("profile", "cpu")
    return f"train {model} {profile} · {catalog_label(parameters.get('catalog', '?'))}"


def nightly_run_name() -> str:
    """The nightly flow's run name, e.g. `nightly incoming -> cohort · 0.25`."""
    parameters = flow_run.parameters
    source = catalog_label(parameters.get("drop_folder", "?"))
    return (
        f"nightly {source} -> {catalog_label(parameters.get('catalog', '?'))} · {doses_label(parameters.get('doses'))}"
    )


def pacs_run_name() -> str:
    """The PACS flows' run name, e.g. `pull 127.0.0.1:8042 -> pacs · since 20261130`."""
    parameters = flow_run.parameters
    server = urlparse(str(parameters.get("url", "?"))).netloc or "?"
    chosen = (
        "one study"
        if parameters.get("study")
        else f"since {parameters['since']}"
        if parameters.get("since")
        else "new studies"
    )
    return f"{flow_run.flow_name} {server} -> {catalog_label(parameters.get('catalog', '?'))} · {chosen}"


def artifact_key(flow: str, what: str, catalog: str | Path) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes): `<flow>-<what>-<catalog>`, so each catalog's
    artifacts form one history across runs."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{flow}-{what}-{catalog_label(catalog)}".lower()).strip("-")[:100]


def mlflow_line(tracking: Mapping[str, Any]) -> str:
    """Where the run went in MLflow, as Markdown."""
    if tracking.get("url"):
        return f"MLflow run: [{tracking.get('parent_run_id', 'run')}]({tracking['url']})"
    if tracking.get("disabled"):
        return "MLflow: tracking disabled for this run."
    return f"MLflow: {tracking.get('error') or tracking.get('noop') or 'nothing logged'}"


def quality_markdown(title: str, rows: Sequence[Mapping[str, Any]], tracking: Mapping[str, Any], note: str = "") -> str:
    """A flow's quality report: the dose × method table of `rows` (means over the run's slices) and the MLflow
    link."""
    table = format_quality_table(list(rows)) if rows else "_No slice was scored._"
    return "\n\n".join(part for part in (f"# {title}", note, table, mlflow_line(tracking)) if part)


def failed_rows(summary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per failed slice of a reconstruct summary: study, dose, slice, error."""
    return [
        {"study": key, "dose": float(dose), "slice": int(s), "error": str(error)[:500]}
        for key, study in summary.items()
        for dose, entry in study["doses"].items()
        for s, error in sorted(entry["failed"].items())
    ]


def publish_quality(
    flow: str,
    catalog: str | Path,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    tracking: Mapping[str, Any],
    failed: list[dict[str, Any]] | None = None,
    note: str = "",
) -> None:
    """The quality Markdown artifact of the current flow run and, when slices failed, a table artifact of them
    (both naming the MLflow run)."""
    create_markdown_artifact(
        quality_markdown(title, rows, tracking, note),
        key=artifact_key(flow, "quality", catalog),
        description=f"{title}. {mlflow_line(tracking)}",
    )
    if failed:
        create_table_artifact(
            failed,
            key=artifact_key(flow, "failed-slices", catalog),
            description=f"{len(failed)} failed slice(s); a rerun of the same command retries only them. "
            f"{mlflow_line(tracking)}",
        )


class ChunkProgress:
    """A progress artifact of the flow run: the share of the run's slice-doses whose chunk has finished."""

    def __init__(self, total: int, description: str) -> None:
        self.total, self.finished = max(total, 1), 0
        self.description = description
        artifact = create_progress_artifact(0.0, description=description)
        assert isinstance(artifact, UUID)  # called from a flow's thread, it returns the id, not a coroutine
        self.artifact = artifact

    def advance(self, slices: int) -> None:
        """Count `slices` more slice-doses as finished (done or failed)."""
        self.finished += slices
        update_progress_artifact(self.artifact, min(100.0, 100.0 * self.finished / self.total))


def stage_lines(summary: Mapping[str, Mapping[str, Any]], wall_s: float) -> list[str]:
    """One log line per reconstruct stage: seconds summed over the run's chunks and the share of their task time,
    then the chunks' task time against the flow's wall time."""
    entries = [entry for study in summary.values() for entry in study["doses"].values()]
    seconds = {stage: sum(entry["seconds"].get(stage, 0.0) for entry in entries) for stage in STAGES}
    task_s = sum(entry.get("task_seconds", 0.0) for entry in entries)
    chunks = sum(entry.get("chunks", 0) for entry in entries)
    lines = [
        f"stage {stage:<6} {value:8.2f} s  ({100 * value / task_s if task_s else 0:4.1f}% of task time)"
        for stage, value in seconds.items()
    ]
    lines.append(f"tasks  {task_s:8.2f} s over {chunks} chunk(s); flow compute wall time {wall_s:.2f} s")
    return lines


def report_reconstruct(
    catalog: str | Path, summary: Mapping[str, Mapping[str, Any]], tracking: Mapping[str, Any], compute_s: float
) -> None:
    """The end of a reconstruct run in Prefect: a log line per stage, the tracking outcome, the quality artifact
    (means over the slices this run wrote) and the failed-slices table."""
    logger = get_run_logger()
    for line in stage_lines(summary, compute_s):
        logger.info("%s", line)
    if "error" in tracking:
        logger.warning("%s", tracking["error"])
    rows = list(tracking.get("rows", []))
    note = "Means over the slices this run wrote." if rows else ""
    title = f"reconstruct {catalog_label(catalog)}"
    publish_quality("reconstruct", catalog, title, rows, tracking, failed_rows(summary), note=note)

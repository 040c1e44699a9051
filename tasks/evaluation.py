"""Image quality of stored results, always read back from the archive (NEED_SPEC.md §5): per slice, per dose, plots.

Because metrics come from the archive and never from a flow's memory, `need evaluate ARCHIVE` can compute and
log them again at any time (for example after tracking failed during a reconstruct run).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from need_core.reporting import METRICS, metric_values, summary_row
from storage.archive import Archive, open_archive

METHODS = ("fbp_ld", "spdiff_fbp", "need")
PANEL_COUNT = 3
METHOD_MODELS = {
    "spdiff_fbp": ("spdiff",),
    "need": ("spdiff", "dgdiff"),
    "dgdiff_only": ("dgdiff",),
    "redcnn": ("redcnn",),
}
"""The models each method's images depend on, by method family (FBP, Hann FBP and the classical denoisers `nlm`, `tv`
and `bm3d` depend on none)."""


def method_family(method: str) -> str:
    """`redcnn_25` -> `redcnn`: the family of a method named after one of its settings."""
    return "redcnn" if method.startswith("redcnn_") else method


def method_models(method: str) -> tuple[str, ...]:
    """The model kinds `method`'s images depend on (METHOD_MODELS)."""
    return METHOD_MODELS.get(method_family(method), ())


TABLE_COLUMNS = ("study", "dose", "method", "slice", "psnr", "ssim", "rmse_hu", "spdiff_model", "dgdiff_model")
"""The long-format quality table: one row per study, dose, method and slice."""


class NothingToEvaluate(ValueError):
    """No slice of the archive is reconstructed (done in the ledger) at the requested dose."""


@dataclass
class DoseEvaluation:
    """Quality of every method at one dose: per-slice rows, one summary row per method, and images for panels."""

    dose: float
    slices: list[int]
    per_slice: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    panels: dict[int | str, dict[str, np.ndarray]] = field(default_factory=dict)
    produced_by: list[str] = field(default_factory=list)
    study_rows: list[dict[str, Any]] = field(default_factory=list)
    """Per study and method: the study's mean metrics (filled by combine_studies)."""
    slice_producers: dict[int, str] = field(default_factory=dict)
    """Per scored slice of a single study: the ledger key of what produced it."""

    @property
    def model_identities(self) -> dict[str, str]:
        """Model kind -> checkpoint identity of the models named in the ledger keys `produced_by`."""
        return model_identities(" ".join(self.produced_by))


def model_identities(producers: str) -> dict[str, str]:
    """Model kind -> checkpoint identity named in ledger keys (`spdiff:<identity>/dgdiff:<identity>/…`)."""
    return dict(re.findall(r"(spdiff|dgdiff):([0-9a-f]{16})", producers))


def done_slices(archive: Archive, dose: float) -> list[int]:
    """Slices whose reconstruction is marked done at `dose`."""
    states = archive.ledger("reconstruct", dose=dose)
    return [int(i) for i in np.flatnonzero(states == archive.DONE)]


def pick_panel_slices(slices: list[int], count: int = PANEL_COUNT) -> list[int]:
    """Up to `count` evenly spread slices of `slices` (first, middle, last for three)."""
    if len(slices) <= count:
        return list(slices)
    positions = np.linspace(0, len(slices) - 1, count).round().astype(int)
    return [slices[i] for i in sorted(set(positions.tolist()))]


def read_slices(archive: Archive, var: str, slices: list[int], dose: float | None = None) -> np.ndarray:
    """The given slices of `var` (one read of their span, then a selection)."""
    lo, hi = min(slices), max(slices) + 1
    block = archive.read(var, lo, hi, dose=dose)
    return block[[s - lo for s in slices]]


def per_slice_rows(
    method: str, dose: float, slices: list[int], values: Mapping[str, np.ndarray]
) -> list[dict[str, Any]]:
    """One row per slice: slice, method, dose, psnr, ssim, rmse_hu, from `need_core.reporting.metric_values`."""
    return [
        {"slice": s, "method": method, "dose": float(dose), **{name: float(values[name][i]) for name in METRICS}}
        for i, s in enumerate(slices)
    ]


def evaluate_dose(
    archive_path: str,
    dose: float,
    slices: list[int] | None = None,
    panel_count: int = PANEL_COUNT,
    baselines: Mapping[str, np.ndarray] | None = None,
    panel_slices: list[int] | None = None,
) -> DoseEvaluation:
    """Score LDCT FBP, SPDiff→FBP and NEED against the normal-dose image `fbp_nd` on the done slices at `dose`
    (or on `slices`, which must all be done). `baselines` adds methods computed elsewhere (name → images of the
    same slices, in order); they are listed after LDCT FBP. Panels show `panel_slices` or `panel_count` spread ones."""
    archive = open_archive(archive_path)
    done = done_slices(archive, dose)
    if slices is None:
        slices = done
    else:
        missing = sorted(set(slices) - set(done))
        if missing:
            raise NothingToEvaluate(f"slices {missing} are not reconstructed at dose {dose:g} in {archive.path}")
        slices = sorted(set(int(s) for s in slices))
    if not slices:
        raise NothingToEvaluate(
            f"no slice of {archive.path} is reconstructed at dose {dose:g}: run `need reconstruct` first"
        )
    reference = read_slices(archive, "fbp_nd", slices)
    stored = {method: read_slices(archive, method, slices, dose=dose) for method in METHODS}
    for name, values in (baselines or {}).items():
        if name in stored or np.shape(values) != reference.shape:
            raise ValueError(f"baseline {name!r} must be a new method with images of shape {reference.shape}")
    images = {"fbp_ld": stored["fbp_ld"], **(baselines or {}), **{m: stored[m] for m in METHODS if m != "fbp_ld"}}
    scores = {method: metric_values(values, reference) for method, values in images.items()}  # once per method
    rows = [row for method, values in scores.items() for row in per_slice_rows(method, dose, slices, values)]
    summary = [summary_row(method, dose, values) for method, values in scores.items()]
    shown = panel_slices if panel_slices is not None else pick_panel_slices(slices, panel_count)
    panels = {
        s: {"reference": reference[slices.index(s)], **{m: images[m][slices.index(s)] for m in images}} for s in shown
    }
    producers = archive.produced_by("reconstruct", dose=dose)
    return DoseEvaluation(
        dose=float(dose),
        slices=slices,
        per_slice=rows,
        summary=summary,
        panels=panels,
        produced_by=sorted({producers[s] for s in slices}),
        slice_producers={s: producers[s] for s in slices},
    )


evaluate_dose_task = task(name="evaluate-dose", task_run_name="evaluate dose {dose}")(evaluate_dose)


def write_rows_csv(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write dict rows (same keys) as CSV."""
    rows = list(rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


STUDY_STATS = ("psnr", "ssim", "rmse_hu")


def long_table(
    by_dose: Mapping[float, Mapping[str, DoseEvaluation]], model_name: Callable[[str, str], str]
) -> list[dict[str, Any]]:
    """The TABLE_COLUMNS rows of single-study evaluations (dose -> study key -> evaluation): per slice, the models
    its method depends on as `model_name(kind, identity)` (a registered version or the checkpoint identity), ""
    for a model the method does not use."""
    rows = []
    for dose, studies in by_dose.items():
        for key, evaluation in studies.items():
            for row in evaluation.per_slice:
                made_by = model_identities(evaluation.slice_producers.get(row["slice"], ""))
                used = method_models(row["method"])
                models = {
                    f"{kind}_model": model_name(kind, made_by[kind]) if kind in used and kind in made_by else ""
                    for kind in ("spdiff", "dgdiff")
                }
                rows.append(
                    {"study": key, "dose": float(dose), "method": row["method"], "slice": int(row["slice"])}
                    | {name: row[name] for name in METRICS}
                    | models
                )
    return rows


def combine_studies(dose: float, evaluations: Mapping[str, DoseEvaluation]) -> DoseEvaluation:
    """The cohort's quality at one dose from each study's evaluation: per-slice rows tagged with their study, per
    method the mean ± std over every slice (pooled) and over the studies' means (`*_study_mean`, `*_study_std`),
    per-study rows, and panels of up to PANEL_COUNT studies. A single study keeps its own rows and panels."""
    if not evaluations:
        raise NothingToEvaluate(f"no study is reconstructed at dose {dose:g}")
    study_rows = [{"study": key, **row} for key, e in evaluations.items() for row in e.summary]
    if len(evaluations) == 1:
        (only,) = evaluations.values()
        summary = [{**row, **_study_stats([row]), "n_studies": 1} for row in only.summary]
        return DoseEvaluation(
            dose, only.slices, only.per_slice, summary, only.panels, only.produced_by, study_rows, only.slice_producers
        )
    per_slice = [{"study": key, **row} for key, e in evaluations.items() for row in e.per_slice]
    summary = []
    for method in dict.fromkeys(row["method"] for row in per_slice):
        rows = [row for row in per_slice if row["method"] == method]
        pooled: dict[str, Any] = {"method": method, "dose": float(dose)}
        for name in STUDY_STATS:
            values = np.asarray([row[name] for row in rows], dtype=np.float64)
            pooled[name], pooled[f"{name}_std"] = float(values.mean()), float(values.std())
        of_studies = [row for row in study_rows if row["method"] == method]
        summary.append({**pooled, "n_slices": len(rows), **_study_stats(of_studies), "n_studies": len(of_studies)})
    shown = list(evaluations)[:PANEL_COUNT]
    panels: dict[int | str, dict[str, np.ndarray]] = {}
    for key in shown:
        labels = list(evaluations[key].panels)
        if labels:
            middle = labels[len(labels) // 2]
            panels[f"{key} slice {middle}"] = evaluations[key].panels[middle]
    producers = sorted({p for e in evaluations.values() for p in e.produced_by})
    slices = [s for e in evaluations.values() for s in e.slices]
    return DoseEvaluation(float(dose), slices, per_slice, summary, panels, producers, study_rows)


def _study_stats(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and std over studies of each study's mean metric."""
    stats = {}
    for name in STUDY_STATS:
        values = np.asarray([row[name] for row in rows], dtype=np.float64)
        stats[f"{name}_study_mean"], stats[f"{name}_study_std"] = float(values.mean()), float(values.std())
    return stats

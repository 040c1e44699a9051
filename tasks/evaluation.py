"""Image quality of stored results, always read back from the archive (NEED_SPEC.md §5): per slice, per dose, plots.

Because metrics come from the archive and never from a flow's memory, `need evaluate ARCHIVE` can compute and
log them again at any time (for example after tracking failed during a reconstruct run).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from need_core.metrics import psnr, rmse, ssim
from need_core.reporting import quality_row
from storage.archive import Archive, open_archive

METHODS = ("fbp_ld", "spdiff_fbp", "need")
METRICS = {"psnr": psnr, "ssim": ssim, "rmse_hu": rmse}
PANEL_COUNT = 3


class NothingToEvaluate(ValueError):
    """No slice of the archive is reconstructed (done in the ledger) at the requested dose."""


@dataclass
class DoseEvaluation:
    """Quality of every method at one dose: per-slice rows, one summary row per method, and images for panels."""

    dose: float
    slices: list[int]
    per_slice: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    panels: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    produced_by: list[str] = field(default_factory=list)

    @property
    def model_identities(self) -> dict[str, str]:
        """Model kind -> checkpoint identity of the models named in the ledger keys `produced_by`."""
        return dict(re.findall(r"(spdiff|dgdiff):([0-9a-f]{16})", " ".join(self.produced_by)))


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
    method: str, dose: float, slices: list[int], pred_hu: np.ndarray, ref_hu: np.ndarray
) -> list[dict[str, Any]]:
    """One row per slice: slice, method, dose, psnr, ssim, rmse_hu (batched metrics of need_core.metrics)."""
    values = {name: np.atleast_1d(np.asarray(fn(pred_hu, ref_hu), dtype=np.float64)) for name, fn in METRICS.items()}
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
    rows = [row for method, values in images.items() for row in per_slice_rows(method, dose, slices, values, reference)]
    summary = [quality_row(method, dose, values, reference) for method, values in images.items()]
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

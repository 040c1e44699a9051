"""Quality rows (one per method and dose, as bench/results files hold them) and their terminal table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from need_core.metrics import psnr, rmse, ssim

METRICS = {"psnr": psnr, "ssim": ssim, "rmse_hu": rmse}
"""The quality metrics by their row keys (NEED_SPEC.md §5)."""


def metric_values(pred_hu: np.ndarray, ref_hu: np.ndarray) -> dict[str, np.ndarray]:
    """PSNR, SSIM and RMSE of each slice of (n, H, W) or one (H, W) image against the reference (float64, n values)."""
    pred_hu = np.asarray(pred_hu, dtype=np.float32)
    ref_hu = np.asarray(ref_hu, dtype=np.float32)
    if pred_hu.ndim == 2:
        pred_hu, ref_hu = pred_hu[None], ref_hu[None]
    return {name: np.atleast_1d(np.asarray(fn(pred_hu, ref_hu), dtype=np.float64)) for name, fn in METRICS.items()}


def summary_row(method: str, dose: float, values: Mapping[str, np.ndarray]) -> dict[str, float | str | int]:
    """The quality row of one method at one dose from its per-slice `metric_values`: mean and std over slices."""
    return {
        "method": method,
        "dose": float(dose),
        "psnr": float(values["psnr"].mean()),
        "psnr_std": float(values["psnr"].std()),
        "ssim": float(values["ssim"].mean()),
        "ssim_std": float(values["ssim"].std()),
        "rmse_hu": float(values["rmse_hu"].mean()),
        "rmse_hu_std": float(values["rmse_hu"].std()),
        "n_slices": int(values["psnr"].shape[0]),
    }


def quality_row(method: str, dose: float, pred_hu: np.ndarray, ref_hu: np.ndarray) -> dict[str, float | str | int]:
    """Mean and std over slices of PSNR, SSIM and RMSE (NEED_SPEC.md §5) for one method at one dose."""
    return summary_row(method, dose, metric_values(pred_hu, ref_hu))


def format_quality_table(rows: Iterable[Mapping[str, float | str | int]]) -> str:
    """A dose × method Markdown table of PSNR/SSIM/RMSE (mean ± std over slices), doses high to low, methods in the
    order given; the best PSNR of each dose in bold."""
    rows = sorted(rows, key=lambda r: -float(r["dose"]))  # stable: keeps the callers' method order
    best: dict[float | str | int, float] = {}
    for row in rows:
        best[row["dose"]] = max(best.get(row["dose"], float("-inf")), float(row["psnr"]))
    lines = ["| dose | method | PSNR (dB) | SSIM | RMSE (HU) | slices |", "|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        psnr_text = f"{float(row['psnr']):.2f} ± {float(row['psnr_std']):.2f}"
        if float(row["psnr"]) == best[row["dose"]]:
            psnr_text = f"**{psnr_text}**"
        rmse_text = f"{float(row['rmse_hu']):.1f}"
        if "rmse_hu_std" in row:
            rmse_text += f" ± {float(row['rmse_hu_std']):.1f}"
        lines.append(
            f"| {float(row['dose']):g} | {row['method']} | {psnr_text} "
            f"| {float(row['ssim']):.4f} ± {float(row['ssim_std']):.4f} | {rmse_text} | {row['n_slices']} |"
        )
    return "\n".join(lines)

"""Pictures a person would rather look at: side-by-side CT panels in a display window, with a difference map."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SOFT_TISSUE_WINDOW = (40.0, 400.0)  # (level, width) in HU
PANEL_COLUMNS = 5  # tiles (reference, methods) per row of a comparison panel


def comparison_panel(
    reference_hu: np.ndarray,
    images_hu: Mapping[str, np.ndarray],
    path: str | Path,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    title: str = "",
    diff_range_hu: float = 100.0,
) -> Path:
    """Save reference | each image (window level/width) and, below each image, its difference to the reference; more
    than PANEL_COLUMNS tiles wrap onto further rows (the demo's reference and nine methods make two)."""
    level, width = window
    lo, hi = level - width / 2, level + width / 2
    tiles = 1 + len(images_hu)
    columns = min(tiles, PANEL_COLUMNS)
    rows = -(-tiles // columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(3 * columns, 6.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    tiles_hu = {"reference": reference_hu, **images_hu}
    for tile, (name, image) in enumerate(tiles_hu.items()):
        row, col = 2 * (tile // columns), tile % columns
        axes[row, col].imshow(image, cmap="gray", vmin=lo, vmax=hi)
        axes[row, col].set_title(name)
        axes[row, col].axis("on")
        if tile:
            axes[row + 1, col].imshow(image - reference_hu, cmap="coolwarm", vmin=-diff_range_hu, vmax=diff_range_hu)
            axes[row + 1, col].set_title(f"{name} − ref (±{diff_range_hu:g} HU)", fontsize=8)
            axes[row + 1, col].axis("on")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}  W{width:g}/L{level:g}".strip())
    return save_figure(fig, path, dpi=110)


def metric_vs_dose_plot(
    rows: Iterable[Mapping[str, Any]], path: str | Path, metrics: tuple[str, ...] = ("psnr", "ssim", "rmse_hu")
) -> Path:
    """One panel per metric: mean ± std over slices against dose fraction, one line per method."""
    rows = list(rows)
    methods = sorted({str(row["method"]) for row in rows})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in methods:
            points = sorted(
                (float(r["dose"]), float(r[metric]), float(r.get(f"{metric}_std", 0.0)))
                for r in rows
                if r["method"] == method
            )
            doses, means, stds = (np.array(v) for v in zip(*points, strict=True))
            ax.errorbar(doses, means, yerr=stds, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("dose fraction")
        ax.set_ylabel({"psnr": "PSNR (dB)", "ssim": "SSIM", "rmse_hu": "RMSE (HU)"}.get(metric, metric))
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("image quality vs dose (reference: normal-dose FBP)")
    return save_figure(fig, path, dpi=100)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a figure; returns its path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

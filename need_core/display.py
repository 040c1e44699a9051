"""Pictures a person would rather look at: side-by-side CT panels in a display window, with a difference map."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SOFT_TISSUE_WINDOW = (40.0, 400.0)  # (level, width) in HU


def comparison_panel(
    reference_hu: np.ndarray,
    images_hu: Mapping[str, np.ndarray],
    path: str | Path,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    title: str = "",
    diff_range_hu: float = 100.0,
) -> Path:
    """Save reference | each image (window level/width) and, below each image, its difference to the reference."""
    level, width = window
    lo, hi = level - width / 2, level + width / 2
    n = 1 + len(images_hu)
    fig, axes = plt.subplots(2, n, figsize=(3 * n, 6.2), squeeze=False)
    axes[0, 0].imshow(reference_hu, cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title("reference")
    axes[1, 0].axis("off")
    for col, (name, image) in enumerate(images_hu.items(), start=1):
        axes[0, col].imshow(image, cmap="gray", vmin=lo, vmax=hi)
        axes[0, col].set_title(name)
        axes[1, col].imshow(image - reference_hu, cmap="coolwarm", vmin=-diff_range_hu, vmax=diff_range_hu)
        axes[1, col].set_title(f"{name} − ref (±{diff_range_hu:g} HU)", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title}  W{width:g}/L{level:g}".strip())
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

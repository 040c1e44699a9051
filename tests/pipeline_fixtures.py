"""Shared builders for flow tests: a small real-CT source volume (tiny checkpoints: tasks.quick_models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from storage.readers import read_volume

SMALL_SPACING = [3.0, 3.8, 3.8]  # head CT slices 44-55 (every other one), 4x smaller in-plane


def write_small_head_npy(head_ct_path: Path, directory: Path, n_slices: int = 6) -> str:
    """Real head-CT slices at 64x64, saved as .npy (the reader then needs the spacing given)."""
    hu = read_volume(head_ct_path).hu[44 : 44 + 2 * n_slices : 2]
    small = hu.reshape(n_slices, 64, 4, 64, 4).mean(axis=(2, 4)).astype(np.float32)
    path = directory / "head_small.npy"
    np.save(path, small)
    return str(path)


def only_study(summary: dict[str, Any]) -> dict[str, Any]:
    """The one study's entry of a reconstruct summary (a one-study catalog)."""
    (study,) = summary["studies"].values()
    return study

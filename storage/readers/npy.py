"""NumPy .npy volumes: (n_slices, ny, nx) HU values with no metadata, so the caller must give the spacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from storage.deid import subject_key
from storage.readers.base import ReaderError, checked_volume, uniform_z
from storage.validation import check_spacing_mm
from storage.volume import Volume


def read_npy(path: Path, spacing_mm: tuple[float, float, float] | None) -> Volume:
    """Read a 3-D HU array saved with np.save (no pickles); `spacing_mm` (dz, dy, dx) is required.

    The subject key hashes the file name (the only identity such a file has); z positions are 0, dz, 2 dz, ...
    """
    if spacing_mm is None:
        raise ReaderError(f"{path.name}: an .npy file carries no voxel spacing; pass spacing_mm=(dz, dy, dx) in mm")
    spacing = check_spacing_mm(spacing_mm, ReaderError)
    try:
        hu = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ReaderError(f"{path.name}: not a readable .npy array (corrupt, truncated or pickled): {err}") from None
    if hu.ndim != 3:
        raise ReaderError(f"{path.name}: expected a 3-D array (slice, y, x), got shape {hu.shape}")
    source = {"format": "npy", "modality": "unknown", "n_files": 1, "n_skipped": 0}
    return checked_volume(path, hu, spacing, uniform_z(hu.shape[0], spacing[0]), subject_key(path.name), source)

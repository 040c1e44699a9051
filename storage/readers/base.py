"""What every reader shares: ReaderError and the step that turns checked arrays into a Volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from storage.volume import Volume


class ReaderError(ValueError):
    """A volume cannot be read: missing or corrupt file, unsupported format, non-CT data, inconsistent series..."""


def checked_volume(
    path: Path, hu: np.ndarray, spacing_mm: Any, z_mm: Any, subject_key: str, source: dict[str, Any]
) -> Volume:
    """Build a Volume, turning any failed check (NaN/inf voxels, bad spacing, ...) into a ReaderError naming `path`."""
    try:
        return Volume(hu=hu, spacing_mm=spacing_mm, z_mm=z_mm, subject_key=subject_key, source=source)
    except ValueError as err:
        raise ReaderError(f"{path.name}: {err}") from None


def uniform_z(n_slices: int, dz: float) -> np.ndarray:
    """Slice positions 0, dz, 2 dz, ... for formats that store a spacing but no positions."""
    return np.arange(n_slices, dtype=np.float64) * float(dz)

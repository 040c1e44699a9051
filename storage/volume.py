"""The CT volume every reader returns: HU voxels, spacing, slice positions, a pseudonymous subject and its source."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.validation import check_spacing_mm, check_volume_array, check_z_mm


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU, slices first: `hu` (n_slices, ny, nx) float32, `spacing_mm` (dz, dy, dx),
    `z_mm` (n_slices,) float64 increasing positions along the patient axis, `subject_key` (salted hash, never
    a raw ID) and `source` (JSON-able, de-identified facts: format, modality, n_files, n_skipped, ...).
    Construction checks all of it (ValueError naming the problem), so a Volume is always usable."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    z_mm: np.ndarray
    subject_key: str
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hu = check_volume_array(self.hu, "hu")
        object.__setattr__(self, "hu", hu)
        object.__setattr__(self, "spacing_mm", check_spacing_mm(self.spacing_mm))
        object.__setattr__(self, "z_mm", check_z_mm(self.z_mm, hu.shape[0]))
        if not isinstance(self.subject_key, str) or not self.subject_key:
            raise ValueError("subject_key must be a non-empty string (see storage.deid.subject_key)")
        try:
            object.__setattr__(self, "source", json.loads(json.dumps(self.source, allow_nan=False)))
        except (TypeError, ValueError) as err:
            raise ValueError(f"source must be a JSON-able dict: {err}") from None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_slices, ny, nx)."""
        return self.hu.shape

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.hu.shape}, spacing_mm={self.spacing_mm}, "
            f"subject_key={self.subject_key!r}, source={self.source!r})"
        )

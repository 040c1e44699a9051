"""Analytic test objects in HU: a water cylinder with a bone-like and a lung-like insert, in air."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

AIR_HU = -1000.0
WATER_HU = 0.0
DENSE_INSERT_HU = 1000.0
LIGHT_INSERT_HU = -500.0


@dataclass(frozen=True)
class CylinderPhantom:
    """A phantom image in HU plus boolean ROI masks (eroded away from edges) for CT-number checks."""

    image_hu: np.ndarray
    water_roi: np.ndarray
    dense_roi: np.ndarray
    light_roi: np.ndarray

    @property
    def rois(self) -> dict[str, tuple[np.ndarray, float]]:
        """ROI name -> (mask, true HU)."""
        return {
            "water": (self.water_roi, WATER_HU),
            "dense_insert": (self.dense_roi, DENSE_INSERT_HU),
            "light_insert": (self.light_roi, LIGHT_INSERT_HU),
        }


def water_cylinder_phantom(
    image_shape: tuple[int, int],
    pixel_spacing_mm: float | tuple[float, float],
    diameter_mm: float = 200.0,
    insert_diameter_mm: float = 40.0,
    roi_margin_mm: float = 6.0,
) -> CylinderPhantom:
    """A centred water cylinder (0 HU) of `diameter_mm` holding a +1000 HU insert (right) and a -500 HU
    insert (left), in air (-1000 HU). Pixels are point-sampled at their centres (no partial volume)."""
    ny, nx = image_shape
    if np.isscalar(pixel_spacing_mm):
        dy = dx = cast(float, pixel_spacing_mm)  # numpy's isscalar narrows to generic | complex | str | ...
    else:
        dy, dx = cast(tuple[float, float], pixel_spacing_mm)
    if diameter_mm > min(ny * dy, nx * dx):
        raise ValueError(f"phantom diameter {diameter_mm} mm exceeds the field of view {min(ny * dy, nx * dx):.1f} mm")
    x = (np.arange(nx) - 0.5 * (nx - 1)) * dx
    y = (0.5 * (ny - 1) - np.arange(ny)) * dy
    xx, yy = np.meshgrid(x, y)
    radius, insert_radius = 0.5 * diameter_mm, 0.5 * insert_diameter_mm
    offset = 0.5 * radius
    dense_distance = np.hypot(xx - offset, yy)
    light_distance = np.hypot(xx + offset, yy)
    centre_distance = np.hypot(xx, yy)

    image = np.full((ny, nx), AIR_HU, dtype=np.float32)
    image[centre_distance <= radius] = WATER_HU
    image[dense_distance <= insert_radius] = DENSE_INSERT_HU
    image[light_distance <= insert_radius] = LIGHT_INSERT_HU

    water_roi = np.hypot(xx, yy - offset) <= insert_radius - roi_margin_mm
    return CylinderPhantom(
        image_hu=image,
        water_roi=water_roi,
        dense_roi=dense_distance <= insert_radius - roi_margin_mm,
        light_roi=light_distance <= insert_radius - roi_margin_mm,
    )

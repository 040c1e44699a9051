"""ASTRA plumbing: geometry conversion (volume in mm), GPU detection once per process, backend choice."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import astra
import numpy as np

from need_core.physics.geometry import FanBeamGeometry

ASTRA_BACKENDS = ("astra-cpu", "astra-cuda")


class BackendUnavailableError(ValueError):
    """A backend was asked for by name but cannot run here (e.g. astra-cuda without a GPU)."""


@functools.cache
def astra_cuda_available() -> bool:
    """True when ASTRA's CUDA algorithms run here; probed once with a tiny projection and cached."""
    try:
        if not astra.use_cuda():
            return False
        geometry = FanBeamGeometry.for_image((8, 8), 1.0)
        with astra_projector("cuda", fan_projection_geometry(geometry), volume_geometry(geometry)) as projector_id:
            sinogram_id, _ = astra.create_sino(np.ones((8, 8), dtype=np.float32), projector_id)
            astra.data2d.delete(sinogram_id)
        return True
    except Exception:  # AstraError, CUDA runtime errors...: any failure of the probe means "no usable GPU"
        return False


def require_astra_cuda() -> None:
    """Raise BackendUnavailableError unless ASTRA's CUDA algorithms work here."""
    if not astra_cuda_available():
        raise BackendUnavailableError(
            "backend 'astra-cuda' needs a CUDA GPU that ASTRA can use, and none works here; use 'auto' or a CPU backend"
        )


def volume_geometry(geometry: FanBeamGeometry) -> dict:
    """ASTRA 2-D volume geometry with extents in mm, centred on the isocentre (row 0 at +y)."""
    (ny, nx), (dy, dx) = geometry.image_shape, geometry.pixel_spacing_mm
    half_w, half_h = 0.5 * nx * dx, 0.5 * ny * dy
    return astra.create_vol_geom(ny, nx, -half_w, half_w, -half_h, half_h)


def fan_projection_geometry(geometry: FanBeamGeometry) -> dict:
    """ASTRA `fanflat` projection geometry (flat, equi-spaced detector) for `geometry`."""
    return astra.create_proj_geom(
        "fanflat",
        geometry.det_spacing_mm,
        geometry.n_det,
        geometry.angles,
        geometry.source_iso_mm,
        geometry.iso_det_mm,
    )


@contextmanager
def astra_projector(kind: str, projection_geometry: dict, volume_geom: dict) -> Iterator[int]:
    """Create an ASTRA projector for the block and always free it afterwards."""
    projector_id = astra.create_projector(kind, projection_geometry, volume_geom)
    try:
        yield projector_id
    finally:
        astra.projector.delete(projector_id)

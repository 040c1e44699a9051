"""Filtered back-projection of fan-beam line integrals (NEED_SPEC.md §3), with three interchangeable backends.

- "astra-cuda": ASTRA's FBP_CUDA for the fan-beam geometry (GPU).
- "rebin": rebin fan -> parallel (cached sparse tables), ramp-filter, then ASTRA's CPU parallel-beam
  backprojector, normalised to unit gain per pixel. ASTRA's own CPU FBP is parallel-beam only.
- "torch": exact weighted fan-beam FBP in torch on any device; the accuracy reference.
"auto" picks astra-cuda when a GPU works, else rebin. All share one ramp filter (filters.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import astra
import numpy as np
import torch

from need_core.device import resolve_device
from need_core.physics.astra_support import (
    astra_cuda_available,
    astra_projector,
    fan_projection_geometry,
    require_astra_cuda,
    volume_geometry,
)
from need_core.physics.fan_fbp_torch import fan_fbp_numpy_io
from need_core.physics.filters import check_filter_name, ramp_filter_numpy
from need_core.physics.geometry import FanBeamGeometry
from need_core.physics.projector import as_float32_numpy
from need_core.physics.rebin import parallel_grid_for, rebin_to_parallel
from need_core.physics.settings import PhysicsSettings
from need_core.physics.units import mu_to_hu
from need_core.physics.validation import PhysicsInputError, require_finite_array, require_trailing_shape

FBP_BACKENDS = ("astra-cuda", "rebin", "torch")
# ASTRA CPU parallel-beam projector used to backproject rebinned data (Joseph-type interpolation).
PARALLEL_PROJECTOR = "linear"


def resolve_fbp_backend(backend: str) -> str:
    """Map "auto" to "astra-cuda" when a GPU works, else "rebin"; reject unknown or unavailable names."""
    if backend == "auto":
        return "astra-cuda" if astra_cuda_available() else "rebin"
    if backend not in FBP_BACKENDS:
        raise PhysicsInputError(f"unknown FBP backend {backend!r}; expected 'auto' or one of {FBP_BACKENDS}")
    if backend == "astra-cuda":
        require_astra_cuda()
    return backend


def fbp(
    line_integrals: Any,
    geometry: FanBeamGeometry,
    filter: str = "ram-lak",
    backend: str = "auto",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Reconstruct attenuation mu (1/mm, float32 numpy) from fan-beam line integrals.

    line_integrals: (n_views, n_det) or a batch (B, n_views, n_det), numpy or torch -> (ny, nx) or (B, ny, nx).
    filter: "ram-lak", "shepp-logan" or "hann". backend: "auto", "astra-cuda", "rebin" or "torch";
    device: torch device of the "torch" backend (default "auto"; the other backends ignore it).
    Needs a full 2*pi scan (no short-scan weighting). "rebin" runs on one core (ASTRA's CPU
    backprojector): parallelise across slices in the caller.
    """
    check_filter_name(filter)
    data = as_float32_numpy("line_integrals", line_integrals)
    batched = require_trailing_shape("line_integrals", data.shape, geometry.sinogram_shape, "(n_views, n_det)")
    require_finite_array("line_integrals", data)
    if not geometry.is_full_scan:
        raise PhysicsInputError(
            f"fbp needs a full scan, angle_range_rad = 2*pi; got {geometry.angle_range_rad!r} "
            "(short-scan Parker weighting is not implemented)"
        )
    backend = resolve_fbp_backend(backend)
    sinograms = data if batched else data[None]
    if backend == "rebin":
        images = _fbp_rebin(sinograms, geometry, filter)
    elif backend == "torch":
        images = fan_fbp_numpy_io(sinograms, geometry, filter, resolve_device(device or "auto"))
    else:
        images = _fbp_astra_cuda(sinograms, geometry, filter)
    return images if batched else images[0]


def fbp_hu(
    line_integrals: Any,
    geometry: FanBeamGeometry,
    settings: PhysicsSettings | None = None,
    filter: str = "ram-lak",
    backend: str = "auto",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """fbp() converted to HU with settings.mu_water_per_mm (default PhysicsSettings()); float32 numpy."""
    settings = settings or PhysicsSettings()
    mu = fbp(line_integrals, geometry, filter=filter, backend=backend, device=device)
    return mu_to_hu(mu, settings.mu_water_per_mm).astype(np.float32, copy=False)


def _parallel_backprojector(geometry: FanBeamGeometry) -> tuple[dict, dict]:
    """ASTRA parallel-beam projection geometry on the rebinning grid, and the volume geometry."""
    grid = parallel_grid_for(geometry)
    projection_geometry = astra.create_proj_geom("parallel", grid.offset_spacing_mm, grid.n_offsets, grid.angles)
    return projection_geometry, volume_geometry(geometry)


@functools.lru_cache(maxsize=16)
def _unit_backprojection(geometry: FanBeamGeometry) -> np.ndarray:
    """ASTRA's CPU backprojection of an all-ones parallel sinogram: each pixel's total weight, cached."""
    grid = parallel_grid_for(geometry)
    with astra_projector(PARALLEL_PROJECTOR, *_parallel_backprojector(geometry)) as projector_id:
        ones = np.ones((grid.angles.size, grid.n_offsets), dtype=np.float32)
        image_id, image = astra.create_backprojection(ones, projector_id)
        astra.data2d.delete(image_id)
    if not (image > 0).all():
        raise RuntimeError("rebinning grid leaves image pixels without rays; the parallel offsets are too short")
    image.setflags(write=False)
    return image


def _fbp_rebin(sinograms: np.ndarray, geometry: FanBeamGeometry, filter_name: str) -> np.ndarray:
    """CPU FBP: rebin to parallel over pi, ramp-filter, backproject with ASTRA's CPU 'linear' projector.

    Parallel-beam FBP over pi is f = dtheta * sum_theta Q(theta, x.b) = pi * mean_theta Q. ASTRA's
    backprojection weights (pixel, ray) pairs unevenly (its weights sum to ~1 +- 1% per pixel and angle),
    so dividing by the backprojection of ones, pi * BP(Q) / BP(1), gives every pixel exactly unit gain.
    """
    parallel = rebin_to_parallel(sinograms, geometry)
    filtered = ramp_filter_numpy(parallel, parallel_grid_for(geometry).offset_spacing_mm, filter_name)
    scale = math.pi / _unit_backprojection(geometry)
    images = np.empty((sinograms.shape[0], *geometry.image_shape), dtype=np.float32)
    with astra_projector(PARALLEL_PROJECTOR, *_parallel_backprojector(geometry)) as projector_id:
        for index, rows in enumerate(filtered):
            image_id, image = astra.create_backprojection(rows, projector_id)
            astra.data2d.delete(image_id)
            images[index] = image * scale
    return images


def _fbp_astra_cuda(sinograms: np.ndarray, geometry: FanBeamGeometry, filter_name: str) -> np.ndarray:
    """GPU FBP with ASTRA's FBP_CUDA on the fanflat geometry; its named filters equal filters.py's."""
    volume_geom = volume_geometry(geometry)
    projection_geometry = fan_projection_geometry(geometry)
    images = np.empty((sinograms.shape[0], *geometry.image_shape), dtype=np.float32)
    with astra_projector("cuda", projection_geometry, volume_geom) as projector_id:
        for index, sinogram in enumerate(sinograms):
            sinogram_id = astra.data2d.create("-sino", projection_geometry, sinogram)
            image_id = astra.data2d.create("-vol", volume_geom, 0.0)
            config = astra.astra_dict("FBP_CUDA")
            config["ProjectorId"] = projector_id
            config["ProjectionDataId"] = sinogram_id
            config["ReconstructionDataId"] = image_id
            config["option"] = {"FilterType": filter_name}
            algorithm_id = astra.algorithm.create(config)
            try:
                astra.algorithm.run(algorithm_id)
                images[index] = astra.data2d.get(image_id)
            finally:
                astra.algorithm.delete(algorithm_id)
                astra.data2d.delete([sinogram_id, image_id])
    return images

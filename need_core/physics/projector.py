"""Forward projection of attenuation images to fan-beam line integrals with ASTRA (GPU or CPU)."""

from __future__ import annotations

from typing import Any

import astra
import numpy as np
import torch

from need_core.physics.astra_support import (
    ASTRA_BACKENDS,
    astra_cuda_available,
    astra_projector,
    fan_projection_geometry,
    require_astra_cuda,
    volume_geometry,
)
from need_core.physics.geometry import FanBeamGeometry
from need_core.physics.validation import PhysicsInputError, require_finite_array, require_trailing_shape

# ASTRA projector per backend: Siddon-type exact ray-pixel intersection lengths on the CPU,
# ASTRA's GPU ray-driven projector on CUDA.
_ASTRA_PROJECTOR_KIND = {"astra-cpu": "line_fanflat", "astra-cuda": "cuda"}


def resolve_projection_backend(backend: str) -> str:
    """Map "auto" to "astra-cuda" when a GPU works, else "astra-cpu"; reject unknown or unavailable names."""
    if backend == "auto":
        return "astra-cuda" if astra_cuda_available() else "astra-cpu"
    if backend not in ASTRA_BACKENDS:
        raise PhysicsInputError(f"unknown projection backend {backend!r}; expected 'auto', 'astra-cpu' or 'astra-cuda'")
    if backend == "astra-cuda":
        require_astra_cuda()
    return backend


def as_float32_numpy(name: str, values: Any) -> np.ndarray:
    """numpy float32 view/copy of a numpy array or torch tensor (detached, on CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise PhysicsInputError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def forward_project(mu: Any, geometry: FanBeamGeometry, backend: str = "auto") -> np.ndarray:
    """Line integrals (float32, dimensionless) of attenuation `mu` (1/mm) along the fan-beam rays.

    mu: (ny, nx) or (B, ny, nx), numpy or torch -> (n_views, n_det) or (B, n_views, n_det).
    backend: "auto" (astra-cuda when a GPU works, else astra-cpu), "astra-cpu" or "astra-cuda".
    ASTRA's CPU projector is single-threaded: parallelise across slices in the caller (processes).
    """
    volume = as_float32_numpy("mu", mu)
    batched = require_trailing_shape("mu", volume.shape, geometry.image_shape, "image_shape (ny, nx)")
    require_finite_array("mu", volume)
    backend = resolve_projection_backend(backend)
    slices = volume if batched else volume[None]
    out = np.empty((slices.shape[0], *geometry.sinogram_shape), dtype=np.float32)
    with astra_projector(
        _ASTRA_PROJECTOR_KIND[backend], fan_projection_geometry(geometry), volume_geometry(geometry)
    ) as projector_id:
        for index, image in enumerate(slices):
            sinogram_id, sinogram = astra.create_sino(image, projector_id)
            astra.data2d.delete(sinogram_id)
            out[index] = sinogram
    return out if batched else out[0]

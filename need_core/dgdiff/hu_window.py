"""The one mapping between Hounsfield units and DGDiff's model space: HU [-1024, 3072] <-> [-1, 1]."""
from __future__ import annotations

import warnings

import numpy as np
import torch

HU_WINDOW: tuple[float, float] = (-1024.0, 3072.0)


class HUWindowWarning(UserWarning):
    """Pixels fell outside the DGDiff HU window and were clipped to it."""


def hu_to_unit(hu: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Map HU to [-1, 1] (NEED_SPEC.md §4); NaN/inf raise, out-of-window pixels are clipped with a warning."""
    if not torch.isfinite(hu).all():
        bad = int((~torch.isfinite(hu)).sum())
        raise ValueError(f"{name} has {bad} NaN/inf pixels: expected finite HU values")
    low, high = HU_WINDOW
    outside = int(((hu < low) | (hu > high)).sum())
    if outside:
        warnings.warn(
            f"{name}: {outside} of {hu.numel()} pixels outside the HU window [{low:g}, {high:g}] were clipped to it",
            HUWindowWarning,
            stacklevel=2,
        )
        hu = hu.clamp(low, high)
    return (hu - low) / (high - low) * 2.0 - 1.0


def unit_to_hu(unit: torch.Tensor) -> torch.Tensor:
    """Map model-space values in [-1, 1] back to HU (inverse of `hu_to_unit` inside the window)."""
    low, high = HU_WINDOW
    return (unit + 1.0) / 2.0 * (high - low) + low


def as_image_stack(images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Return an (n, H, W) float32 CPU tensor; a single (H, W) image becomes a stack of one."""
    tensor = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"{name} must have shape (n, H, W) or (H, W), got {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one slice")
    return tensor.detach().to("cpu", torch.float32)

"""The one mapping between Hounsfield units and DGDiff's model space: HU [-1024, 3072] <-> [-1, 1]."""

from __future__ import annotations

import warnings

import numpy as np
import torch

HU_WINDOW: tuple[float, float] = (-1024.0, 3072.0)
EXPECTED_BELOW_FRACTION = 0.5
"""Low-dose noise pushes air pixels below −1024 HU (≈ 20 % of a head image at 5 % dose); clipping those is expected
and silent unless most of the image lies below the window (then it is not in HU)."""


class HUWindowWarning(UserWarning):
    """Pixels fell outside the DGDiff HU window and were clipped to it."""


def hu_to_unit(hu: torch.Tensor, name: str = "image") -> torch.Tensor:
    """Map HU to [-1, 1] (NEED_SPEC.md §4); NaN/inf raise, out-of-window pixels are clipped.

    Clipping warns when it loses information: any pixel above the window (metal, or not HU at all), or more than
    EXPECTED_BELOW_FRACTION of the pixels below it (noisy air alone stays silent: it is in every LDCT image)."""
    if not torch.isfinite(hu).all():
        bad = int((~torch.isfinite(hu)).sum())
        raise ValueError(f"{name} has {bad} NaN/inf pixels: expected finite HU values")
    low, high = HU_WINDOW
    below, above = int((hu < low).sum()), int((hu > high).sum())
    if above or below > EXPECTED_BELOW_FRACTION * hu.numel():
        warnings.warn(
            f"{name}: {below + above} of {hu.numel()} pixels outside the HU window [{low:g}, {high:g}] "
            f"({below} below, {above} above) were clipped to it",
            HUWindowWarning,
            stacklevel=2,
        )
    return (hu.clamp(low, high) - low) / (high - low) * 2.0 - 1.0


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

"""RED-CNN's input scaling: HU <-> network units by an affine map (no clipping), plus checks of HU image stacks.

Network units: u = (HU + 2048) / 4096, so the window [-2048, 2048] HU spans [0, 1] and air (-1000 HU, whose noisy
low-dose values often fall below -1024) sits well inside it. Values outside the window are passed through unchanged
(not clipped). The network ends in a ReLU (as the original does), so its outputs never go below u = 0, i.e.
-2048 HU: far below air, outside the metric window [-1000, 1000] HU.
"""

from __future__ import annotations

import numpy as np
import torch

HU_SCALE_WINDOW: tuple[float, float] = (-2048.0, 2048.0)
# Finite values outside this range are not CT numbers (wrong units, raw counts, attenuation in 1/mm * 1e6 ...).
HU_PLAUSIBLE: tuple[float, float] = (-10_000.0, 40_000.0)


class RedCNNInputError(ValueError):
    """Images given to RED-CNN have the wrong shape, non-finite values or values that are not HU."""


def hu_to_net(hu: torch.Tensor) -> torch.Tensor:
    """HU to network units u = (HU − low) / (high − low) over HU_SCALE_WINDOW (affine, no clipping)."""
    low, high = HU_SCALE_WINDOW
    return (hu - low) / (high - low)


def net_to_hu(net: torch.Tensor) -> torch.Tensor:
    """Network units back to HU (inverse of `hu_to_net`)."""
    low, high = HU_SCALE_WINDOW
    return net * (high - low) + low


def as_hu_stack(images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Check an (n, H, W) stack of HU images (finite, plausible HU) and return it as a float32 CPU tensor."""
    if isinstance(images, torch.Tensor):
        tensor = images.detach().to("cpu", torch.float32)
    else:
        tensor = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if tensor.ndim != 3 or tensor.shape[0] == 0:
        raise RedCNNInputError(f"{name} must be a non-empty stack of shape (n, H, W), got {tuple(tensor.shape)}")
    finite = torch.isfinite(tensor)
    if not finite.all():
        raise RedCNNInputError(f"{name} has {int((~finite).sum())} NaN/inf pixels: expected finite HU values")
    low, high = HU_PLAUSIBLE
    if tensor.min() < low or tensor.max() > high:
        raise RedCNNInputError(
            f"{name} spans [{float(tensor.min()):g}, {float(tensor.max()):g}], outside the plausible HU range "
            f"[{low:g}, {high:g}]: expected CT numbers in HU"
        )
    return tensor

"""Time-step matching for DGDiff (NEED_SPEC.md §4, steps 1–2): noise estimate σ̂, matched step t_m,
start step k, and the LDCT guidance weight s1 derived from σ̂. Inputs are in model space [-1, 1]."""
from __future__ import annotations

import torch

from need_core.dgdiff.schedule import DiffusionSchedule


def estimate_noise_sigma(x_ld: torch.Tensor, x_init: torch.Tensor) -> torch.Tensor:
    """σ̂ = std(x_init − x_LD) per image: (n, H, W) pairs -> (n,)."""
    if x_ld.shape != x_init.shape:
        raise ValueError(f"x_ld {tuple(x_ld.shape)} and x_init {tuple(x_init.shape)} must have the same shape")
    return (x_init - x_ld).flatten(1).std(dim=1)


_LAPLACIAN_DIFFERENCE = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
"""Immerkær's noise-estimation kernel: blind to constant and linear image content; white noise σ gives std 6σ."""


def estimate_image_noise(images: torch.Tensor) -> torch.Tensor:
    """Noise std of each image (n, H, W) from its own pixels, for when no second image gives σ̂ (DGDiff alone).

    Robust form of Immerkær's estimator: the median absolute deviation of the kernel response, so edges
    (a small fraction of the pixels) barely count. Exact for white noise; CT noise is correlated, so treat
    it as the same order as std(x_init − x_LD), not equal to it.
    """
    if images.ndim != 3:
        raise ValueError(f"images must be (n, H, W), got shape {tuple(images.shape)}")
    kernel = torch.tensor(_LAPLACIAN_DIFFERENCE, dtype=images.dtype, device=images.device)[None, None]
    response = torch.nn.functional.conv2d(images[:, None], kernel).flatten(1)
    deviation = (response - response.median(dim=1, keepdim=True).values).abs().median(dim=1).values
    return 1.4826 * deviation / 6.0


def match_noise_step(schedule: DiffusionSchedule, sigma: torch.Tensor) -> torch.Tensor:
    """t_m = argmin_t |σ − sqrt(1 − ᾱ_t)|, per entry of `sigma` (a (n,) tensor) -> (n,) long."""
    if not torch.isfinite(sigma).all() or (sigma < 0).any():
        raise ValueError(f"noise levels must be finite and >= 0, got {sigma.tolist()}")
    levels = schedule.sqrt_one_minus_alphas_cumprod.to(sigma.device, torch.float32)
    return (sigma.float()[:, None] - levels[None]).abs().argmin(dim=1)


def start_step(matched_step: torch.Tensor, divisor: int = 10) -> torch.Tensor:
    """k = max(1, ⌊t_m / divisor⌋): the step guided sampling starts from (*ref* divisor 10)."""
    if divisor < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor}")
    return torch.clamp(torch.div(matched_step, divisor, rounding_mode="floor"), min=1)


def ldct_guidance_weight(sigma: torch.Tensor) -> torch.Tensor:
    """s1 = 0.7·e^{5000σ̂²} / (10 + e^{5000σ̂²}), written as 0.7 / (1 + 10·e^{−5000σ̂²}) so it never overflows."""
    return (0.7 / (1.0 + 10.0 * torch.exp(-5000.0 * sigma.double() ** 2))).to(sigma.dtype)

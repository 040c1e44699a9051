"""Estimate the incident photon count N = I0·d of a low-dose measurement from the data alone.

Noise model (NEED_SPEC.md §1): x = y/N with y = Poisson(N·m) + Normal(0, σe²), so
Var(x) = (m + σe²/N)/N. A binomial high-pass along the detector axis removes the smooth signal;
dividing by sqrt(m + σe²/N) leaves residuals of variance 1/N. Patient edges and fine structure
still leak in, so 1/N is read from the *flattest* blocks of the sinogram: a low quantile of the
per-block mean square, corrected by the chi-square quantile of pure noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from need_core.physics.settings import PhysicsSettings
from need_core.spdiff.validation import check_transmission_volume

HIGH_PASS_ORDER = 3
"""k of the binomial high-pass (−1)^i·C(2k, i): passes white noise, suppresses smooth signal as (1 − cos ω)^k."""

BLOCK_SHAPE = (32, 32)
"""(views, detectors) of the blocks whose residual power is compared."""

BLOCK_QUANTILE = 0.1
"""Quantile of block powers taken as the noise level (the flattest tenth of the sinogram)."""

MIN_MEAN_TRANSMISSION = 0.02
"""Bins darker than this are left out: their noise is dominated by electronic noise, not photons."""

MAX_INCIDENT_COUNT = 1e12
"""Above this the "noise" is floating-point rounding, not photon statistics."""

_NORMAL_QUANTILE_0_1 = -1.2815515655446004  # Φ⁻¹(0.1), for the Wilson–Hilferty chi-square quantile


class DoseEstimationError(ValueError):
    """The data hold too little usable signal to estimate a dose."""


def binomial_high_pass(order: int) -> torch.Tensor:
    """The kernel (−1)^i·C(2k, i), i = 0…2k, scaled to unit energy so white noise keeps its variance."""
    kernel = torch.tensor([(-1) ** i * math.comb(2 * order, i) for i in range(2 * order + 1)], dtype=torch.float64)
    return kernel / kernel.square().sum().sqrt()


def effective_degrees_of_freedom(samples: int, kernel: torch.Tensor) -> float:
    """Degrees of freedom of a mean of `samples` squared filtered-noise values (neighbours correlate via the kernel)."""
    autocorrelation = torch.tensor(np.correlate(kernel.numpy(), kernel.numpy(), "full"))
    return samples / float(autocorrelation.square().sum())


def chi_square_quantile_ratio(quantile: float, dof: float) -> float:
    """χ²_ν quantile divided by ν (Wilson–Hilferty); only the 0.1 quantile is used, so z is fixed."""
    if quantile != BLOCK_QUANTILE:
        raise ValueError(f"only quantile {BLOCK_QUANTILE} is supported, got {quantile}")
    spread = 2.0 / (9.0 * dof)
    return (1.0 - spread + _NORMAL_QUANTILE_0_1 * math.sqrt(spread)) ** 3


def estimate_incident_count(
    transmission: np.ndarray | torch.Tensor,
    electronic_noise_var: float = PhysicsSettings().sigma_e2,
    iterations: int = 5,
) -> float:
    """Estimated incident count N = I0·d of normalised transmission (slices, views, detectors) or (views, detectors)."""
    values = torch.as_tensor(transmission).detach().to("cpu", torch.float64)
    if values.ndim == 2:
        values = values[None]
    check_transmission_volume(values, name="transmission for dose estimation")
    block_views, block_dets = BLOCK_SHAPE
    kernel = binomial_high_pass(HIGH_PASS_ORDER)
    width = kernel.numel()
    if values.shape[1] < block_views or values.shape[2] < block_dets + width - 1:
        raise DoseEstimationError(
            f"sinograms of {tuple(values.shape[1:])} are too small: need >= {block_views} views and "
            f">= {block_dets + width - 1} detector bins to estimate the dose"
        )
    rows = values.reshape(-1, 1, values.shape[-1])
    residual = F.conv1d(rows, kernel.view(1, 1, -1)).reshape(*values.shape[:2], -1)
    local_mean = F.conv1d(rows, torch.full((1, 1, width), 1.0 / width, dtype=torch.float64))
    local_mean = local_mean.reshape(residual.shape)
    dof = effective_degrees_of_freedom(block_views * block_dets, kernel)
    noise_ratio = chi_square_quantile_ratio(BLOCK_QUANTILE, dof)
    inverse_count = 0.0
    for _ in range(iterations):  # the σe²/N term of the variance needs N itself: fixed-point iteration
        scaled = residual / torch.sqrt((local_mean + electronic_noise_var * inverse_count).clamp_min(1e-12))
        block_power = _block_mean_square(scaled, local_mean > MIN_MEAN_TRANSMISSION)
        inverse_count = float(torch.quantile(block_power, BLOCK_QUANTILE)) / noise_ratio
    if not math.isfinite(inverse_count) or inverse_count * MAX_INCIDENT_COUNT < 1.0:
        raise DoseEstimationError("the data show no measurable noise; cannot estimate the incident count")
    return 1.0 / inverse_count


def _block_mean_square(scaled: torch.Tensor, usable: torch.Tensor) -> torch.Tensor:
    """Mean square of `scaled` over each BLOCK_SHAPE block whose bins are all usable."""
    block_views, block_dets = BLOCK_SHAPE
    slices, views, dets = scaled.shape
    nv, nd = views // block_views, dets // block_dets
    blocks = scaled[:, : nv * block_views, : nd * block_dets].reshape(slices, nv, block_views, nd, block_dets)
    valid = usable[:, : nv * block_views, : nd * block_dets].reshape(blocks.shape).all(dim=4).all(dim=2)
    power = blocks.square().mean(dim=(2, 4))[valid]
    if power.numel() < 10:
        raise DoseEstimationError(
            f"only {power.numel()} blocks of {BLOCK_SHAPE} bins have transmission > {MIN_MEAN_TRANSMISSION}; need >= 10"
        )
    return power


def estimate_dose(transmission: np.ndarray | torch.Tensor, physics: PhysicsSettings = PhysicsSettings()) -> float:
    """Estimated dose fraction d = N / I0 of a measurement (above 1 for data above the normal dose)."""
    return estimate_incident_count(transmission, physics.sigma_e2) / physics.incident_count

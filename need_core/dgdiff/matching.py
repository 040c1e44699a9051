"""Time-step matching for DGDiff (NEED_SPEC.md §4, steps 1–2): noise estimate σ̂, matched step t_m,
start step k, and the LDCT guidance weight s1 derived from σ̂. Inputs are in model space [-1, 1]."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

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


START_NOISE = ("full", "residual")
ENDINGS = ("chain", "one_shot")


@dataclass(frozen=True)
class GuidanceSettings:
    """DGDiff's sampling settings, their one home (NEED_SPEC.md §4, *ref* values as defaults).

    s1 = s1_scale·e^{s1_sharpness·σ̂²} / (s1_offset + e^{s1_sharpness·σ̂²}) (LDCT guidance), s2 (initial-reconstruction
    guidance), and the start-step divisor: k = max(1, ⌊t_m / divisor⌋). Training keeps only the steps this divisor
    can reach (a model's `max_start_step`), and `refine` never starts above them. `sigma_scale` multiplies σ̂ before
    the matching only (1 in the spec): CT noise is correlated, and a denoiser trained on white noise may need to be
    told of more to remove it. `start_noise`: "full" adds the
    start step's whole noise to x_init (the spec); "residual" adds only what x_init's own noise lacks to reach it
    (calibration's choice where SPDiff leaves noise of the same order as the start step's). `ending`: "chain" runs
    the guided chain down to t = 0 (the spec), whose result is a sample of the prior, normal-dose noise texture
    included; "one_shot" returns the guided x̂0 of the first step, blended with x_init by s2: the posterior-mean
    estimate, which scores better against a normal-dose reference that carries its own independent noise.
    """

    s1_scale: float = 0.7
    s1_offset: float = 10.0
    s1_sharpness: float = 5000.0
    s2: float = 0.8
    divisor: int = 10
    sigma_scale: float = 1.0
    start_noise: str = "full"
    ending: str = "chain"

    def __post_init__(self) -> None:
        if not 0.0 <= self.s1_scale <= 1.0 or not 0.0 <= self.s2 <= 1.0:
            raise ValueError(f"guidance weights must lie in [0, 1], got s1_scale={self.s1_scale}, s2={self.s2}")
        if not (math.isfinite(self.s1_offset) and self.s1_offset >= 0 and math.isfinite(self.s1_sharpness)):
            raise ValueError(
                f"s1_offset must be finite and >= 0 and s1_sharpness finite, got {self.s1_offset}, {self.s1_sharpness}"
            )
        if not isinstance(self.divisor, int) or self.divisor < 1:
            raise ValueError(f"divisor must be a positive integer, got {self.divisor!r}")
        if not (math.isfinite(self.sigma_scale) and self.sigma_scale > 0):
            raise ValueError(f"sigma_scale must be a positive number, got {self.sigma_scale}")
        if self.start_noise not in START_NOISE:
            raise ValueError(f"start_noise must be one of {START_NOISE}, got {self.start_noise!r}")
        if self.ending not in ENDINGS:
            raise ValueError(f"ending must be one of {ENDINGS}, got {self.ending!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings: run parameters and the result key."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> GuidanceSettings:
        """Rebuild from `to_dict`; unknown keys are an error, missing ones take the reference values."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown guidance setting(s) {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**dict(values))


REFERENCE_GUIDANCE = GuidanceSettings()


def start_step(matched_step: torch.Tensor, divisor: int = REFERENCE_GUIDANCE.divisor) -> torch.Tensor:
    """k = max(1, ⌊t_m / divisor⌋): the step guided sampling starts from."""
    if divisor < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor}")
    return torch.clamp(torch.div(matched_step, divisor, rounding_mode="floor"), min=1)


def ldct_guidance_weight(sigma: torch.Tensor, guidance: GuidanceSettings = REFERENCE_GUIDANCE) -> torch.Tensor:
    """s1 = scale·e^{sharpness·σ̂²} / (offset + e^{sharpness·σ̂²}), written as scale / (1 + offset·e^{−sharpness·σ̂²})
    so it never overflows."""
    g = guidance
    return (g.s1_scale / (1.0 + g.s1_offset * torch.exp(-g.s1_sharpness * sigma.double() ** 2))).to(sigma.dtype)

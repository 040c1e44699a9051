"""Gaussian DDPM noise schedule (sigmoid β) and its derived constants, computed once per schedule.

Every sampling and training equation reads its constants from here by name, e.g.
`schedule.at("sqrt_alphas_cumprod", t)`, so the code mirrors NEED_SPEC.md §4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ScheduleSettings:
    """Settings of the sigmoid β schedule (*ref*: T = 1000, start −3, end 3, τ = 1)."""

    timesteps: int = 1000
    sigmoid_start: float = -3.0
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        if not self.sigmoid_end > self.sigmoid_start:
            raise ValueError(f"sigmoid_end ({self.sigmoid_end}) must exceed sigmoid_start ({self.sigmoid_start})")
        if self.sigmoid_tau <= 0:
            raise ValueError(f"sigmoid_tau must be positive, got {self.sigmoid_tau}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in checkpoints."""
        return asdict(self)


def sigmoid_beta_schedule(settings: ScheduleSettings) -> torch.Tensor:
    """β_t (float64, length T) whose ᾱ follows a shifted sigmoid in t (Jabri et al. 2022), as DGDiff uses."""
    start, end, tau = settings.sigmoid_start, settings.sigmoid_end, settings.sigmoid_tau
    steps = torch.linspace(0.0, 1.0, settings.timesteps + 1, dtype=torch.float64)
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    curve = (v_end - torch.sigmoid((steps * (end - start) + start) / tau)) / (v_end - v_start)
    alphas_cumprod = curve / curve[0]
    betas = 1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0.0, 0.999)


class DiffusionSchedule(nn.Module):
    """All per-step constants of a Gaussian DDPM, registered once as float32 buffers (moved with `.to`)."""

    # The buffers registered in __init__ (annotations only, for type checkers: nn.Module serves them).
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_std: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __init__(self, settings: ScheduleSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or ScheduleSettings()
        betas = sigmoid_beta_schedule(self.settings)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        constants = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_std": posterior_variance.clamp(min=1e-20).sqrt(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        for name, values in constants.items():
            self.register_buffer(name, values.to(torch.float32), persistent=False)

    @property
    def timesteps(self) -> int:
        """Number of diffusion steps T."""
        return self.settings.timesteps

    def at(self, name: str, t: torch.Tensor, ndim: int = 4) -> torch.Tensor:
        """Constant `name` at per-sample steps `t` (shape (b,)), shaped (b, 1, …) to broadcast over images."""
        values = getattr(self, name)[t.to(device=self.betas.device, dtype=torch.long)]
        return values.reshape(-1, *([1] * (ndim - 1)))

    def check_steps(self, t: torch.Tensor) -> None:
        """Raise if any step lies outside 0 … T−1."""
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.timesteps):
            raise ValueError(f"diffusion steps must lie in [0, {self.timesteps - 1}], got {t.min()}..{t.max()}")

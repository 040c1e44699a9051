"""Gaussian diffusion equations in v-parameterisation: forward noising, the v target and loss, x̂0 from v,
the posterior q(x_{t-1} | x_t, x̂0), and one plain ancestral step.

Tensors are (b, C, H, W) in model space [-1, 1]; `t` is a (b,) long tensor of per-sample steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from need_core.dgdiff.schedule import DiffusionSchedule


def q_sample(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε."""
    return schedule.at("sqrt_alphas_cumprod", t) * x0 + schedule.at("sqrt_one_minus_alphas_cumprod", t) * noise


def v_target(schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v-prediction target (Salimans & Ho 2022): v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x0."""
    return schedule.at("sqrt_alphas_cumprod", t) * noise - schedule.at("sqrt_one_minus_alphas_cumprod", t) * x0


def x0_from_v(schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Clean-image estimate from a v prediction: x̂0 = sqrt(ᾱ_t)·x_t − sqrt(1 − ᾱ_t)·v."""
    return schedule.at("sqrt_alphas_cumprod", t) * x_t - schedule.at("sqrt_one_minus_alphas_cumprod", t) * v


def v_prediction_loss(
    model: nn.Module, schedule: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Training objective: mean squared error between the network's v and the true v at x_t."""
    x_t = q_sample(schedule, x0, t, noise)
    return F.mse_loss(model(x_t, t), v_target(schedule, x0, t, noise))


def posterior_mean(schedule: DiffusionSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean of q(x_{t−1} | x_t, x0): coef1_t·x0 + coef2_t·x_t."""
    return schedule.at("posterior_mean_coef1", t) * x0 + schedule.at("posterior_mean_coef2", t) * x_t


def posterior_std(schedule: DiffusionSchedule, t: torch.Tensor) -> torch.Tensor:
    """σ_t = sqrt(β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t)), the std of q(x_{t−1} | x_t, x0); zero at t = 0."""
    return schedule.at("posterior_std", t) * (t > 0).to(schedule.betas.dtype).reshape(-1, 1, 1, 1)


def model_posterior_mean(
    model: nn.Module, schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """μ_θ(x_t, t): the posterior mean with x̂0 (from the network's v) clipped to [−1, 1]."""
    x0_hat = x0_from_v(schedule, x_t, t, model(x_t, t)).clamp(-1.0, 1.0)
    return posterior_mean(schedule, x0_hat, x_t, t)


def ancestral_step(
    model: nn.Module, schedule: DiffusionSchedule, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Plain DDPM step x_{t−1} = μ_θ(x_t, t) + σ_t·z (no noise at t = 0)."""
    return model_posterior_mean(model, schedule, x_t, t) + posterior_std(schedule, t) * noise

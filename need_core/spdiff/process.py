"""SPDiff forward (noising) process and reverse (Poisson-thinning) step, NEED_SPEC.md §2.

Both act on normalised transmission x (photons / incident count). Randomness always comes from
an explicit `torch.Generator` on the tensors' device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from need_core.spdiff.schedule import SPDiffSchedule


def photon_counts_tensor(
    schedule: SPDiffSchedule, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The schedule's λ_t as a tensor on `device`."""
    return torch.as_tensor(schedule.photon_counts, dtype=dtype, device=device)


def forward_process_sample(
    x0: torch.Tensor, steps: torch.Tensor, schedule: SPDiffSchedule, generator: torch.Generator
) -> torch.Tensor:
    """x_t = (Poisson(λ_t·x0 + σe²) − σe²) / λ_t per sample (x_t = x0 where t = 0); unbiased: E[x_t] = x0.

    `x0` is (B, ...), `steps` is (B,) integer steps. A negative Poisson rate (x0 far below 0)
    is floored at 0, since no count can have a negative mean.
    """
    if steps.ndim != 1 or steps.shape[0] != x0.shape[0]:
        raise ValueError(f"steps must have shape ({x0.shape[0]},) to match x0's batch, got {tuple(steps.shape)}")
    if bool((steps < 0).any()) or bool((steps >= schedule.num_steps).any()):
        raise ValueError(f"steps must lie in [0, {schedule.num_steps - 1}], got {steps.tolist()}")
    lam = photon_counts_tensor(schedule, x0.device, x0.dtype)[steps].view(-1, *([1] * (x0.ndim - 1)))
    sigma2 = schedule.electronic_noise_var
    rate = (lam * x0 + sigma2).clamp_min(0.0)
    noisy = (torch.poisson(rate, generator=generator) - sigma2) / lam
    is_clean = (steps == 0).view_as(lam)
    return torch.where(is_clean, x0, noisy)


def reverse_step(
    x_t: torch.Tensor,
    x0_hat: torch.Tensor,
    step: int,
    schedule: SPDiffSchedule,
    generators: Sequence[torch.Generator],
) -> torch.Tensor:
    """x_{t−1} = (λ_t·x_t + Poisson((λ_{t−1} − λ_t)·x̂0)) / λ_{t−1}: add the photons the lower dose lacks.

    `x_t` and `x0_hat` are (n, ...): one slice per entry of `generators`, CPU generators from which that slice's
    Poisson draws are taken on the CPU, so a slice's noise never depends on the other slices or the device.
    At steps 1 and 0 the next state is x̂0 itself. `x0_hat` must already be clamped to [0, 1].
    """
    if not 0 <= step < schedule.num_steps:
        raise ValueError(f"step must lie in [0, {schedule.num_steps - 1}], got {step}")
    if len(generators) != x_t.shape[0]:
        raise ValueError(f"one generator per slice is needed: {len(generators)} for {x_t.shape[0]} slices")
    if step <= 1:
        return x0_hat
    lam = schedule.photon_counts
    lam_t, lam_prev = float(lam[step]), float(lam[step - 1])
    rates = ((lam_prev - lam_t) * x0_hat).cpu()
    draws = [torch.poisson(rate, generator=g) for rate, g in zip(rates, generators, strict=True)]
    added = torch.stack(draws).to(x_t.device)
    return (lam_t * x_t + added) / lam_prev

"""DGDiff sampling: the doubly guided sampler of NEED_SPEC.md §4 (batched over slices, each with its own
start step and random stream) and plain DDIM sampling for the optional 256→512 stage."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from need_core.device import resolve_device
from need_core.dgdiff.diffusion import model_posterior_mean, posterior_std, q_sample, x0_from_v
from need_core.dgdiff.hu_window import as_image_stack, hu_to_unit, unit_to_hu
from need_core.dgdiff.matching import (
    REFERENCE_GUIDANCE,
    GuidanceSettings,
    estimate_image_noise,
    estimate_noise_sigma,
    ldct_guidance_weight,
    match_noise_step,
    start_step,
)
from need_core.dgdiff.schedule import DiffusionSchedule
from need_core.random_streams import slice_generators


class StartStepWarning(UserWarning):
    """Some slices matched a start step beyond the model's training and start at its highest trained step."""


class Refinement(NamedTuple):
    """Result of `refine`: refined images in HU (n, H, W) and each slice's start step k (n,)."""

    images_hu: np.ndarray
    start_steps: np.ndarray


def draw_noise(generators: Sequence[torch.Generator], image_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """One standard-normal image per generator, drawn on the CPU (identical on every device), stacked on `device`."""
    return torch.stack([torch.randn(tuple(image_shape), generator=g) for g in generators]).to(device)


def ldct_guidance(x: torch.Tensor, x_ld: torch.Tensor, s1: torch.Tensor, sqrt_alpha_bar: torch.Tensor) -> torch.Tensor:
    """LDCT guidance: x ← s1·x + (1 − s1)·sqrt(ᾱ_t)·x_LD (sqrt(ᾱ_t) applied once, unlike the reference code)."""
    return s1 * x + (1.0 - s1) * sqrt_alpha_bar * x_ld


def initial_reconstruction_guidance(mean: torch.Tensor, x_init: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Initial-reconstruction guidance: μ' = s2·μ_θ + (1 − s2)·x_init."""
    return s2 * mean + (1.0 - s2) * x_init


def guided_step(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x: torch.Tensor,
    t: torch.Tensor,
    x_ld: torch.Tensor,
    x_init: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """One doubly guided step x_t -> x_{t−1}; with s1 = s2 = 1 it is exactly the plain ancestral step."""
    x = ldct_guidance(x, x_ld, s1, schedule.at("sqrt_alphas_cumprod", t))
    mean = initial_reconstruction_guidance(model_posterior_mean(model, schedule, x, t), x_init, s2)
    return mean + posterior_std(schedule, t) * noise


@torch.inference_mode()
def guided_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    x_ld: torch.Tensor,
    x_init: torch.Tensor,
    start_steps: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    generators: Sequence[torch.Generator],
    residual_sigma: torch.Tensor | None = None,
    one_shot: bool = False,
) -> torch.Tensor:
    """Doubly guided sampling of a batch (b, C, H, W) in model space, slice i starting at step k_i.

    x_{k_i} = sqrt(ᾱ_k)·x_init + sqrt(1 − ᾱ_k)·ε; the loop runs t = max(k) − 1 … 0 and a slice joins
    once t < k_i. Each slice draws its noise from its own generator, in the same order whatever the batch.
    `residual_sigma` (b,): x_init's own noise; given, the start adds only sqrt(max(0, 1 − ᾱ_k − ᾱ_k·σ²))·ε.
    `one_shot`: return s2·x̂0 + (1 − s2)·x_init from the first step (t = k_i − 1, after the LDCT guidance) instead.
    """
    if not (x_ld.shape == x_init.shape and x_init.shape[0] == len(start_steps) == len(s1) == len(generators)):
        raise ValueError("x_ld, x_init, start_steps, s1 and generators must describe the same number of slices")
    schedule.check_steps(start_steps)
    device = x_init.device
    steps = start_steps.to(device)
    expand = (-1,) + (1,) * (x_init.ndim - 1)
    s1 = s1.to(device, x_init.dtype).reshape(expand)
    s2 = s2.to(device, x_init.dtype).reshape(expand)
    start_noise = draw_noise(generators, x_init.shape[1:], device)
    if residual_sigma is None:
        x = q_sample(schedule, x_init, steps, start_noise)
    else:
        keep = schedule.at("alphas_cumprod", steps)
        lacking = (1.0 - keep - keep * residual_sigma.to(device, x_init.dtype).reshape(expand) ** 2).clamp(min=0.0)
        x = keep.sqrt() * x_init + lacking.sqrt() * start_noise
    if one_shot:
        first = steps - 1
        x = ldct_guidance(x, x_ld, s1, schedule.at("sqrt_alphas_cumprod", first))
        x0_hat = x0_from_v(schedule, x, first, model(x, first)).clamp(-1.0, 1.0)
        return initial_reconstruction_guidance(x0_hat, x_init, s2)
    for step in range(int(steps.max()) - 1, -1, -1):
        active = torch.nonzero(steps > step).squeeze(1)
        t = torch.full((len(active),), step, device=device, dtype=torch.long)
        if step > 0:
            noise = draw_noise([generators[i] for i in active.tolist()], x_init.shape[1:], device)
        else:
            noise = torch.zeros_like(x_init[active])
        x[active] = guided_step(
            model, schedule, x[active], t, x_ld[active], x_init[active], s1[active], s2[active], noise
        )
    return x


def refine(
    model: nn.Module,
    x_ld_hu: np.ndarray | torch.Tensor,
    x_init_hu: np.ndarray | torch.Tensor,
    schedule: DiffusionSchedule,
    *,
    guidance: GuidanceSettings = REFERENCE_GUIDANCE,
    batch_size: int = 8,
    seed: int = 0,
    slice_ids: Sequence[int] | None = None,
    stream: Sequence[int] = (),
    device: str | torch.device | None = None,
    sigma: Sequence[float] | np.ndarray | None = None,
    max_step: int | None = None,
    on_batch: Callable[[list[int]], None] | None = None,
) -> Refinement:
    """DGDiff refinement of initial reconstructions x_init guided by the LDCT images x_LD, both (n, H, W) in HU.

    Per slice: σ̂ = std(x_init − x_LD) (or `sigma`, per slice in model units, when the caller knows the noise
    level better, e.g. DGDiff alone where x_init is x_LD), matched start step k, s1 from σ̂ (`guidance`; with its
    start_noise "residual", x_init's own noise from `estimate_image_noise` lowers the noise added), then doubly
    guided sampling in batches of `batch_size`. Slice i's noise comes from (seed, stream, slice_ids[i]) only
    (`random_streams`), so results do not depend on batching. `max_step`: the highest start step the model's training
    covered; slices matched above it (far more noise than it was trained for, or a smaller divisor) start there, with
    a StartStepWarning, so the network never runs at steps it never learned. `device` defaults to the model's device.
    `on_batch`, if given, is called with the `slice_ids` of each batch once it is refined (progress reporting).
    """
    x_ld_cpu, x_init_cpu = as_image_stack(x_ld_hu, "x_ld"), as_image_stack(x_init_hu, "x_init")
    if x_ld_cpu.shape != x_init_cpu.shape:
        raise ValueError(f"x_ld {tuple(x_ld_cpu.shape)} and x_init {tuple(x_init_cpu.shape)} must have the same shape")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = x_init_cpu.shape[0]
    slice_ids = list(range(n)) if slice_ids is None else [int(i) for i in slice_ids]
    if len(slice_ids) != n:
        raise ValueError(f"slice_ids has {len(slice_ids)} entries, expected one per slice ({n})")
    x_ld, x_init = hu_to_unit(x_ld_cpu, "x_ld"), hu_to_unit(x_init_cpu, "x_init")
    if sigma is None:
        noise_sigma = estimate_noise_sigma(x_ld, x_init)
    else:
        noise_sigma = torch.as_tensor(np.asarray(sigma, dtype=np.float32))
        if noise_sigma.shape != (n,):
            raise ValueError(f"sigma must hold one noise level per slice ({n}), got shape {tuple(noise_sigma.shape)}")
    steps = start_step(match_noise_step(schedule, noise_sigma * guidance.sigma_scale), guidance.divisor)
    if max_step is not None and int(steps.max()) > max_step:
        beyond = int((steps > max_step).sum())
        warnings.warn(
            f"{beyond} of {n} slices matched start steps up to {int(steps.max())} (divisor {guidance.divisor}), "
            f"beyond the steps the model was trained on (<= {max_step}): they start at {max_step}",
            StartStepWarning,
            stacklevel=2,
        )
        steps = steps.clamp(max=max_step)
    s1_per_slice = ldct_guidance_weight(noise_sigma, guidance)
    residual = estimate_image_noise(x_init) if guidance.start_noise == "residual" else None
    target = _model_device(model) if device is None else resolve_device(device)
    if _model_device(model) != target:
        raise ValueError(f"model is on {_model_device(model)} but device={target}: move it with model.to(device)")
    schedule = schedule.to(target)
    refined = torch.empty_like(x_init)
    order = torch.argsort(steps, descending=True, stable=True)
    for batch in order.split(batch_size):
        refined[batch] = guided_sample(
            model,
            schedule,
            x_ld[batch, None].to(target),
            x_init[batch, None].to(target),
            steps[batch],
            s1_per_slice[batch],
            torch.full((len(batch),), float(guidance.s2)),
            slice_generators(seed, [slice_ids[i] for i in batch.tolist()], stream),
            None if residual is None else residual[batch],
            one_shot=guidance.ending == "one_shot",
        )[:, 0].cpu()
        if on_batch is not None:
            on_batch([slice_ids[i] for i in batch.tolist()])
    return Refinement(unit_to_hu(refined).numpy(), steps.numpy())


@torch.inference_mode()
def ddim_sample(
    model: nn.Module,
    schedule: DiffusionSchedule,
    shape: tuple[int, ...],
    *,
    steps: int = 30,
    eta: float = 0.0,
    generator: torch.Generator,
    condition: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain DDIM sampling from pure noise in `steps` steps (*ref* 30), for the optional 256→512 stage.

    `shape` is (b, C, H, W) of the sample; `condition` (b, C', H, W), if given, is concatenated to the
    network input on the channel axis. Noise comes from the CPU `generator`; the model's device is used.
    """
    if not 1 <= steps <= schedule.timesteps:
        raise ValueError(f"steps must lie in [1, {schedule.timesteps}], got {steps}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    device = _model_device(model)
    schedule = schedule.to(device)
    times = torch.linspace(schedule.timesteps - 1, -1, steps + 1).round().long().tolist()
    x = torch.randn(shape, generator=generator).to(device)

    def network(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t if condition is None else torch.cat([x_t, condition.to(device)], dim=1), t)

    for now, after in zip(times[:-1], times[1:], strict=True):
        t = torch.full((shape[0],), now, device=device, dtype=torch.long)
        x0 = x0_from_v(schedule, x, t, network(x, t)).clamp(-1.0, 1.0)
        if after < 0:
            x = x0
            continue
        a_now, a_next = schedule.alphas_cumprod[now], schedule.alphas_cumprod[after]
        eps = (x - a_now.sqrt() * x0) / (1.0 - a_now).sqrt()
        sigma = eta * ((1.0 - a_now / a_next) * (1.0 - a_next) / (1.0 - a_now)).sqrt()
        noise = torch.randn(shape, generator=generator).to(device)
        x = a_next.sqrt() * x0 + (1.0 - a_next - sigma**2).sqrt() * eps + sigma * noise
    return x


def _model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device

"""SPDiff sampling with time-step matching (NEED_SPEC.md §2), batched over the slices of a chunk.

The low-dose measurement is the state x_{t*} at the matched step; each step predicts x̂0 for all
slices (in mini-batches of 3-slice stacks) and applies the reverse Poisson step to all at once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from need_core.device import resolve_device
from need_core.random_streams import slice_generators
from need_core.spdiff.dose_estimation import estimate_incident_count
from need_core.spdiff.model import SPDiffModel, SPDiffSettingsError
from need_core.spdiff.network import SPDiffUNet
from need_core.spdiff.process import reverse_step
from need_core.spdiff.schedule import SPDiffSchedule, check_incident_count, match_time_step
from need_core.spdiff.validation import TransmissionError, check_transmission_volume

ENDINGS = ("chain", "one_shot")
"""`chain`: the reverse chain t* … 0 (the spec); `one_shot`: the network's x̂0 at t* (one evaluation)."""


def neighbour_indices(num_slices: int) -> torch.Tensor:
    """(num_slices, 3) indices (previous, self, next); a missing neighbour at an end is replaced by the other one."""
    local = torch.arange(num_slices)
    if num_slices == 1:
        return torch.zeros(1, 3, dtype=torch.long)
    previous = torch.where(local > 0, local - 1, 1)
    following = torch.where(local < num_slices - 1, local + 1, num_slices - 2)
    return torch.stack([previous, local, following], dim=1)


def predict_clean(
    network: SPDiffUNet, state: torch.Tensor, step: int, neighbours: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """x̂0 = clamp(f_θ(x_t, t), 0, 1) for every slice of `state` (n, V, D), `batch_size` slices per network call."""
    estimates = []
    for start in range(0, state.shape[0], batch_size):
        stacks = state[neighbours[start : start + batch_size]]
        steps = torch.full((stacks.shape[0],), step, dtype=torch.long, device=state.device)
        estimates.append(network(stacks, steps))
    return torch.cat(estimates, dim=0).clamp_(0.0, 1.0)


class Denoised(NamedTuple):
    """Result of `denoise_volume`: the denoised transmission and the matched start step t* of the chain."""

    transmission: np.ndarray | torch.Tensor
    start_step: int


@torch.inference_mode()
def denoise_volume(
    model: SPDiffModel,
    transmission_ld: np.ndarray | torch.Tensor,
    incident_count: float | None,
    schedule: SPDiffSchedule | None = None,
    *,
    halo: tuple[bool, bool] = (False, False),
    batch_size: int = 8,
    seed: int = 0,
    slice_ids: Sequence[int] | None = None,
    stream: Sequence[int] = (),
    device: str | torch.device | None = None,
    ending: str = "chain",
) -> Denoised:
    """Denoise a chunk of contiguous low-dose sinograms (n, V, D) of normalised transmission.

    `ending` "chain" runs the reverse chain t* … 0 (the spec); "one_shot" returns the network's x̂0 at t* (one
    evaluation, no Poisson draws), which calibration may prefer at some doses (NEED_SPEC.md §4).
    `incident_count` is I0·d of the measurement (None: estimated from the data, see
    dose_estimation). When `halo[0]`/`halo[1]` is True the first/last slice is context only and is
    not returned. Output: denoised transmission in [0, 1], numpy for numpy input, else a tensor.
    Slice i's Poisson draws come from (seed, stream, slice_ids[i]) alone (`random_streams`), so they do
    not depend on the batch, the chunk or the device; `slice_ids` defaults to 0 … n−1.
    """
    schedule = _check_schedule(model, schedule)
    check_transmission_volume(transmission_ld, name="low-dose transmission")
    if tuple(transmission_ld.shape[1:]) != tuple(model.sinogram_shape):
        raise TransmissionError(
            f"sinograms are {tuple(transmission_ld.shape[1:])} (views, detectors) but the model was trained on "
            f"{tuple(model.sinogram_shape)}: use a model trained for this geometry"
        )
    skip_first, skip_last = bool(halo[0]), bool(halo[1])
    num_slices = transmission_ld.shape[0]
    if num_slices - skip_first - skip_last < 1:
        raise TransmissionError(f"{num_slices} slices with halo {halo} leave no slice to denoise")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if ending not in ENDINGS:
        raise ValueError(f"ending must be one of {ENDINGS}, got {ending!r}")
    slice_ids = list(range(num_slices)) if slice_ids is None else [int(s) for s in slice_ids]
    if len(slice_ids) != num_slices:
        raise ValueError(f"slice_ids has {len(slice_ids)} entries, expected one per slice ({num_slices})")
    if incident_count is None:
        incident_count = estimate_incident_count(transmission_ld, schedule.electronic_noise_var)
    start_step = match_time_step(check_incident_count(incident_count), schedule)

    run_device = resolve_device(device) if device is not None else model.device
    network = model.network if model.device == run_device else copy.deepcopy(model.network).to(run_device)
    network.eval()
    generators = slice_generators(seed, slice_ids, stream)
    state = torch.as_tensor(transmission_ld).to(device=run_device, dtype=torch.float32)
    neighbours = neighbour_indices(num_slices).to(run_device)
    if ending == "one_shot":
        state = predict_clean(network, state, start_step, neighbours, batch_size)
    else:
        for step in range(start_step, -1, -1):
            clean = predict_clean(network, state, step, neighbours, batch_size)
            state = reverse_step(state, clean, step, schedule, generators)
    denoised = state[skip_first : num_slices - skip_last]
    if isinstance(transmission_ld, np.ndarray):
        return Denoised(denoised.cpu().numpy(), start_step)
    return Denoised(denoised.to(transmission_ld.device), start_step)


def _check_schedule(model: SPDiffModel, schedule: SPDiffSchedule | None) -> SPDiffSchedule:
    """The model's own schedule; a different one passed in is refused (sampling must match training)."""
    if schedule is not None and schedule != model.schedule:
        raise SPDiffSettingsError(
            f"schedule {schedule} differs from the one the model was trained with: {model.schedule}"
        )
    return model.schedule

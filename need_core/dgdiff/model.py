"""A trained DGDiff model as one object (the EMA network with the schedule it was trained with), and `load_model`,
which builds it from a checkpoint dict without any file I/O (storage/checkpoints.py owns the file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from need_core.device import resolve_device
from need_core.dgdiff.network import UNet, UNetSettings
from need_core.dgdiff.schedule import DiffusionSchedule, ScheduleSettings
from need_core.training import load_network

CHECKPOINT_KIND = "dgdiff"
"""The `kind` of DGDiff checkpoints in storage/checkpoints.py."""


@dataclass
class DGDiffModel:
    """A refiner ready to sample: `refine(model.network, x_ld, x_init, model.schedule, max_step=model.max_start_step)`.

    `max_start_step`: the highest start step its training covered (None: every step)."""

    network: UNet
    schedule: DiffusionSchedule
    max_start_step: int | None = None


def check_schedule(schedule: DiffusionSchedule, blob: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose stored β differ from the ones its settings produce now."""
    if not torch.equal(schedule.get_buffer("betas").cpu(), blob["betas"].cpu()):
        raise ValueError("checkpoint's stored β schedule differs from the one its settings produce")


def load_model(blob: Mapping[str, Any], device: str | torch.device = "auto") -> DGDiffModel:
    """The eval-mode DGDiffModel (EMA weights) of a loaded checkpoint or a trainer's `snapshot()`, on `device`."""
    settings, target = blob["settings"], resolve_device(device)
    schedule = DiffusionSchedule(ScheduleSettings(**settings["schedule"]))
    check_schedule(schedule, blob)
    network = load_network(UNet(UNetSettings(**settings["network"])), blob["ema"], target)
    return DGDiffModel(network=network, schedule=schedule.to(target), max_start_step=settings.get("max_train_step"))

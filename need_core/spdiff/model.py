"""A trained SPDiff model as one object (network + the schedule and sinogram shape it was trained with), and
`load_model`, which builds it from a checkpoint dict without any file I/O (storage/checkpoints.py owns the file)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from need_core.spdiff.network import NetworkSettings, SPDiffUNet
from need_core.spdiff.schedule import SPDiffSchedule
from need_core.training import load_network

CHECKPOINT_KIND = "spdiff"
"""The `kind` of SPDiff checkpoints in storage/checkpoints.py."""


class SPDiffSettingsError(ValueError):
    """A payload or model does not match the settings it is used with."""


def model_settings(
    network: NetworkSettings, schedule: SPDiffSchedule, sinogram_shape: tuple[int, int]
) -> dict[str, Any]:
    """The JSON-able settings that define a trained SPDiff model: network, schedule, sinogram (views, detectors)."""
    return {
        "network": network.to_dict(),
        "schedule": schedule.to_dict(),
        "sinogram_shape": [int(sinogram_shape[0]), int(sinogram_shape[1])],
    }


@dataclass
class SPDiffModel:
    """A denoiser ready to sample: the network with the schedule and sinogram shape it was trained on."""

    network: SPDiffUNet
    schedule: SPDiffSchedule
    sinogram_shape: tuple[int, int]

    @property
    def device(self) -> torch.device:
        """Device holding the network's weights."""
        return next(self.network.parameters()).device

    @property
    def settings(self) -> dict[str, Any]:
        """The model's settings dict (as stored in checkpoints)."""
        return model_settings(self.network.settings, self.schedule, self.sinogram_shape)


def load_model(blob: Mapping[str, Any], device: str | torch.device = "auto") -> SPDiffModel:
    """The eval-mode SPDiffModel (EMA weights) of a loaded checkpoint or a trainer's `snapshot()`, on `device`."""
    missing = [key for key in ("settings", "ema") if key not in blob]
    if missing:
        raise SPDiffSettingsError(f"SPDiff payload lacks {missing}: expected keys settings and ema")
    settings = blob["settings"]
    try:
        network = SPDiffUNet(NetworkSettings.from_dict(settings["network"]))
        schedule = SPDiffSchedule.from_dict(settings["schedule"])
        shape = (int(settings["sinogram_shape"][0]), int(settings["sinogram_shape"][1]))
    except (KeyError, TypeError, IndexError) as err:
        raise SPDiffSettingsError(f"SPDiff payload settings are incomplete or malformed: {err}") from err
    return SPDiffModel(network=load_network(network, blob["ema"], device), schedule=schedule, sinogram_shape=shape)

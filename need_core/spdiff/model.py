"""A trained SPDiff model as one object (network + the schedule and sinogram shape it was trained with),
and its checkpoint payload without any file I/O (storage/checkpoints.py owns the file)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from need_core.device import resolve_device
from need_core.spdiff.network import NetworkSettings, SPDiffUNet
from need_core.spdiff.schedule import SPDiffSchedule

CHECKPOINT_KIND = "spdiff"
"""The `kind` of SPDiff checkpoints in storage/checkpoints.py."""


class SPDiffSettingsError(ValueError):
    """A payload or model does not match the settings it is used with."""


def model_settings(network: NetworkSettings, schedule: SPDiffSchedule, sinogram_shape: tuple[int, int]) -> dict[str, Any]:
    """The JSON-able settings that define a trained SPDiff model: network, schedule, sinogram (views, detectors)."""
    return {
        "network": network.to_dict(),
        "schedule": schedule.to_dict(),
        "sinogram_shape": [int(sinogram_shape[0]), int(sinogram_shape[1])],
    }


def check_settings_match(stored: Mapping[str, Any], expected: Mapping[str, Any] | None) -> None:
    """Raise SPDiffSettingsError naming every key of `expected` whose stored value differs."""
    if expected is None:
        return
    mismatched = {key: (stored.get(key), value) for key, value in expected.items() if stored.get(key) != value}
    if mismatched:
        details = "; ".join(f"{key}: stored {old!r}, expected {new!r}" for key, (old, new) in mismatched.items())
        raise SPDiffSettingsError(f"SPDiff payload was made with other settings: {details}")


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


def load_model_from_payload(
    payload: Mapping[str, Any],
    device: str | torch.device = "auto",
    use_ema: bool = True,
    expected_settings: Mapping[str, Any] | None = None,
) -> SPDiffModel:
    """Build an eval-mode SPDiffModel from a checkpoint payload (EMA weights by default)."""
    for key in ("settings", "model", "ema"):
        if key not in payload:
            raise SPDiffSettingsError(f"SPDiff payload lacks {key!r}: expected keys settings, model, ema")
    settings = payload["settings"]
    check_settings_match(settings, expected_settings)
    try:
        network = SPDiffUNet(NetworkSettings.from_dict(settings["network"]))
        schedule = SPDiffSchedule.from_dict(settings["schedule"])
        shape = tuple(int(n) for n in settings["sinogram_shape"])
    except (KeyError, TypeError) as err:
        raise SPDiffSettingsError(f"SPDiff payload settings are incomplete or malformed: {err}") from err
    network.load_state_dict(payload["ema" if use_ema else "model"])
    network.to(resolve_device(device)).eval()
    return SPDiffModel(network=network, schedule=schedule, sinogram_shape=shape)

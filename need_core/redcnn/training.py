"""Supervised RED-CNN training on paired (low-dose, normal-dose) HU images: random patches, Adam, MSE loss
in network units (as the original), and exact resume (the shared protocol of need_core.training; writing the file
is `storage.checkpoints`' job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Self

import numpy as np
import torch
import torch.nn.functional as F

from need_core.redcnn.hu_scale import RedCNNInputError, as_hu_stack, hu_to_net
from need_core.redcnn.model import CHECKPOINT_KIND, load_model
from need_core.redcnn.network import PROFILES, RedCNN, RedCNNSettings
from need_core.training import Trainer, random_patches


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes a RED-CNN training run; stored in the checkpoint and compared on resume.

    `paired_dose` records the dose fraction of the low-dose inputs (provenance and method name; unused in training).
    """

    profile: str = "cpu"
    learning_rate: float = 1e-4
    batch_size: int = 16
    patch_size: int = 64
    random_flip: bool = True
    paired_dose: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown RED-CNN profile {self.profile!r}: expected one of {sorted(PROFILES)}")
        if self.learning_rate <= 0 or self.batch_size < 1:
            raise ValueError(
                f"learning_rate must be > 0 and batch_size >= 1, got {self.learning_rate}, {self.batch_size}"
            )
        if self.patch_size < self.network.min_image_size:
            raise ValueError(
                f"patch_size {self.patch_size} is below the {self.profile!r} profile's minimum "
                f"{self.network.min_image_size}"
            )
        if self.paired_dose is not None and not 0.0 < self.paired_dose <= 1.0:
            raise ValueError(f"paired_dose must be a dose fraction in (0, 1], got {self.paired_dose}")

    @property
    def network(self) -> RedCNNSettings:
        """Architecture of the profile."""
        return PROFILES[self.profile]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for the checkpoint, with the profile's architecture."""
        return {**asdict(self), "network": self.network.to_dict()}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> TrainSettings:
        """Inverse of `to_dict`; the stored architecture must still be the named profile's."""
        settings = cls(**{key: value for key, value in stored.items() if key != "network"})
        if settings.network.to_dict() != stored.get("network"):
            raise ValueError(f"profile {settings.profile!r} no longer has the architecture stored in the checkpoint")
        return settings


def method_name(settings: TrainSettings) -> str:
    """Name of the baseline in result tables: `redcnn_25` for a model trained on 25 %-dose inputs."""
    if settings.paired_dose is None:
        return "redcnn"
    return f"redcnn_{round(settings.paired_dose * 100):d}"


class PairedImages(NamedTuple):
    """RED-CNN's training set: low-dose inputs and their normal-dose targets, paired slice by slice, (n, H, W) in HU."""

    inputs_hu: np.ndarray | torch.Tensor
    targets_hu: np.ndarray | torch.Tensor


class RedCNNTrainer(Trainer[TrainSettings, RedCNN]):
    """RED-CNN training on paired images (no EMA: the baseline as published); `generators["batch"]` draws the
    patches and flips."""

    kind = CHECKPOINT_KIND

    def __init__(self, settings: TrainSettings, pairs: PairedImages, device: str | torch.device = "auto") -> None:
        self.inputs, self.targets = paired_net_images(pairs.inputs_hu, pairs.targets_hu, settings.patch_size)
        super().__init__(settings, lambda: RedCNN(settings.network), device, keep_ema=False)
        self.generators = {"batch": torch.Generator(device="cpu").manual_seed(settings.seed)}

    def loss(self) -> torch.Tensor:
        """MSE (network units) between the network's output and the targets on fresh matching patches."""
        s = self.train_settings
        patch = (s.patch_size, s.patch_size)
        batch_in, batch_target = random_patches(
            [self.inputs, self.targets], s.batch_size, patch, s.random_flip, self.generators["batch"]
        )
        return F.mse_loss(self.network(batch_in.to(self.device)), batch_target.to(self.device))

    def model(self) -> RedCNN:
        """An eval-mode copy of the trained network."""
        return load_model(self.snapshot(), self.device)

    @classmethod
    def from_payload(cls, blob: Mapping[str, Any], pairs: PairedImages, device: str | torch.device = "auto") -> Self:
        """Resume exactly from `{"settings": ..., **payload()}` (a loaded checkpoint)."""
        return cls(TrainSettings.from_dict(blob["settings"]), pairs, device).restore(blob)


def paired_net_images(
    inputs_hu: np.ndarray | torch.Tensor, targets_hu: np.ndarray | torch.Tensor, patch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a paired training set (same shape, finite HU, at least one patch large); return it in network units."""
    inputs = as_hu_stack(inputs_hu, "low-dose inputs")
    targets = as_hu_stack(targets_hu, "normal-dose targets")
    if inputs.shape != targets.shape:
        raise RedCNNInputError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must be paired images of one shape"
        )
    if patch_size > min(inputs.shape[-2:]):
        raise RedCNNInputError(f"patch_size {patch_size} exceeds the training images {tuple(inputs.shape[-2:])}")
    return hu_to_net(inputs), hu_to_net(targets)

"""Training DGDiff unconditionally on normal-dose images (NEED_SPEC.md §4–5): v-prediction loss, Adam, EMA,
optional restriction of the sampled steps to those guided sampling can reach, and exact resume (the shared
protocol of need_core.training; writing the file is `storage.checkpoints`' job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np
import torch

from need_core.dgdiff.diffusion import v_prediction_loss
from need_core.dgdiff.hu_window import as_image_stack, hu_to_unit
from need_core.dgdiff.matching import REFERENCE_GUIDANCE, match_noise_step, start_step
from need_core.dgdiff.model import CHECKPOINT_KIND, DGDiffModel, check_schedule, load_model
from need_core.dgdiff.network import PROFILES, UNet, UNetSettings
from need_core.dgdiff.schedule import DiffusionSchedule, ScheduleSettings
from need_core.training import Trainer, random_patches, with_settings_completed


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes a DGDiff training run; stored in the checkpoint and compared on resume."""

    profile: str = "cpu"
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    learning_rate: float = 1e-4
    batch_size: int = 8
    crop_size: int | None = None
    random_flip: bool = True
    random_rotate: bool = False
    ema_decay: float = 0.995
    ema_start: int = 100
    grad_clip: float = 1.0
    max_train_step: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown DGDiff profile {self.profile!r}: expected one of {sorted(PROFILES)}")
        if self.learning_rate <= 0 or self.batch_size < 1 or self.grad_clip <= 0:
            raise ValueError("learning_rate and grad_clip must be positive and batch_size >= 1")
        if not 0.0 <= self.ema_decay < 1.0 or self.ema_start < 0:
            raise ValueError(f"ema_decay must lie in [0, 1) and ema_start >= 0, got {self.ema_decay}, {self.ema_start}")
        if self.max_train_step is not None and not 1 <= self.max_train_step <= self.schedule.timesteps:
            raise ValueError(f"max_train_step must lie in [1, {self.schedule.timesteps}], got {self.max_train_step}")
        if self.crop_size is not None and self.crop_size % self.network.size_multiple:
            raise ValueError(f"crop_size {self.crop_size} must be a multiple of {self.network.size_multiple}")

    @property
    def network(self) -> UNetSettings:
        """Architecture of the profile."""
        return PROFILES[self.profile]

    @property
    def train_steps_limit(self) -> int:
        """Steps t are drawn uniformly from [0, this)."""
        return self.max_train_step or self.schedule.timesteps

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for the checkpoint: training settings, schedule and the profile's architecture."""
        return {**asdict(self), "schedule": self.schedule.to_dict(), "network": self.network.to_dict()}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> TrainSettings:
        """Inverse of `to_dict` (the stored architecture must still match the named profile)."""
        values = {key: value for key, value in stored.items() if key != "network"}
        settings = cls(**{**values, "schedule": ScheduleSettings(**stored["schedule"])})
        if settings.network.to_dict() != stored.get("network"):
            raise ValueError(f"profile {settings.profile!r} no longer has the architecture stored in the checkpoint")
        return settings


def max_reachable_step(
    schedule: DiffusionSchedule, max_noise_sigma: float, divisor: int = REFERENCE_GUIDANCE.divisor
) -> int:
    """Number of steps guided sampling can visit for noise estimates σ̂ <= max_noise_sigma (t = 0 … k−1)."""
    matched = match_noise_step(schedule, torch.tensor([float(max_noise_sigma)]))
    return int(start_step(matched, divisor)[0])


class DGDiffTrainer(Trainer[TrainSettings, DGDiffModel]):
    """DGDiff training on normal-dose images (n, H, W) in HU; `generators["batch"]` draws the crops, flips, steps t
    and noise."""

    kind = CHECKPOINT_KIND

    def __init__(
        self, settings: TrainSettings, images_hu: np.ndarray | torch.Tensor, device: str | torch.device = "auto"
    ) -> None:
        self.images = hu_to_unit(as_image_stack(images_hu, "training images"), "training images")
        crop = settings.crop_size
        if crop is not None and (crop > self.images.shape[-2] or crop > self.images.shape[-1]):
            raise ValueError(f"crop_size {crop} exceeds the training images {tuple(self.images.shape[-2:])}")
        super().__init__(settings, lambda: UNet(settings.network), device, keep_ema=True, grad_clip=settings.grad_clip)
        self.schedule = DiffusionSchedule(settings.schedule).to(self.device)
        self.generators = {"batch": torch.Generator(device="cpu").manual_seed(settings.seed)}

    def loss(self) -> torch.Tensor:
        """The v-prediction loss of a fresh batch at random steps t < `train_steps_limit`."""
        s, generator = self.train_settings, self.generators["batch"]
        crop = None if s.crop_size is None else (s.crop_size, s.crop_size)
        (batch,) = random_patches([self.images], s.batch_size, crop, s.random_flip, generator, s.random_rotate)
        t = torch.randint(s.train_steps_limit, (batch.shape[0],), generator=generator)
        noise = torch.randn(batch.shape, generator=generator)
        return v_prediction_loss(
            self.network, self.schedule, batch.to(self.device), t.to(self.device), noise.to(self.device)
        )

    def ema_decay(self) -> float:
        """Every step: a copy of the weights for the first `ema_start` steps, the `ema_decay` average afterwards."""
        return self.train_settings.ema_decay if self.step > self.train_settings.ema_start else 0.0

    def model(self) -> DGDiffModel:
        """An eval-mode DGDiffModel of the EMA weights."""
        return load_model(self.snapshot(), self.device)

    def payload(self) -> dict[str, Any]:
        """The shared payload plus the schedule's β, which a load compares with the ones its settings produce."""
        return {**super().payload(), "betas": self.schedule.betas.cpu()}

    @classmethod
    def from_payload(
        cls, blob: Mapping[str, Any], images_hu: np.ndarray | torch.Tensor, device: str | torch.device = "auto"
    ) -> Self:
        """Resume exactly from `{"settings": ..., **payload()}` (a loaded checkpoint) with the same β schedule.
        Settings stored before a field existed read as its default (no rotations)."""
        settings = TrainSettings.from_dict(blob["settings"])
        trainer = cls(settings, images_hu, device).restore(with_settings_completed(blob, settings.to_dict()))
        check_schedule(trainer.schedule, blob)
        return trainer

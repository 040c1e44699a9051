"""Training DGDiff unconditionally on normal-dose images (NEED_SPEC.md §4–5): v-prediction loss, Adam, EMA,
optional restriction of the sampled steps to those guided sampling can reach, and exact-resume checkpoints.

need_core only builds and reads the checkpoint payload; writing the file is `storage.checkpoints`' job.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch

from need_core.device import resolve_device
from need_core.dgdiff.diffusion import v_prediction_loss
from need_core.dgdiff.hu_window import as_image_stack, hu_to_unit
from need_core.dgdiff.matching import match_noise_step, start_step
from need_core.dgdiff.network import PROFILES, UNet, UNetSettings
from need_core.dgdiff.schedule import DiffusionSchedule, ScheduleSettings


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes a DGDiff training run; stored in the checkpoint and compared on resume."""

    profile: str = "cpu"
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    learning_rate: float = 1e-4
    batch_size: int = 8
    crop_size: int | None = None
    random_flip: bool = True
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
    def from_dict(cls, stored: Mapping[str, Any]) -> "TrainSettings":
        """Inverse of `to_dict` (the stored architecture must still match the named profile)."""
        values = {key: value for key, value in stored.items() if key != "network"}
        settings = cls(**{**values, "schedule": ScheduleSettings(**stored["schedule"])})
        if settings.network.to_dict() != stored.get("network"):
            raise ValueError(f"profile {settings.profile!r} no longer has the architecture stored in the checkpoint")
        return settings


def max_reachable_step(schedule: DiffusionSchedule, max_noise_sigma: float, divisor: int = 10) -> int:
    """Number of steps guided sampling can visit for noise estimates σ̂ <= max_noise_sigma (t = 0 … k−1)."""
    matched = match_noise_step(schedule, torch.tensor([float(max_noise_sigma)]))
    return int(start_step(matched, divisor)[0])


class DGDiffTrainer:
    """Owns the network, its EMA copy, the optimizer, the schedule, the step count and the random stream."""

    def __init__(self, settings: TrainSettings, device: str | torch.device = "auto") -> None:
        self.settings = settings
        self.device = resolve_device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        torch.manual_seed(settings.seed)  # weight initialisation only; training draws use self.generator
        self.model = UNet(settings.network).to(self.device)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.schedule = DiffusionSchedule(settings.schedule).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.learning_rate)
        self.step = 0

    def fit(
        self,
        images_hu: np.ndarray | torch.Tensor,
        steps: int,
        on_step: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train `steps` iterations on normal-dose images (n, H, W) in HU; returns the loss of each iteration."""
        images = hu_to_unit(as_image_stack(images_hu, "training images"), "training images")
        crop = self.settings.crop_size
        if crop is not None and (crop > images.shape[-2] or crop > images.shape[-1]):
            raise ValueError(f"crop_size {crop} exceeds the training images {tuple(images.shape[-2:])}")
        losses = []
        for _ in range(steps):
            loss = self.train_step(self.sample_batch(images))
            losses.append(loss)
            if on_step is not None:
                on_step(self.step, loss)
        return losses

    def sample_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Draw a (b, 1, h, w) batch from model-space images: random slices, crops and flips from the generator."""
        s, g = self.settings, self.generator
        picks = torch.randint(images.shape[0], (s.batch_size,), generator=g)
        height, width = images.shape[-2:]
        crop_h, crop_w = (s.crop_size, s.crop_size) if s.crop_size else (height, width)
        tops = torch.randint(height - crop_h + 1, (s.batch_size,), generator=g)
        lefts = torch.randint(width - crop_w + 1, (s.batch_size,), generator=g)
        flips = torch.rand(s.batch_size, generator=g) < 0.5
        batch = []
        for pick, top, left, flip in zip(picks.tolist(), tops.tolist(), lefts.tolist(), flips.tolist()):
            patch = images[pick, top : top + crop_h, left : left + crop_w]
            batch.append(patch.flip(-1) if flip and s.random_flip else patch)
        return torch.stack(batch)[:, None]

    def train_step(self, batch: torch.Tensor) -> float:
        """One optimisation step of the v-prediction loss on a model-space batch (b, 1, h, w); returns the loss."""
        s = self.settings
        t = torch.randint(s.train_steps_limit, (batch.shape[0],), generator=self.generator)
        noise = torch.randn(batch.shape, generator=self.generator)
        self.model.train()
        loss = v_prediction_loss(
            self.model, self.schedule, batch.to(self.device), t.to(self.device), noise.to(self.device)
        )
        if not torch.isfinite(loss):
            raise FloatingPointError(f"DGDiff training loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.update_ema()
        return float(loss.item())

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of the weights (decay `ema_decay`); before `ema_start` steps the EMA simply copies the model."""
        decay = self.settings.ema_decay if self.step > self.settings.ema_start else 0.0
        for ema_param, param in zip(self.ema_model.parameters(), self.model.parameters()):
            ema_param.lerp_(param, 1.0 - decay)

    def checkpoint_settings(self) -> dict[str, Any]:
        """Settings to store with (and demand from) a checkpoint."""
        return self.settings.to_dict()

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, EMA, optimizer, step, random state and the schedule's β."""
        return {
            "model": self.model.state_dict(),
            "ema_model": self.ema_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng_state": self.generator.get_state(),
            "betas": self.schedule.betas.cpu(),
        }

    @classmethod
    def from_checkpoint(cls, blob: Mapping[str, Any], device: str | torch.device = "auto") -> "DGDiffTrainer":
        """Rebuild a trainer from a loaded checkpoint dict so training continues bit-exactly."""
        trainer = cls(TrainSettings.from_dict(blob["settings"]), device)
        _check_schedule(trainer.schedule, blob)
        trainer.model.load_state_dict(blob["model"])
        trainer.ema_model.load_state_dict(blob["ema_model"])
        trainer.optimizer.load_state_dict(blob["optimizer"])
        trainer.step = int(blob["step"])
        trainer.generator.set_state(blob["rng_state"])
        return trainer


def model_from_checkpoint(
    blob: Mapping[str, Any], device: str | torch.device = "auto"
) -> tuple[UNet, DiffusionSchedule]:
    """The EMA network (eval mode) and schedule of a loaded checkpoint, ready for `refine`."""
    settings = TrainSettings.from_dict(blob["settings"])
    target = resolve_device(device)
    model = UNet(settings.network)
    model.load_state_dict(blob["ema_model"])
    schedule = DiffusionSchedule(settings.schedule)
    _check_schedule(schedule, blob)
    return model.to(target).eval().requires_grad_(False), schedule.to(target)


def _check_schedule(schedule: DiffusionSchedule, blob: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose stored β differ from the ones its settings produce now."""
    if not torch.equal(schedule.betas.cpu(), blob["betas"].cpu()):
        raise ValueError("checkpoint's stored β schedule differs from the one its settings produce")

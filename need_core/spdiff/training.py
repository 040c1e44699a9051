"""Train SPDiff on normal-dose transmission only (NEED_SPEC.md §2): random slice triplets and patches,
noised by the forward process at a random step, L1 on x̂0, Adam, EMA; resumable bit-exactly from a payload."""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from need_core.device import resolve_device
from need_core.spdiff.model import SPDiffModel, SPDiffSettingsError, check_settings_match, model_settings
from need_core.spdiff.network import DOMAINS, NetworkSettings, SPDiffUNet, network_profile, to_log_domain
from need_core.spdiff.process import forward_process_sample
from need_core.spdiff.schedule import SPDiffSchedule
from need_core.spdiff.validation import check_transmission_volume


@dataclass(frozen=True)
class TrainingSettings:
    """Optimisation settings; reference values (NEED_SPEC.md §2) as defaults, patch size for cheap CPU steps.

    `loss_domain="log"` takes the L1 between −log x̂0 and −log x0: the error FBP actually sees (relative error
    in transmission), instead of the *ref* L1 on transmission, which all but ignores the dark rays."""

    learning_rate: float = 2e-4
    batch_size: int = 8
    patch_shape: tuple[int, int] | None = (64, 64)
    ema_decay: float = 0.995
    ema_start: int = 2000
    ema_every: int = 10
    loss_domain: str = "transmission"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.patch_shape is not None and (len(self.patch_shape) != 2 or min(self.patch_shape) < 4):
            raise ValueError(f"patch_shape must be None or (views, detectors) each >= 4, got {self.patch_shape!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loss_domain not in DOMAINS:
            raise ValueError(f"loss_domain must be one of {DOMAINS}, got {self.loss_domain!r}")
        if self.ema_start < 0 or self.ema_every < 1:
            raise ValueError(f"ema_start must be >= 0 and ema_every >= 1, got {self.ema_start}, {self.ema_every}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for checkpoints."""
        values = asdict(self)
        values["patch_shape"] = None if self.patch_shape is None else list(self.patch_shape)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainingSettings":
        """Rebuild from `to_dict` output."""
        values = dict(values)
        if values.get("patch_shape") is not None:
            values["patch_shape"] = tuple(values["patch_shape"])
        return cls(**values)


def l1_loss(estimate: torch.Tensor, clean: torch.Tensor, domain: str) -> torch.Tensor:
    """Mean absolute error of transmission estimates, in transmission or post-log (`domain`)."""
    if domain == "log":
        return F.l1_loss(to_log_domain(estimate), to_log_domain(clean))
    return F.l1_loss(estimate, clean)


class TripletPatchSampler:
    """Random (3-slice, patch) windows from contiguous runs of slices; a missing neighbour at a run's end
    is replaced by the other neighbour (the same edge rule as the sampler)."""

    def __init__(self, volumes: Sequence[Any], patch_shape: tuple[int, int] | None) -> None:
        arrays = [np.asarray(volume, dtype=np.float32) for volume in volumes]
        if not arrays:
            raise ValueError("training needs at least one volume of normal-dose transmission")
        for index, array in enumerate(arrays):
            check_transmission_volume(array, name=f"training volume {index}")
            if array.shape[0] < 2:
                raise ValueError(f"training volume {index} has {array.shape[0]} slice; each run needs >= 2 slices")
        shapes = {array.shape[1:] for array in arrays}
        if len(shapes) != 1:
            raise ValueError(f"all training volumes must share one sinogram shape (views, detectors), got {sorted(shapes)}")
        self.sinogram_shape: tuple[int, int] = tuple(int(n) for n in arrays[0].shape[1:])
        self.patch_shape = self.sinogram_shape if patch_shape is None else tuple(patch_shape)
        if any(p > s for p, s in zip(self.patch_shape, self.sinogram_shape)):
            raise ValueError(f"patch_shape {self.patch_shape} exceeds the sinogram shape {self.sinogram_shape}")
        self.data = torch.from_numpy(np.concatenate(arrays, axis=0))
        self.triplets = torch.from_numpy(_triplet_table([array.shape[0] for array in arrays]))

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A (batch, 3, patch_views, patch_detectors) batch of clean slice triplets."""
        height, width = self.patch_shape
        views, detectors = self.sinogram_shape
        centres = torch.randint(len(self.triplets), (batch_size,), generator=generator)
        top = torch.randint(views - height + 1, (batch_size,), generator=generator)
        left = torch.randint(detectors - width + 1, (batch_size,), generator=generator)
        slices = self.triplets[centres][:, :, None, None]
        rows = (top[:, None] + torch.arange(height))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width))[:, None, None, :]
        return self.data[slices, rows, cols]


def _triplet_table(run_lengths: Sequence[int]) -> np.ndarray:
    """Global slice indices (previous, centre, next) for every slice of consecutive runs, edges mirrored."""
    rows = []
    offset = 0
    for length in run_lengths:
        local = np.arange(length)
        previous = np.where(local > 0, local - 1, 1)
        following = np.where(local < length - 1, local + 1, length - 2)
        rows.append(np.stack([previous, local, following], axis=1) + offset)
        offset += length
    return np.concatenate(rows, axis=0)


class Trainer:
    """SPDiff training state (weights, EMA, Adam, step, RNG) with a step function and a file-free payload."""

    def __init__(
        self,
        volumes: Sequence[Any],
        network: NetworkSettings | str = "cpu",
        schedule: SPDiffSchedule | None = None,
        training: TrainingSettings | None = None,
        device: str | torch.device = "auto",
    ) -> None:
        self.network_settings = network_profile(network) if isinstance(network, str) else network
        self.schedule = schedule or SPDiffSchedule()
        self.training = training or TrainingSettings()
        self.device = resolve_device(device)
        self.data = TripletPatchSampler(volumes, self.training.patch_shape)
        with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the caller's global RNG
            torch.manual_seed(self.training.seed)
            self.network = SPDiffUNet(self.network_settings).to(self.device)
        self.ema_network = copy.deepcopy(self.network).requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=self.training.learning_rate)
        self.step = 0
        self.batch_generator = torch.Generator().manual_seed(self.training.seed)
        self.noise_generator = torch.Generator(device=self.device).manual_seed(self.training.seed + 1)

    @property
    def settings(self) -> dict[str, Any]:
        """Model settings plus training settings: what a checkpoint of this trainer must match."""
        return {
            **model_settings(self.network_settings, self.schedule, self.data.sinogram_shape),
            "training": self.training.to_dict(),
        }

    def train_step(self) -> float:
        """One optimisation step on a fresh random batch; returns its L1 loss."""
        clean = self.data.sample(self.training.batch_size, self.batch_generator).to(self.device)
        steps = torch.randint(
            self.schedule.num_steps, (clean.shape[0],), generator=self.noise_generator, device=self.device
        )
        noisy = forward_process_sample(clean, steps, self.schedule, self.noise_generator)
        self.network.train()
        loss = l1_loss(self.network(noisy, steps), clean[:, 1], self.training.loss_domain)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        if self.step % self.training.ema_every == 0:
            self._update_ema()
        return float(loss.detach())

    def train(self, num_steps: int, on_step: Callable[[int, float], None] | None = None) -> list[float]:
        """Run `num_steps` steps; `on_step(step, loss)` is called after each (for logging)."""
        losses = []
        for _ in range(num_steps):
            losses.append(self.train_step())
            if on_step is not None:
                on_step(self.step, losses[-1])
        return losses

    @torch.no_grad()
    def _update_ema(self) -> None:
        """Before `ema_start` the EMA copies the weights; afterwards ema ← decay·ema + (1 − decay)·weights."""
        decay = self.training.ema_decay if self.step >= self.training.ema_start else 0.0
        for ema_param, param in zip(self.ema_network.parameters(), self.network.parameters()):
            ema_param.lerp_(param, 1.0 - decay)

    def model(self, use_ema: bool = True) -> SPDiffModel:
        """An eval-mode copy of the (EMA) network bundled with its schedule and sinogram shape."""
        network = copy.deepcopy(self.ema_network if use_ema else self.network).eval()
        return SPDiffModel(network=network, schedule=self.schedule, sinogram_shape=self.data.sinogram_shape)

    def state_payload(self) -> dict[str, Any]:
        """Everything to resume exactly, except `settings` (pass `self.settings` alongside):
        weights, EMA weights, optimizer, step and both RNG states."""
        return {
            "model": copy.deepcopy(self.network.state_dict()),
            "ema": copy.deepcopy(self.ema_network.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "step": self.step,
            "batch_rng_state": self.batch_generator.get_state(),
            "noise_rng_state": self.noise_generator.get_state(),
        }

    @classmethod
    def from_payload(
        cls,
        payload: Mapping[str, Any],
        volumes: Sequence[Any],
        device: str | torch.device = "auto",
        expected_settings: Mapping[str, Any] | None = None,
    ) -> "Trainer":
        """Resume a trainer from a payload holding `settings` and `state_payload()` keys (e.g. a loaded checkpoint)."""
        required = ("settings", "model", "ema", "optimizer", "step", "batch_rng_state", "noise_rng_state")
        missing = [key for key in required if key not in payload]
        if missing:
            raise SPDiffSettingsError(f"SPDiff training payload lacks {missing}: expected keys {list(required)}")
        settings = payload["settings"]
        check_settings_match(settings, expected_settings)
        trainer = cls(
            volumes,
            network=NetworkSettings.from_dict(settings["network"]),
            schedule=SPDiffSchedule.from_dict(settings["schedule"]),
            training=TrainingSettings.from_dict(settings["training"]),
            device=device,
        )
        if list(trainer.data.sinogram_shape) != list(settings["sinogram_shape"]):
            raise SPDiffSettingsError(
                f"training volumes have sinogram shape {list(trainer.data.sinogram_shape)}, "
                f"but the payload was trained on {list(settings['sinogram_shape'])}"
            )
        trainer.network.load_state_dict(payload["model"])
        trainer.ema_network.load_state_dict(payload["ema"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.step = int(payload["step"])
        trainer.batch_generator.set_state(payload["batch_rng_state"].cpu())
        trainer.noise_generator.set_state(payload["noise_rng_state"].cpu())
        return trainer

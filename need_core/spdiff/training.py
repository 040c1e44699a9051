"""Train SPDiff on normal-dose transmission only (NEED_SPEC.md §2): random slice triplets and patches,
noised by the forward process at a random step, L1 on x̂0, Adam, EMA; resumable bit-exactly from a payload
(the shared protocol of need_core.training)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from need_core.spdiff.model import CHECKPOINT_KIND, SPDiffModel, load_model
from need_core.spdiff.network import DOMAINS, NetworkSettings, SPDiffUNet, network_profile, to_log_domain
from need_core.spdiff.process import forward_process_sample
from need_core.spdiff.schedule import SPDiffSchedule
from need_core.spdiff.validation import check_transmission_volume
from need_core.training import Trainer, with_settings_completed

_MODEL_FIELDS = ("network", "schedule")


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes an SPDiff training run: network, schedule and optimisation; reference values
    (NEED_SPEC.md §2) as defaults, patch size for cheap CPU steps.

    `loss_domain="log"` takes the L1 between −log x̂0 and −log x0: the error FBP actually sees (relative error
    in transmission), instead of the *ref* L1 on transmission, which all but ignores the dark rays.

    Augmentations that keep the physics right (all off by default, so older runs resume unchanged), applied to the
    clean normal-dose triplets before the forward process adds its noise: `view_shift` draws patches anywhere on the
    circle of views, wrapping around (the object rotated; only for scans over a full turn), `mirror` reverses views
    and detector bins together for half the patches (the object mirrored; a centred detector), `thickness_scale`
    (low, high) raises transmission to a log-uniform power in that range (line integrals scaled: thinner or thicker
    bodies)."""

    network: NetworkSettings = field(default_factory=lambda: network_profile("cpu"))
    schedule: SPDiffSchedule = field(default_factory=SPDiffSchedule)
    learning_rate: float = 2e-4
    batch_size: int = 8
    patch_shape: tuple[int, int] | None = (64, 64)
    ema_decay: float = 0.995
    ema_start: int = 2000
    ema_every: int = 10
    loss_domain: str = "transmission"
    seed: int = 0
    view_shift: bool = False
    mirror: bool = False
    thickness_scale: tuple[float, float] | None = None

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
        if self.thickness_scale is not None and not 0.0 < self.thickness_scale[0] <= self.thickness_scale[1]:
            raise ValueError(f"thickness_scale must be None or (low, high), 0 < low <= high: {self.thickness_scale}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for checkpoints: `network`, `schedule` and the optimisation under `training`."""
        training = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _MODEL_FIELDS}
        training["patch_shape"] = None if self.patch_shape is None else list(self.patch_shape)
        training["thickness_scale"] = None if self.thickness_scale is None else list(self.thickness_scale)
        return {"network": self.network.to_dict(), "schedule": self.schedule.to_dict(), "training": training}

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> TrainSettings:
        """Rebuild from `to_dict` output (other keys, such as a trainer's `sinogram_shape`, are ignored)."""
        training = dict(stored["training"])
        for key in ("patch_shape", "thickness_scale"):
            if training.get(key) is not None:
                training[key] = tuple(training[key])
        return cls(
            network=NetworkSettings.from_dict(stored["network"]),
            schedule=SPDiffSchedule.from_dict(stored["schedule"]),
            **training,
        )


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
            raise ValueError(
                f"all training volumes must share one sinogram shape (views, detectors), got {sorted(shapes)}"
            )
        views, detectors = arrays[0].shape[1:]
        self.sinogram_shape = (int(views), int(detectors))
        self.patch_shape = self.sinogram_shape if patch_shape is None else tuple(patch_shape)
        if any(p > s for p, s in zip(self.patch_shape, self.sinogram_shape, strict=True)):
            raise ValueError(f"patch_shape {self.patch_shape} exceeds the sinogram shape {self.sinogram_shape}")
        self.data = torch.from_numpy(np.concatenate(arrays, axis=0))
        self.triplets = torch.from_numpy(_triplet_table([array.shape[0] for array in arrays]))

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator,
        view_shift: bool = False,
        mirror: bool = False,
        thickness_scale: tuple[float, float] | None = None,
    ) -> torch.Tensor:
        """A (batch, 3, patch_views, patch_detectors) batch of clean slice triplets, augmented as TrainSettings
        describes (the random draws of an augmentation are made only when it is on)."""
        height, width = self.patch_shape
        views, detectors = self.sinogram_shape
        centres = torch.randint(len(self.triplets), (batch_size,), generator=generator)
        top = torch.randint(views if view_shift else views - height + 1, (batch_size,), generator=generator)
        left = torch.randint(detectors - width + 1, (batch_size,), generator=generator)
        slices = self.triplets[centres][:, :, None, None]
        rows = ((top[:, None] + torch.arange(height)) % views)[:, None, :, None]
        cols = (left[:, None] + torch.arange(width))[:, None, None, :]
        batch = self.data[slices, rows, cols]
        if mirror:
            mirrored = (torch.rand(batch_size, generator=generator) < 0.5)[:, None, None, None]
            batch = torch.where(mirrored, batch.flip((-2, -1)), batch)
        if thickness_scale is not None:
            low, high = np.log(thickness_scale[0]), np.log(thickness_scale[1])
            power = torch.exp(low + (high - low) * torch.rand(batch_size, generator=generator))
            batch = batch ** power[:, None, None, None]
        return batch


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


class SPDiffTrainer(Trainer[TrainSettings, SPDiffModel]):
    """SPDiff training on normal-dose transmission volumes (one array (slices, views, detectors) per contiguous run):
    patches from `generators["batch"]` (CPU), steps and Poisson noise from `generators["noise"]` (on the device)."""

    kind = CHECKPOINT_KIND

    def __init__(self, settings: TrainSettings, volumes: Sequence[Any], device: str | torch.device = "auto") -> None:
        self.data = TripletPatchSampler(volumes, settings.patch_shape)
        super().__init__(settings, lambda: SPDiffUNet(settings.network), device, keep_ema=True)
        self.generators = {
            "batch": torch.Generator().manual_seed(settings.seed),
            "noise": torch.Generator(device=self.device).manual_seed(settings.seed + 1),
        }

    @property
    def settings(self) -> dict[str, Any]:
        """Network, schedule and optimisation settings, plus the sinogram shape of the training volumes."""
        return {**super().settings, "sinogram_shape": [int(n) for n in self.data.sinogram_shape]}

    def loss(self) -> torch.Tensor:
        """L1 of x̂0 on a fresh batch of clean triplets noised to random steps of the forward process."""
        s = self.train_settings
        clean = self.data.sample(s.batch_size, self.generators["batch"], s.view_shift, s.mirror, s.thickness_scale).to(
            self.device
        )
        noise = self.generators["noise"]
        steps = torch.randint(s.schedule.num_steps, (clean.shape[0],), generator=noise, device=self.device)
        noisy = forward_process_sample(clean, steps, s.schedule, noise)
        return l1_loss(self.network(noisy, steps), clean[:, 1], s.loss_domain)

    def ema_decay(self) -> float | None:
        """Every `ema_every` steps: a copy of the weights before `ema_start`, the `ema_decay` average afterwards."""
        s = self.train_settings
        if self.step % s.ema_every:
            return None
        return s.ema_decay if self.step >= s.ema_start else 0.0

    def model(self) -> SPDiffModel:
        """An eval-mode SPDiffModel of the EMA weights."""
        return load_model(self.snapshot(), self.device)

    @classmethod
    def from_payload(cls, blob: Mapping[str, Any], volumes: Sequence[Any], device: str | torch.device = "auto") -> Self:
        """Resume exactly from `{"settings": ..., **payload()}` (a loaded checkpoint), on volumes of the same shape.
        Settings stored before a field existed read as its default (augmentations off)."""
        settings = TrainSettings.from_dict(blob["settings"])
        return cls(settings, volumes, device).restore(with_settings_completed(blob, settings.to_dict()))

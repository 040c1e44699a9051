"""Supervised RED-CNN training on paired (low-dose, normal-dose) HU images: random patches, Adam, MSE loss
in network units (as the original), and checkpoint payloads from which training resumes bit-exactly.

need_core only builds and reads the checkpoint payload; writing the file is `storage.checkpoints`' job.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from need_core.device import resolve_device
from need_core.redcnn.hu_scale import RedCNNInputError, as_hu_stack, hu_to_net
from need_core.redcnn.network import PROFILES, RedCNN, RedCNNSettings

CHECKPOINT_KIND = "redcnn"


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
    def from_dict(cls, stored: Mapping[str, Any]) -> "TrainSettings":
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


class RedCNNTrainer:
    """Owns the network, the Adam optimizer, the step count and the random stream of patch draws."""

    def __init__(self, settings: TrainSettings, device: str | torch.device = "auto") -> None:
        self.settings = settings
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global stream
            torch.manual_seed(settings.seed)
            self.model = RedCNN(settings.network)
        self.model.to(self.device)
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings.learning_rate)
        self.step = 0

    def fit(
        self,
        inputs_hu: np.ndarray | torch.Tensor,
        targets_hu: np.ndarray | torch.Tensor,
        steps: int,
        on_step: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train `steps` iterations on paired images (n, H, W) in HU: low-dose inputs, normal-dose targets.

        Returns the loss of each iteration (MSE in network units).
        """
        inputs, targets = paired_net_images(inputs_hu, targets_hu, self.settings.patch_size)
        losses = []
        for _ in range(steps):
            loss = self.train_step(*self.sample_batch(inputs, targets))
            losses.append(loss)
            if on_step is not None:
                on_step(self.step, loss)
        return losses

    def sample_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw matching (b, 1, p, p) input and target patches: random slices, positions, flips from the generator."""
        s, g = self.settings, self.generator
        picks = torch.randint(inputs.shape[0], (s.batch_size,), generator=g)
        tops = torch.randint(inputs.shape[-2] - s.patch_size + 1, (s.batch_size,), generator=g)
        lefts = torch.randint(inputs.shape[-1] - s.patch_size + 1, (s.batch_size,), generator=g)
        flips = torch.rand(s.batch_size, generator=g) < 0.5
        batch_in, batch_out = [], []
        for pick, top, left, flip in zip(picks.tolist(), tops.tolist(), lefts.tolist(), flips.tolist()):
            window = (pick, slice(top, top + s.patch_size), slice(left, left + s.patch_size))
            patch_in, patch_out = inputs[window], targets[window]
            if flip and s.random_flip:
                patch_in, patch_out = patch_in.flip(-1), patch_out.flip(-1)
            batch_in.append(patch_in)
            batch_out.append(patch_out)
        return torch.stack(batch_in)[:, None], torch.stack(batch_out)[:, None]

    def train_step(self, batch_in: torch.Tensor, batch_target: torch.Tensor) -> float:
        """One Adam step of the MSE between the network's output and the target patches; returns the loss."""
        self.model.train()
        prediction = self.model(batch_in.to(self.device))
        loss = F.mse_loss(prediction, batch_target.to(self.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"RED-CNN training loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.item())

    def checkpoint_settings(self) -> dict[str, Any]:
        """Settings to store with (and demand from) a checkpoint."""
        return self.settings.to_dict()

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, optimizer state, step and the patch generator's state."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng_state": self.generator.get_state(),
        }

    @classmethod
    def from_checkpoint(cls, blob: Mapping[str, Any], device: str | torch.device = "auto") -> "RedCNNTrainer":
        """Rebuild a trainer from a loaded checkpoint dict so training continues bit-exactly."""
        trainer = cls(TrainSettings.from_dict(blob["settings"]), device)
        trainer.model.load_state_dict(blob["model"])
        trainer.optimizer.load_state_dict(blob["optimizer"])
        trainer.step = int(blob["step"])
        trainer.generator.set_state(blob["rng_state"])
        return trainer


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


def model_from_checkpoint(blob: Mapping[str, Any], device: str | torch.device = "auto") -> RedCNN:
    """The trained network of a loaded checkpoint, in eval mode on `device`, ready for `denoise_images`."""
    settings = TrainSettings.from_dict(blob["settings"])
    model = RedCNN(settings.network)
    model.load_state_dict(blob["model"])
    return model.to(resolve_device(device)).eval().requires_grad_(False)

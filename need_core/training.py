"""One trainer protocol for SPDiff, DGDiff and RED-CNN: what the train flow, the tests and the benchmarks drive.

Every trainer is built as `KindTrainer(settings, data, device="auto")` and then

    trainer.fit(steps, on_step)           # Adam steps on the data given at construction; returns the losses
    trainer.settings                      # JSON-able dict stored in (and demanded from) its checkpoint
    trainer.payload()                     # weights, EMA, optimizer, step, RNG states: everything to resume
    KindTrainer.from_payload(blob, data, device)   # continue bit-exactly from `{"settings": ..., **payload}`
    trainer.model()                       # the inference object, exactly as the package's `load_model` builds it
                                          #   from `trainer.snapshot()` ({"settings": ..., **payload()})

A payload holds `model`, `optimizer`, `step`, `rng_states` (one state per named generator) and, for the kinds that
keep an exponential moving average of the weights, `ema`. need_core builds and reads payloads; storage owns files.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import torch
from torch import nn

from need_core.device import resolve_device


class TrainSettingsLike(Protocol):
    """What the shared trainer reads of each kind's (frozen) settings dataclass."""

    @property
    def learning_rate(self) -> float: ...

    @property
    def seed(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


ModelT = TypeVar("ModelT")
NetworkT = TypeVar("NetworkT", bound=nn.Module)
SettingsT = TypeVar("SettingsT", bound=TrainSettingsLike)
StepCallback = Callable[[int, float], None]
"""Called after each step with (step, loss), e.g. for logging."""


class TrainingPayloadError(ValueError):
    """A payload cannot resume this trainer: keys are missing, or it was made with other settings or data."""


def settings_mismatch(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys of `expected` whose stored value differs, as {key: (stored, expected)}."""
    return {key: (stored.get(key), value) for key, value in expected.items() if stored.get(key) != value}


def with_settings_completed(blob: Mapping[str, Any], rebuilt: Mapping[str, Any]) -> dict[str, Any]:
    """`blob` with its stored settings completed by `rebuilt` (the to_dict of the settings rebuilt from them): a
    field added since the checkpoint was written reads as its default instead of failing the resume check."""
    return {**blob, "settings": {**blob["settings"], **rebuilt}}


@torch.no_grad()
def update_ema(ema: nn.Module, network: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·weights, parameter by parameter (decay 0 copies the weights)."""
    for ema_param, param in zip(ema.parameters(), network.parameters(), strict=True):
        ema_param.lerp_(param, 1.0 - decay)


def load_network(network: NetworkT, state: Mapping[str, Any], device: str | torch.device) -> NetworkT:
    """`network` with the weights `state`, in eval mode without gradients on `device`: ready for inference."""
    network.load_state_dict(state)
    return network.to(resolve_device(device)).eval().requires_grad_(False)


def random_patches(
    stacks: Sequence[torch.Tensor],
    batch_size: int,
    patch_shape: tuple[int, int] | None,
    random_flip: bool,
    generator: torch.Generator,
    random_rotate: bool = False,
) -> list[torch.Tensor]:
    """The same random windows of each (n, H, W) stack, as (batch, 1, h, w) batches: random slices, positions
    (`patch_shape` None: whole images), left-right flips (if `random_flip`) and rotations by quarter turns (if
    `random_rotate`; half turns only for non-square windows), drawn from `generator` (rotations last, so the other
    draws are the same with or without them)."""
    count, height, width = stacks[0].shape
    patch_height, patch_width = patch_shape or (height, width)
    picks = torch.randint(count, (batch_size,), generator=generator)
    tops = torch.randint(height - patch_height + 1, (batch_size,), generator=generator)
    lefts = torch.randint(width - patch_width + 1, (batch_size,), generator=generator)
    flips = (torch.rand(batch_size, generator=generator) < 0.5) & random_flip
    turns = torch.zeros(batch_size, dtype=torch.long)
    if random_rotate:
        turns = torch.randint(4, (batch_size,), generator=generator) * (1 if patch_height == patch_width else 2) % 4
    windows = list(zip(picks.tolist(), tops.tolist(), lefts.tolist(), flips.tolist(), turns.tolist(), strict=True))

    def window(stack: torch.Tensor, pick: int, top: int, left: int, flip: bool, turn: int) -> torch.Tensor:
        patch = stack[pick, top : top + patch_height, left : left + patch_width]
        return torch.rot90(patch.flip(-1) if flip else patch, turn, (-2, -1))

    return [torch.stack([window(stack, *drawn) for drawn in windows])[:, None] for stack in stacks]


class Trainer(ABC, Generic[SettingsT, ModelT]):
    """Training state shared by every kind (network, optional EMA, Adam, step, named generators) and the loop.

    A kind's constructor takes (settings, data, device="auto") and calls this one with how to build its network;
    it implements `loss` (on a fresh batch drawn from its generators), `model`, `from_payload`, and `ema_decay` if
    it keeps an EMA."""

    kind: ClassVar[str]
    """The checkpoint kind (`spdiff`, `dgdiff`, `redcnn`)."""

    def __init__(
        self,
        settings: SettingsT,
        build_network: Callable[[], nn.Module],
        device: str | torch.device,
        keep_ema: bool,
        grad_clip: float | None = None,
    ) -> None:
        self.train_settings = settings
        self.device = resolve_device(device)
        with torch.random.fork_rng(devices=[]):  # seeded weight init without touching the caller's global RNG
            torch.manual_seed(settings.seed)
            self.network = build_network().to(self.device)
        self.ema = copy.deepcopy(self.network).requires_grad_(False) if keep_ema else None
        self.optimizer = torch.optim.Adam(self.network.parameters(), lr=settings.learning_rate)
        self.grad_clip = grad_clip
        self.generators: dict[str, torch.Generator] = {}
        self.step = 0

    @property
    def settings(self) -> dict[str, Any]:
        """JSON-able settings stored in the checkpoint: a resumed trainer must report exactly these again."""
        return self.train_settings.to_dict()

    @abstractmethod
    def loss(self) -> torch.Tensor:
        """The training loss (a scalar with gradients) on a fresh random batch drawn from `self.generators`."""

    def ema_decay(self) -> float | None:
        """The EMA decay for the step just taken (0: copy the weights), or None to leave the EMA alone."""
        raise NotImplementedError(f"{type(self).__name__} keeps an EMA but does not say how to update it")

    @abstractmethod
    def model(self) -> ModelT:
        """The inference model of the current (EMA) weights, built as the package's `load_model` builds it."""

    @classmethod
    @abstractmethod
    def from_payload(cls, blob: Mapping[str, Any], data: Any, device: str | torch.device = "auto") -> Self:
        """Resume exactly from `{"settings": ..., **payload()}` (e.g. a loaded checkpoint) on the same training data:
        built from the stored settings, then `restore(blob)`."""

    def train_step(self) -> float:
        """One Adam step on `loss()` (gradients clipped to `grad_clip` if set), then the EMA update; returns the
        loss."""
        self.network.train()
        loss = self.loss()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.kind} training loss became {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        self.step += 1
        if self.ema is not None and (decay := self.ema_decay()) is not None:
            update_ema(self.ema, self.network, decay)
        return float(loss.detach())

    def fit(self, steps: int, on_step: StepCallback | None = None) -> list[float]:
        """Run `steps` steps on the training data; `on_step(step, loss)` after each. Returns the losses."""
        losses = []
        for _ in range(steps):
            losses.append(self.train_step())
            if on_step is not None:
                on_step(self.step, losses[-1])
        return losses

    def payload(self) -> dict[str, Any]:
        """A snapshot of everything to resume exactly, except `settings` (store `self.settings` alongside)."""
        state: dict[str, Any] = {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "rng_states": {name: generator.get_state() for name, generator in self.generators.items()},
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return copy.deepcopy(state)

    def snapshot(self) -> dict[str, Any]:
        """`{"settings": ..., **payload()}`: what a saved and reloaded checkpoint of this trainer holds."""
        return {"settings": self.settings, **self.payload()}

    def restore(self, blob: Mapping[str, Any]) -> Self:
        """Load a payload into this freshly built trainer, after checking it was made with this trainer's settings."""
        required = ["settings", "model", "optimizer", "step", "rng_states", *(["ema"] if self.ema is not None else [])]
        missing = [key for key in required if key not in blob]
        if missing:
            raise TrainingPayloadError(f"{self.kind} payload lacks {missing}: expected keys {required}")
        mismatched = settings_mismatch(blob["settings"], self.settings)
        if mismatched:
            details = "; ".join(f"{key}: stored {old!r}, now {new!r}" for key, (old, new) in mismatched.items())
            raise TrainingPayloadError(f"{self.kind} payload was made with other settings or data: {details}")
        self.network.load_state_dict(blob["model"])
        if self.ema is not None:
            self.ema.load_state_dict(blob["ema"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.step = int(blob["step"])
        for name, generator in self.generators.items():
            generator.set_state(blob["rng_states"][name].cpu())
        return self

"""SPDiff denoiser f_θ(x_t, t) → x̂0: a 3-scale U-Net on 3 adjacent sinograms (NEED_SPEC.md §2).

Plain 3×3 conv+ReLU blocks, a sinusoidal step embedding added at every scale, average-pool
down, transposed-conv up, additive skips; the output is a residual added to the middle slice.
Fully convolutional: trains on patches, samples whole sinograms of any size.

`domain` picks where the network works. `transmission` (*ref*) feeds x_t and adds the residual to
it. `log` feeds the post-log data −log x_t and adds the residual there, returning exp(−·): rays
through bone carry ~2 % of the photons, so in transmission their noise is tiny in absolute terms
and a network barely touches it, although that noise is what FBP amplifies most.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from need_core.physics.noise import TRANSMISSION_FLOOR

CONTEXT_SLICES = 3
"""Slices fed to the network: the target sinogram and one neighbour on each side."""

_DOWNSAMPLE_FACTOR = 4  # two average-pool levels
DOMAINS = ("transmission", "log")


@dataclass(frozen=True)
class NetworkSettings:
    """U-Net widths per scale (3 scales), convolutions per block, and the data domain the network sees."""

    channels: tuple[int, int, int] = (64, 128, 256)
    convs_per_block: int = 2
    domain: str = "transmission"

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        if len(self.channels) != 3 or any(int(c) != c or c < 1 for c in self.channels):
            raise ValueError(f"channels must be 3 positive integers (one per scale), got {self.channels!r}")
        if self.convs_per_block < 1:
            raise ValueError(f"convs_per_block must be >= 1, got {self.convs_per_block}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings for checkpoints."""
        values = asdict(self)
        values["channels"] = list(self.channels)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NetworkSettings:
        """Rebuild from `to_dict` output."""
        return cls(
            channels=tuple(values["channels"]),
            convs_per_block=int(values["convs_per_block"]),
            domain=str(values["domain"]),
        )


NETWORK_PROFILES: dict[str, NetworkSettings] = {
    "tiny": NetworkSettings(channels=(8, 16, 32), convs_per_block=1),
    "cpu": NetworkSettings(channels=(24, 48, 96), convs_per_block=2, domain="log"),
    "paper": NetworkSettings(channels=(64, 128, 256), convs_per_block=2),
}
"""`tiny` for tests, `cpu` trains in well under an hour on 2 cores (in the log domain), `paper` is the reference."""


def network_profile(name: str) -> NetworkSettings:
    """Settings of a named profile (tiny, cpu, paper)."""
    if name not in NETWORK_PROFILES:
        raise ValueError(f"unknown SPDiff network profile {name!r}: expected one of {sorted(NETWORK_PROFILES)}")
    return NETWORK_PROFILES[name]


def sinusoidal_step_embedding(steps: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sin/cos features of integer steps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=steps.device, dtype=torch.float32) / half)
    angles = steps.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ConvBlock(nn.Module):
    """3×3 conv+ReLU layers with the step embedding added after the first one."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, convs: int) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * convs
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.step_proj = nn.Linear(embed_dim, out_channels)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Apply the block; `embedding` is (B, embed_dim)."""
        x = F.relu(self.convs[0](x)) + self.step_proj(embedding)[:, :, None, None]
        for conv in self.convs[1:]:
            x = F.relu(conv(x))
        return x


class SPDiffUNet(nn.Module):
    """f_θ(x_t, t): (B, 3, V, D) noisy transmissions of 3 adjacent slices → (B, V, D) estimate x̂0 of the middle one."""

    def __init__(self, settings: NetworkSettings) -> None:
        super().__init__()
        self.settings = settings
        c1, c2, c3 = settings.channels
        n = settings.convs_per_block
        self.embed_dim = 4 * c1
        self.step_mlp = nn.Sequential(
            nn.Linear(self.embed_dim, self.embed_dim), nn.ReLU(), nn.Linear(self.embed_dim, self.embed_dim)
        )
        self.enc1 = ConvBlock(CONTEXT_SLICES, c1, self.embed_dim, n)
        self.enc2 = ConvBlock(c1, c2, self.embed_dim, n)
        self.bottom = ConvBlock(c2, c3, self.embed_dim, n)
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = ConvBlock(c2, c2, self.embed_dim, n)
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = ConvBlock(c1, c1, self.embed_dim, n)
        self.head = nn.Conv2d(c1, 1, 3, padding=1)

    def forward(self, x_t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Predict x̂0 of the middle slice as x_t[:, 1] plus a learned residual (in the settings' domain)."""
        if x_t.ndim != 4 or x_t.shape[1] != CONTEXT_SLICES:
            raise ValueError(f"x_t must be (batch, {CONTEXT_SLICES}, views, detectors), got {tuple(x_t.shape)}")
        inputs = to_log_domain(x_t) if self.settings.domain == "log" else x_t
        estimate = inputs[:, CONTEXT_SLICES // 2] + self.residual(inputs, steps)
        return torch.exp(-estimate) if self.settings.domain == "log" else estimate

    def residual(self, inputs: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The U-Net proper: (B, 3, V, D) inputs → (B, V, D) correction of the middle slice."""
        height, width = inputs.shape[-2:]
        pad_h, pad_w = (-height) % _DOWNSAMPLE_FACTOR, (-width) % _DOWNSAMPLE_FACTOR
        x = F.pad(inputs, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else inputs
        emb = self.step_mlp(sinusoidal_step_embedding(steps, self.embed_dim))
        s1 = self.enc1(x, emb)
        s2 = self.enc2(F.avg_pool2d(s1, 2), emb)
        h = self.bottom(F.avg_pool2d(s2, 2), emb)
        h = self.dec2(self.up2(h) + s2, emb)
        h = self.dec1(self.up1(h) + s1, emb)
        return self.head(h)[:, 0, :height, :width]


def to_log_domain(transmission: torch.Tensor) -> torch.Tensor:
    """Post-log data −log(max(x, ε)) of normalised transmission, with the physics' one floor ε (TRANSMISSION_FLOOR)."""
    return -torch.log(transmission.clamp_min(TRANSMISSION_FLOOR))

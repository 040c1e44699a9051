"""DGDiff's denoising U-Net: ResNet blocks with a time embedding, linear attention per level, full attention at the
bottom.

Sizes come from a named profile (`tiny` for tests, `cpu` for CPU runs, `paper` = *ref* base 64,
multipliers 1, 2, 4, 8). The network maps (x_t, t) to the v-prediction, same shape as x_t.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetSettings:
    """Architecture of the U-Net; stored in checkpoints so a load can refuse another architecture."""

    base_channels: int = 64
    multipliers: tuple[int, ...] = (1, 2, 4, 8)
    res_blocks: int = 2
    linear_attention: bool = True
    heads: int = 4
    head_channels: int = 32
    max_groups: int = 8
    in_channels: int = 1
    out_channels: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "multipliers", tuple(int(m) for m in self.multipliers))
        if self.base_channels < 1 or not self.multipliers or min(self.multipliers) < 1:
            raise ValueError(
                f"base_channels and multipliers must be positive, got {self.base_channels}, {self.multipliers}"
            )
        if min(self.res_blocks, self.heads, self.head_channels, self.max_groups) < 1:
            raise ValueError("res_blocks, heads, head_channels and max_groups must be >= 1")

    @property
    def level_channels(self) -> list[int]:
        """Channels at each resolution level, finest first."""
        return [self.base_channels * m for m in self.multipliers]

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (one halving per level below the first)."""
        return 2 ** (len(self.multipliers) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, stored in checkpoints."""
        return {**asdict(self), "multipliers": list(self.multipliers)}


PROFILES: dict[str, UNetSettings] = {
    "tiny": UNetSettings(base_channels=8, multipliers=(1, 2, 2, 2), res_blocks=1, heads=2, head_channels=8),
    "cpu": UNetSettings(base_channels=24, multipliers=(1, 2, 4, 4), res_blocks=1, heads=4, head_channels=16),
    "paper": UNetSettings(base_channels=64, multipliers=(1, 2, 4, 8), res_blocks=2, heads=4, head_channels=32),
}


def build_unet(profile: str | UNetSettings = "cpu") -> UNet:
    """Build the U-Net for a profile name (`tiny`, `cpu`, `paper`) or explicit settings."""
    if isinstance(profile, UNetSettings):
        return UNet(profile)
    if profile not in PROFILES:
        raise ValueError(f"unknown DGDiff profile {profile!r}: expected one of {sorted(PROFILES)}")
    return UNet(PROFILES[profile])


def _groups(channels: int, max_groups: int) -> int:
    """Largest group count <= max_groups dividing `channels`."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal features of the integer diffusion step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1)
        )
        angles = t.float()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResnetBlock(nn.Module):
    """Two 3×3 conv + GroupNorm + SiLU layers; the time embedding scales and shifts the first."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, max_groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(out_channels, max_groups), out_channels)
        self.time_to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * out_channels))
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels, max_groups), out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time_to_scale_shift(time_embedding)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.conv1(x)) * (scale + 1.0) + shift)
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class _Attention(nn.Module):
    """What both attention blocks share: group norm, a 1×1 projection to q, k, v and one back to the channels."""

    def __init__(self, channels: int, heads: int, head_channels: int, max_groups: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, head_channels**-0.5
        inner = heads * head_channels
        self.norm = nn.GroupNorm(_groups(channels, max_groups), channels)
        self.to_qkv = nn.Conv2d(channels, 3 * inner, 1, bias=False)
        self.to_out = nn.Conv2d(inner, channels, 1)


class LinearAttention(_Attention):
    """Residual linear attention (softmax over features for q, over positions for k): cost linear in pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        q, k, v = (
            part.reshape(b, self.heads, -1, height * width) for part in self.to_qkv(self.norm(x)).chunk(3, dim=1)
        )
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q).reshape(b, -1, height, width)
        return x + self.to_out(out)


class FullAttention(_Attention):
    """Residual multi-head softmax attention over all positions (used at the coarsest level only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        q, k, v = (
            part.reshape(b, self.heads, -1, height * width).transpose(-1, -2)
            for part in self.to_qkv(self.norm(x)).chunk(3, dim=1)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, -1, height, width)
        return x + self.to_out(out)


class DownLevel(nn.Module):
    """ResNet blocks (+ linear attention) at one resolution, then a halving to the next level's channels."""

    def __init__(self, channels: int, next_channels: int, last: bool, s: UNetSettings, time_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResnetBlock(channels, channels, time_dim, s.max_groups) for _ in range(s.res_blocks)
        )
        self.attention = (
            LinearAttention(channels, s.heads, s.head_channels, s.max_groups) if s.linear_attention else nn.Identity()
        )
        self.resample = (
            nn.Conv2d(channels, next_channels, 3, padding=1) if last else nn.Conv2d(channels, next_channels, 3, 2, 1)
        )


class UpLevel(nn.Module):
    """ResNet blocks fed with the matching skips (+ linear attention), then a doubling to the finer level."""

    def __init__(
        self, channels: int, finer_channels: int, skip_channels: int, last: bool, s: UNetSettings, time_dim: int
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResnetBlock(channels + skip_channels, channels, time_dim, s.max_groups) for _ in range(s.res_blocks)
        )
        self.attention = (
            LinearAttention(channels, s.heads, s.head_channels, s.max_groups) if s.linear_attention else nn.Identity()
        )
        self.resample = nn.Conv2d(channels, finer_channels, 3, padding=1)
        self.upsample = not last


class UNet(nn.Module):
    """U-Net v-predictor: forward(x (b, C, H, W), t (b,)) -> v (b, out_channels, H, W)."""

    def __init__(self, settings: UNetSettings) -> None:
        super().__init__()
        self.settings = s = settings
        base = s.base_channels
        time_dim = 4 * base
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(base), nn.Linear(base, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        self.init_conv = nn.Conv2d(s.in_channels, base, 7, padding=3)
        widths = [base, *s.level_channels]
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        self.downs = nn.ModuleList(
            DownLevel(c_in, c_out, i == len(pairs) - 1, s, time_dim) for i, (c_in, c_out) in enumerate(pairs)
        )
        bottom = widths[-1]
        self.mid_block1 = ResnetBlock(bottom, bottom, time_dim, s.max_groups)
        self.mid_attention = FullAttention(bottom, s.heads, s.head_channels, s.max_groups)
        self.mid_block2 = ResnetBlock(bottom, bottom, time_dim, s.max_groups)
        self.ups = nn.ModuleList(
            UpLevel(c_out, c_in, c_in, i == len(pairs) - 1, s, time_dim)
            for i, (c_in, c_out) in enumerate(reversed(pairs))
        )
        self.final_block = ResnetBlock(2 * base, base, time_dim, s.max_groups)
        self.final_conv = nn.Conv2d(base, s.out_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self._check_input(x, t)
        time_embedding = self.time_mlp(t)
        h = self.init_conv(x)
        first = h
        skips: list[torch.Tensor] = []
        for level in cast(Iterable[DownLevel], self.downs):  # ModuleList yields plain Modules to type checkers
            for block in level.blocks:
                h = block(h, time_embedding)
                skips.append(h)
            skips[-1] = h = level.attention(h)
            h = level.resample(h)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, time_embedding)), time_embedding)
        for up_level in cast(Iterable[UpLevel], self.ups):
            for block in up_level.blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), time_embedding)
            h = up_level.attention(h)
            if up_level.upsample:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = up_level.resample(h)
        return self.final_conv(self.final_block(torch.cat([h, first], dim=1), time_embedding))

    def _check_input(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Raise a clear error for wrong channel counts, sizes or step vectors."""
        s = self.settings
        if x.ndim != 4 or x.shape[1] != s.in_channels:
            raise ValueError(f"U-Net input must be (b, {s.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % s.size_multiple or x.shape[-1] % s.size_multiple:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} must be a multiple of {s.size_multiple} for this profile"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"steps t must have shape ({x.shape[0]},), got {tuple(t.shape)}")

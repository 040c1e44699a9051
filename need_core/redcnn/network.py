"""The RED-CNN network (Chen et al. 2017): 5 valid 'same-kernel' convolutions, 5 transposed convolutions, ReLUs,
and three residual shortcuts (input -> output, conv2 -> deconv3, conv4 -> deconv1).

Sizes come from a named profile: `tiny` (tests), `cpu` (trains in minutes on a laptop CPU) and `paper`
(96 channels, 5x5 kernels, as published).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

N_LAYERS = 5
SHORTCUT_DEPTHS = (0, 2, 4)  # encoder depths whose features are added back at the same decoder depth


@dataclass(frozen=True)
class RedCNNSettings:
    """Architecture: feature channels and square kernel size; stored in checkpoints to refuse another architecture."""

    channels: int = 96
    kernel_size: int = 5

    def __post_init__(self) -> None:
        if self.channels < 1 or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(
                f"channels must be >= 1 and kernel_size a positive odd number, got {self.channels}, {self.kernel_size}"
            )

    @property
    def min_image_size(self) -> int:
        """Smallest image side the unpadded encoder can take (each layer trims kernel_size − 1 pixels)."""
        return N_LAYERS * (self.kernel_size - 1) + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able architecture."""
        return asdict(self)


PROFILES: dict[str, RedCNNSettings] = {
    "tiny": RedCNNSettings(channels=8, kernel_size=3),
    "cpu": RedCNNSettings(channels=24, kernel_size=5),
    "paper": RedCNNSettings(channels=96, kernel_size=5),
}


class RedCNN(nn.Module):
    """Residual encoder-decoder CNN mapping a (b, 1, H, W) image in network units to its denoised version."""

    def __init__(self, settings: RedCNNSettings) -> None:
        super().__init__()
        self.settings = settings
        c, k = settings.channels, settings.kernel_size
        self.encoder = nn.ModuleList(nn.Conv2d(1 if i == 0 else c, c, k) for i in range(N_LAYERS))
        self.decoder = nn.ModuleList(nn.ConvTranspose2d(c, 1 if i == N_LAYERS - 1 else c, k) for i in range(N_LAYERS))
        self.relu = nn.ReLU()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation for ReLU layers and a zero last layer, so the network starts as the identity (through the
        input shortcut) with gradients flowing through every layer. (The paper's Normal(0, 0.01²) weights make the
        residual branch vanish through 10 layers and stall short CPU runs.)"""
        for layer in (*self.encoder, *self.decoder):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(cast(nn.ConvTranspose2d, self.decoder[-1]).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode (conv + ReLU), decode (transposed conv, add the shortcut of that depth, ReLU)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"RedCNN expects (batch, 1, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.settings.min_image_size:
            raise ValueError(
                f"RedCNN needs images of at least {self.settings.min_image_size} pixels per side, "
                f"got {tuple(x.shape[-2:])}"
            )
        shortcuts = {0: x}
        out = x
        for depth, conv in enumerate(self.encoder, start=1):
            out = self.relu(conv(out))
            if depth in SHORTCUT_DEPTHS:
                shortcuts[depth] = out
        for depth, deconv in zip(range(N_LAYERS - 1, -1, -1), self.decoder, strict=True):
            out = deconv(out)
            if depth in shortcuts:
                out = out + shortcuts[depth]
            out = self.relu(out)
        return out


def build_redcnn(profile: str) -> RedCNN:
    """A fresh RED-CNN of a named profile (`tiny`, `cpu` or `paper`)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown RED-CNN profile {profile!r}: expected one of {sorted(PROFILES)}")
    return RedCNN(PROFILES[profile])

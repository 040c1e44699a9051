"""Pick the torch device once, the same way everywhere: `auto` means CUDA when present."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a torch.device for `auto`, `cpu`, `cuda` or `cuda:N`; asking for CUDA without a GPU is an error."""
    if isinstance(device, torch.device):
        requested = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            requested = torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu' or 'cuda[:N]'") from err
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(requested)!r} requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return requested

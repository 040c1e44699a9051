"""Loading a trained RED-CNN from a checkpoint dict without any file I/O (storage/checkpoints.py owns the file)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from need_core.redcnn.network import RedCNN, RedCNNSettings
from need_core.training import load_network

CHECKPOINT_KIND = "redcnn"
"""The `kind` of RED-CNN checkpoints in storage/checkpoints.py."""


def load_model(blob: Mapping[str, Any], device: str | torch.device = "auto") -> RedCNN:
    """The trained network of a loaded checkpoint or a trainer's `snapshot()`, in eval mode on `device`, ready for
    `denoise_images` (RED-CNN keeps no EMA: these are the trained weights)."""
    return load_network(RedCNN(RedCNNSettings(**blob["settings"]["network"])), blob["model"], device)

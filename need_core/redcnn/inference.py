"""Denoising HU images with a trained RED-CNN: batched, without autograd, on any device."""

from __future__ import annotations

import numpy as np
import torch

from need_core.device import resolve_device
from need_core.redcnn.hu_scale import RedCNNInputError, as_hu_stack, hu_to_net, net_to_hu
from need_core.redcnn.network import RedCNN


def denoise_images(
    model: RedCNN,
    images_hu: np.ndarray | torch.Tensor,
    batch_size: int = 8,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Denoise low-dose images (n, H, W) in HU, `batch_size` slices at a time; returns float32 numpy HU (n, H, W).

    The model is moved to `device` and put in eval mode.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RedCNNInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    images = as_hu_stack(images_hu, "images to denoise")
    minimum = model.settings.min_image_size
    if min(images.shape[-2:]) < minimum:
        raise RedCNNInputError(
            f"images {tuple(images.shape[-2:])} are smaller than the network's minimum {minimum} pixels"
        )
    target = resolve_device(device)
    model = model.to(target).eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            batch = hu_to_net(images[start : start + batch_size, None].to(target))
            outputs.append(net_to_hu(model(batch))[:, 0].to("cpu", torch.float32))
    return torch.cat(outputs).numpy()

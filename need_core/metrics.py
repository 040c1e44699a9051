"""Image quality metrics as NEED_SPEC.md §5 reports them: PSNR, SSIM and RMSE of HU images.

HU values are clipped to [-1000, 1000] and mapped linearly to [0, 255] for PSNR and SSIM, with
data_range = max - min of the (clipped, scaled) reference, per image. SSIM uses an 11-tap Gaussian
window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (not sample) covariances, and averages the SSIM
map over pixels at least 5 from the border (as skimage.metrics.structural_similarity with
gaussian_weights=True, use_sample_covariance=False). Inputs: numpy or torch, (H, W) or batched
(..., H, W); output: a float for one image, else one value per image (numpy array or torch tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

HU_CLIP = (-1000.0, 1000.0)
DISPLAY_MAX = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


class MetricInputError(ValueError):
    """Images given to a metric are unusable (shape mismatch, NaN/inf, too small, constant reference)."""


def _as_float64_pair(
    pred_hu: Any, ref_hu: Any, min_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], bool]:
    """Validated float64 CPU tensors (N, H, W) of both images, the batch shape, and whether input was torch."""
    is_torch = isinstance(pred_hu, torch.Tensor) or isinstance(ref_hu, torch.Tensor)
    pred = torch.as_tensor(np.asarray(pred_hu) if not isinstance(pred_hu, torch.Tensor) else pred_hu.detach())
    ref = torch.as_tensor(np.asarray(ref_hu) if not isinstance(ref_hu, torch.Tensor) else ref_hu.detach())
    if pred.shape != ref.shape:
        raise MetricInputError(f"pred_hu shape {tuple(pred.shape)} differs from ref_hu shape {tuple(ref.shape)}")
    if pred.ndim < 2:
        raise MetricInputError(f"images must be (H, W) or (..., H, W), got shape {tuple(pred.shape)}")
    if min(pred.shape[-2:]) < min_size:
        raise MetricInputError(f"images must be at least {min_size}x{min_size} pixels, got {tuple(pred.shape[-2:])}")
    batch_shape = tuple(pred.shape[:-2])
    pred = pred.to(device="cpu", dtype=torch.float64)
    ref = ref.to(device="cpu", dtype=torch.float64)
    for name, image in (("pred_hu", pred), ("ref_hu", ref)):
        if not torch.isfinite(image).all():
            raise MetricInputError(f"{name} contains NaN or inf values; expected finite HU values")
    return pred.reshape(-1, *pred.shape[-2:]), ref.reshape(-1, *ref.shape[-2:]), batch_shape, is_torch


def _per_image(values: torch.Tensor, batch_shape: tuple[int, ...], is_torch: bool) -> Any:
    """A float for a single image, else values shaped like the batch (torch or numpy like the input)."""
    if not batch_shape:
        return float(values[0])
    values = values.reshape(batch_shape)
    return values if is_torch else values.numpy()


def to_display_scale(hu: torch.Tensor) -> torch.Tensor:
    """Clip HU to [-1000, 1000] and map linearly to [0, 255]."""
    low, high = HU_CLIP
    return (hu.clamp(low, high) - low) * (DISPLAY_MAX / (high - low))


def _data_range(ref_scaled: torch.Tensor) -> torch.Tensor:
    """Per-image max - min of the scaled reference; a constant reference makes PSNR/SSIM undefined."""
    flat = ref_scaled.reshape(ref_scaled.shape[0], -1)
    data_range = flat.amax(dim=1) - flat.amin(dim=1)
    if (data_range <= 0).any():
        raise MetricInputError("ref_hu is constant after clipping to [-1000, 1000]; expected a non-constant image")
    return data_range


def rmse(pred_hu: Any, ref_hu: Any) -> Any:
    """Root-mean-square error in HU, computed on images clipped to [-1000, 1000] HU."""
    pred, ref, batch_shape, is_torch = _as_float64_pair(pred_hu, ref_hu)
    low, high = HU_CLIP
    error = pred.clamp(low, high) - ref.clamp(low, high)
    return _per_image(error.pow(2).mean(dim=(1, 2)).sqrt(), batch_shape, is_torch)


def psnr(pred_hu: Any, ref_hu: Any) -> Any:
    """PSNR in dB on the [0, 255] display scale, data_range = max - min of the reference (inf if identical)."""
    pred, ref, batch_shape, is_torch = _as_float64_pair(pred_hu, ref_hu)
    pred_scaled, ref_scaled = to_display_scale(pred), to_display_scale(ref)
    data_range = _data_range(ref_scaled)
    mse = (pred_scaled - ref_scaled).pow(2).mean(dim=(1, 2))
    return _per_image(10.0 * torch.log10(data_range.pow(2) / mse), batch_shape, is_torch)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (float64) of odd length `size`."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _local_mean(images: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian average over the window, 'valid' part only: (N, H, W) -> (N, H-10, W-10).

    Weighted sums of shifted views, rows then columns: the same products in the same order as a float64 conv2d
    with these taps, about 3x faster on a CPU (torch has no fast float64 convolution)."""
    size = taps.numel()
    height, width = images.shape[-2] - size + 1, images.shape[-1] - size + 1
    rows = taps[0] * images[..., :width]
    for k in range(1, size):
        rows = rows + taps[k] * images[..., k : k + width]
    columns = taps[0] * rows[..., :height, :]
    for k in range(1, size):
        columns = columns + taps[k] * rows[..., k : k + height, :]
    return columns


def ssim(pred_hu: Any, ref_hu: Any) -> Any:
    """Mean SSIM on the [0, 255] display scale (Gaussian window 11, sigma 1.5; see the module docstring)."""
    pred, ref, batch_shape, is_torch = _as_float64_pair(pred_hu, ref_hu, min_size=SSIM_WINDOW)
    x, y = to_display_scale(pred), to_display_scale(ref)
    data_range = _data_range(y)[:, None, None]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    taps = gaussian_window()
    mean_x, mean_y = _local_mean(x, taps), _local_mean(y, taps)
    var_x = _local_mean(x * x, taps) - mean_x**2
    var_y = _local_mean(y * y, taps) - mean_y**2
    cov_xy = _local_mean(x * y, taps) - mean_x * mean_y
    numerator = (2 * mean_x * mean_y + c1) * (2 * cov_xy + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)
    return _per_image((numerator / denominator).mean(dim=(1, 2)), batch_shape, is_torch)

"""Exact weighted fan-beam FBP for a flat detector in torch (Kak & Slaney, equi-spaced collinear detectors).

With the detector scaled to the isocentre (coordinate s, pitch tau = det_spacing / magnification):
  1. pre-weight    R'(beta, s) = R(beta, s) * D / sqrt(D^2 + s^2)
  2. ramp-filter   Q(beta, .) = R'(beta, .) (*) h            (filters.ramp_filter_torch)
  3. backproject   f(P) = 1/2 * dbeta * sum_beta Q(beta, s'(P)) / U(P)^2,
                   U = (D - P.a) / D, s' = D (P.b) / (D - P.a),
where a = (sin beta, -cos beta) points from the isocentre to the source and b = (cos beta, sin beta)
along the detector (ASTRA's fanflat conventions). Runs on any torch device; the accuracy reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from need_core.physics.filters import ramp_filter_torch
from need_core.physics.geometry import FanBeamGeometry

# Views back-projected together; bounds memory to about B * VIEW_CHUNK * ny * nx floats.
VIEW_CHUNK = 16


def pixel_centres(geometry: FanBeamGeometry, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened pixel-centre coordinates (x, y) in mm, row 0 at +y, centred on the isocentre."""
    (ny, nx), (dy, dx) = geometry.image_shape, geometry.pixel_spacing_mm
    x = (torch.arange(nx, dtype=torch.float64, device=device) - 0.5 * (nx - 1)) * dx
    y = (0.5 * (ny - 1) - torch.arange(ny, dtype=torch.float64, device=device)) * dy
    grid_y, grid_x = torch.meshgrid(y, x, indexing="ij")
    return grid_x.reshape(-1), grid_y.reshape(-1)


def fan_fbp_torch(sinograms: torch.Tensor, geometry: FanBeamGeometry, filter_name: str) -> torch.Tensor:
    """Reconstruct mu (B, ny, nx) from full-scan line integrals (B, n_views, n_det) on sinograms.device."""
    device, dtype = sinograms.device, sinograms.dtype
    batch = sinograms.shape[0]
    distance = geometry.source_iso_mm
    tau = geometry.det_spacing_iso_mm
    half_span = 0.5 * (geometry.n_det - 1)  # bins from the detector centre to its first/last bin
    s = (torch.arange(geometry.n_det, dtype=torch.float64, device=device) - half_span) * tau
    cosine_weight = (distance / torch.sqrt(distance**2 + s**2)).to(dtype)
    filtered = ramp_filter_torch(sinograms * cosine_weight, tau, filter_name)[:, None]  # (B, 1, views, det)

    x, y = (c.to(dtype) for c in pixel_centres(geometry, device))
    angles = torch.as_tensor(geometry.angles, dtype=torch.float64, device=device)
    image = torch.zeros(batch, x.numel(), dtype=dtype, device=device)
    for start in range(0, geometry.n_views, VIEW_CHUNK):
        beta = angles[start : start + VIEW_CHUNK, None]
        n_chunk = beta.shape[0]
        sin_b, cos_b = torch.sin(beta).to(dtype), torch.cos(beta).to(dtype)
        inverse_depth = 1.0 / (distance - (x * sin_b - y * cos_b))  # 1 / (D - P.a)
        detector_bins = distance * (x * cos_b + y * sin_b) * inverse_depth / tau  # s'/tau from the centre
        # grid_sample coordinates in [-1, 1] (align_corners): detector bin, and the exact row of each view
        grid_u = detector_bins / half_span  # n_det >= 2: a valid geometry covers the image
        rows = torch.arange(n_chunk, dtype=dtype, device=device)[:, None]
        grid_v = (2.0 * rows / (n_chunk - 1) - 1.0 if n_chunk > 1 else rows).expand_as(grid_u)
        grid = torch.stack((grid_u, grid_v), dim=-1)[None].expand(batch, -1, -1, -1)
        values = F.grid_sample(
            filtered[:, :, start : start + n_chunk], grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[:, 0]
        image += (values * (distance * inverse_depth) ** 2).sum(dim=1)
    image *= 0.5 * geometry.angle_range_rad / geometry.n_views
    return image.reshape(batch, *geometry.image_shape)


def fan_fbp_numpy_io(
    sinograms: np.ndarray, geometry: FanBeamGeometry, filter_name: str, device: torch.device
) -> np.ndarray:
    """fan_fbp_torch on `device` for numpy input (B, n_views, n_det); returns float32 numpy (B, ny, nx)."""
    with torch.no_grad():
        tensor = torch.from_numpy(np.ascontiguousarray(sinograms, dtype=np.float32)).to(device)
        return fan_fbp_torch(tensor, geometry, filter_name).cpu().numpy()

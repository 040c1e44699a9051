"""Real sinograms of the bundled head CT for the SPDiff tests: HU slices (optionally block-averaged)
forward-projected with need_core.physics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from need_core.physics import FanBeamGeometry, forward_project, hu_to_mu
from storage.readers import read_volume


def head_ct_line_integrals(path: Path, slices: slice, downsample: int = 1) -> tuple[np.ndarray, FanBeamGeometry]:
    """Line integrals (n, views, det) of the chosen slices, images block-averaged by `downsample`."""
    volume = read_volume(path)
    hu = volume.hu[slices].astype(np.float32)
    if downsample > 1:
        n, ny, nx = hu.shape
        hu = hu.reshape(n, ny // downsample, downsample, nx // downsample, downsample).mean(axis=(2, 4))
    mu = hu_to_mu(np.clip(hu, -1000.0, None))
    geometry = FanBeamGeometry.for_image(hu.shape[1:], volume.spacing_mm[1] * downsample)
    return forward_project(mu, geometry, backend="astra-cpu"), geometry

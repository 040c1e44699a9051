"""Checks on normalised transmission volumes before SPDiff touches them.

Transmission x = y / (I0·d) with y = Poisson + Gaussian electronic noise, so a few slightly
negative values are legitimate low-dose measurements and are kept. Not legitimate: NaN/inf, a
volume with no positive value, or values far outside [0, ~1] (raw counts or post-log data
passed by mistake).
"""

from __future__ import annotations

import numpy as np
import torch

TRANSMISSION_RANGE = (-0.5, 1.5)
"""Values outside this range cannot be normalised transmission, even with electronic noise."""


class TransmissionError(ValueError):
    """An array is not a usable normalised-transmission volume."""


def check_transmission_volume(volume: np.ndarray | torch.Tensor, name: str = "transmission") -> None:
    """Raise TransmissionError unless `volume` is a finite (slices, views, detectors) transmission array."""
    if volume.ndim != 3:
        raise TransmissionError(f"{name} must be (slices, views, detectors), got shape {tuple(volume.shape)}")
    if min(volume.shape) < 1:
        raise TransmissionError(f"{name} is empty: shape {tuple(volume.shape)}")
    values = torch.as_tensor(volume)
    if not bool(torch.isfinite(values).all()):
        bad = int((~torch.isfinite(values)).sum())
        raise TransmissionError(f"{name} holds {bad} NaN/inf values; expected finite normalised transmission")
    if not bool((values > 0).any()):
        raise TransmissionError(f"{name} has no positive value; expected transmission y/(I0·d) in about [0, 1]")
    low, high = float(values.min()), float(values.max())
    if low < TRANSMISSION_RANGE[0] or high > TRANSMISSION_RANGE[1]:
        raise TransmissionError(
            f"{name} spans [{low:.4g}, {high:.4g}], outside {list(TRANSMISSION_RANGE)}: expected normalised "
            "transmission y/(I0·d), not raw counts or post-log line integrals"
        )

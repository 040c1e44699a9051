"""Hounsfield units <-> linear attenuation (NEED_SPEC.md §1: mu = mu_water * (1 + HU / 1000))."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from need_core.physics.settings import MU_WATER_PER_MM
from need_core.physics.validation import require_finite_array, require_positive_number

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def hu_to_mu(hu: ArrayT, mu_water: float = MU_WATER_PER_MM) -> ArrayT:
    """Attenuation in 1/mm from HU: mu = mu_water * (1 + HU/1000). numpy in -> numpy out, torch -> torch.

    Values below -1000 HU (e.g. -1024 padding) give small negative mu; they are kept, not clipped.
    """
    require_finite_array("hu", hu)
    mu_water = require_positive_number("mu_water", mu_water)
    if not isinstance(hu, torch.Tensor):
        hu = np.asarray(hu)
        hu = hu.astype(np.result_type(hu.dtype, np.float32), copy=False)
    return mu_water * (1.0 + hu / 1000.0)


def mu_to_hu(mu: ArrayT, mu_water: float = MU_WATER_PER_MM) -> ArrayT:
    """HU from attenuation in 1/mm: HU = 1000 * (mu - mu_water) / mu_water. numpy -> numpy, torch -> torch."""
    require_finite_array("mu", mu)
    mu_water = require_positive_number("mu_water", mu_water)
    if not isinstance(mu, torch.Tensor):
        mu = np.asarray(mu)
        mu = mu.astype(np.result_type(mu.dtype, np.float32), copy=False)
    return 1000.0 * (mu - mu_water) / mu_water

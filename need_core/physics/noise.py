"""Low-dose measurement simulation and the log transform (NEED_SPEC.md §1).

Pre-log counts of a ray with line integral p at incident count I0:
    y = Poisson(I0 exp(-p)) + Normal(0, sigma_e^2)                    (simulate_counts)
and its shifted-Poisson approximation, same mean and variance:
    y + sigma_e^2 ~ Poisson(I0 exp(-p) + sigma_e^2)                  (shifted_poisson_counts)
A dose fraction d uses I0 * d; the normalised transmission is x = y / (I0 d) (simulate_transmission),
and post-log data p_hat = -log(max(x, eps)) (transmission_to_line_integrals).

Randomness: `rng` is a numpy Generator, or an int seed from which one is made
(np.random.default_rng(seed)); there is no hidden global state, so equal seeds give equal draws.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

from need_core.physics.settings import PhysicsSettings
from need_core.physics.validation import (
    PhysicsInputError,
    require_finite_array,
    require_positive_number,
)

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
RngLike = np.random.Generator | int

# Floor applied to normalised transmission before the log: p_hat <= -log(1e-5) ~= 11.5, i.e. about
# 60 cm of water. Measured x <= 0 (electronic noise with almost no photons) maps to that bound instead
# of -log(0) = inf or NaN. Pass eps=0.5 / (I0 * d) for a floor of half a photon at the actual dose.
TRANSMISSION_FLOOR = 1e-5


def as_generator(rng: RngLike) -> np.random.Generator:
    """A numpy Generator from a Generator (returned as is) or an int seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise PhysicsInputError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _line_integrals_float64(line_integrals: Any) -> np.ndarray:
    """Validated float64 numpy copy of line integrals (numpy or torch)."""
    if isinstance(line_integrals, torch.Tensor):
        line_integrals = line_integrals.detach().cpu().numpy()
    values = np.asarray(line_integrals, dtype=np.float64)
    require_finite_array("line_integrals", values)
    return values


def simulate_counts(line_integrals: Any, incident_count: float, sigma_e2: float, rng: RngLike) -> np.ndarray:
    """Pre-log counts y = Poisson(I0 exp(-p)) + Normal(0, sigma_e2) per ray (float64, same shape as p)."""
    p = _line_integrals_float64(line_integrals)
    incident_count = require_positive_number("incident_count", incident_count)
    sigma_e2 = require_positive_number("sigma_e2", sigma_e2, allow_zero=True)
    generator = as_generator(rng)
    photons = generator.poisson(incident_count * np.exp(-p)).astype(np.float64)
    return photons + generator.normal(0.0, np.sqrt(sigma_e2), size=p.shape)


def shifted_poisson_counts(line_integrals: Any, incident_count: float, sigma_e2: float, rng: RngLike) -> np.ndarray:
    """Pre-log counts from the shifted-Poisson model: y = Poisson(I0 exp(-p) + sigma_e2) - sigma_e2 (float64)."""
    p = _line_integrals_float64(line_integrals)
    incident_count = require_positive_number("incident_count", incident_count)
    sigma_e2 = require_positive_number("sigma_e2", sigma_e2, allow_zero=True)
    generator = as_generator(rng)
    return generator.poisson(incident_count * np.exp(-p) + sigma_e2).astype(np.float64) - sigma_e2


def simulate_transmission(line_integrals: Any, dose: float, settings: PhysicsSettings, rng: RngLike) -> np.ndarray:
    """Normalised transmission x = y / (I0 d) (float32) of a scan at dose fraction d in (0, 1],
    with y from simulate_counts at incident count I0 * d."""
    incident = settings.incident_count_at(dose)
    counts = simulate_counts(line_integrals, incident, settings.sigma_e2, rng)
    return (counts / incident).astype(np.float32)


def transmission_to_line_integrals(transmission: ArrayT, eps: float = TRANSMISSION_FLOOR) -> ArrayT:
    """Post-log line integrals p_hat = -log(max(x, eps)); numpy -> numpy (float32), torch -> torch.

    Values x <= eps, including x <= 0 from electronic noise, become -log(eps) (see TRANSMISSION_FLOOR).
    """
    require_finite_array("transmission", transmission)
    eps = require_positive_number("eps", eps)
    if isinstance(transmission, torch.Tensor):
        return -torch.log(torch.clamp(transmission, min=eps))
    values = np.asarray(transmission, dtype=np.float32)
    return (-np.log(np.maximum(values, np.float32(eps)))).astype(np.float32)


def line_integrals_to_transmission(line_integrals: ArrayT) -> ArrayT:
    """Noise-free transmission exp(-p); numpy -> numpy (float32), torch -> torch."""
    require_finite_array("line_integrals", line_integrals)
    if isinstance(line_integrals, torch.Tensor):
        return torch.exp(-line_integrals)
    return np.exp(-np.asarray(line_integrals, dtype=np.float32))

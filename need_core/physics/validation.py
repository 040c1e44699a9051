"""Input checks shared by the physics functions, so every bad array fails the same clear way."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

DOSE_TOLERANCE = 1e-9
"""Dose fractions closer than this are the same dose (duplicate checks, archive look-ups)."""


class PhysicsInputError(ValueError):
    """An array or number given to a physics function is unusable (shape, NaN/inf, out of range)."""


def require_finite_array(name: str, values: Any) -> None:
    """Raise PhysicsInputError when `values` (numpy or torch) holds NaN or inf."""
    finite = torch.isfinite(values).all().item() if isinstance(values, torch.Tensor) else np.isfinite(values).all()
    if not finite:
        raise PhysicsInputError(f"{name} contains NaN or inf values; expected finite numbers only")


def require_positive_number(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return `value` as float after checking it is finite and > 0 (or >= 0 with allow_zero)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise PhysicsInputError(f"{name} must be a number, got {value!r}") from err
    bad = not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero)
    if bad:
        expected = ">= 0" if allow_zero else "> 0"
        raise PhysicsInputError(f"{name} must be finite and {expected}, got {value!r}")
    return number


def require_dose_fraction(dose: float) -> float:
    """Return the dose fraction as float after checking it lies in (0, 1]."""
    try:
        number = float(dose)
    except (TypeError, ValueError) as err:
        raise PhysicsInputError(f"dose must be a number in (0, 1], got {dose!r}") from err
    if not (0.0 < number <= 1.0):
        raise PhysicsInputError(f"dose must be a fraction of the normal dose in (0, 1], got {dose!r}")
    return number


def validate_doses(doses: Iterable[float]) -> list[float]:
    """The one check of a list of dose fractions: non-empty, each in (0, 1], no two within DOSE_TOLERANCE.

    Returns floats in the given order, the order in which flows process and report the doses."""
    try:
        values = [require_dose_fraction(dose) for dose in doses]
    except TypeError:
        raise PhysicsInputError(f"doses must be a list of fractions in (0, 1], got {doses!r}") from None
    if not values:
        raise PhysicsInputError("doses must name at least one dose fraction in (0, 1], got none")
    for i, dose in enumerate(values):
        if any(abs(dose - other) <= DOSE_TOLERANCE for other in values[:i]):
            raise PhysicsInputError(f"dose fractions must be distinct; {dose:g} is given twice in {values}")
    return values


def require_trailing_shape(name: str, array_shape: tuple[int, ...], expected: tuple[int, int], what: str) -> bool:
    """Check that a shape is `expected` or (B, *expected); return True when batched.

    `what` names the expected layout for the message, e.g. "(n_views, n_det)".
    """
    shape = tuple(int(n) for n in array_shape)
    if len(shape) == 2 and shape == expected:
        return False
    if len(shape) == 3 and shape[1:] == expected:
        return True
    raise PhysicsInputError(
        f"{name} has shape {shape}; expected {what} = {expected} or a batch (B, {expected[0]}, {expected[1]})"
    )

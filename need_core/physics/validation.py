"""Input checks shared by the physics functions, so every bad array fails the same clear way."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from need_core import doses as doses_rule
from need_core.doses import DOSE_TOLERANCE as DOSE_TOLERANCE  # re-exported: its home is need_core.doses
from need_core.doses import DoseError


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
    """need_core.doses.require_dose_fraction, its complaint raised as PhysicsInputError like any physics input's."""
    try:
        return doses_rule.require_dose_fraction(dose)
    except DoseError as err:
        raise PhysicsInputError(str(err)) from err.__cause__


def validate_doses(doses: Iterable[float]) -> list[float]:
    """need_core.doses.validate_doses (the one rule for lists of dose fractions), its complaint raised as
    PhysicsInputError."""
    try:
        return doses_rule.validate_doses(doses)
    except DoseError as err:
        raise PhysicsInputError(str(err)) from err.__cause__


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

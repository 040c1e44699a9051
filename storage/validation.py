"""Checks shared by the archive and the volume readers: each names the bad argument and what was expected.

Each check takes the error class to raise (a ValueError subclass of the caller's module), so archive callers
get ArchiveInputError and reader callers get ReaderError from the same rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from need_core.doses import DoseError, validate_doses


def check_volume_array(values: Any, what: str, error: type[ValueError] = ValueError) -> np.ndarray:
    """A finite, non-empty 3-D (slice, y, x) array as float32; NaN/inf or float32 overflow is an error."""
    array = np.asarray(values)
    if array.ndim != 3 or 0 in array.shape:
        raise error(f"{what} must be a non-empty 3-D array (slice, y, x), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) and not np.iscomplexobj(array)):
        raise error(f"{what} must hold real numbers, got dtype {array.dtype}")
    as_float = array.astype(np.float32)
    check_finite(as_float, what, error)
    return as_float


def check_finite(array: np.ndarray, what: str, error: type[ValueError] = ValueError) -> None:
    """Raise if `array` holds NaN or inf, saying how many and where the first one is."""
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise error(f"{what} holds {int(bad.sum())} non-finite value(s) (NaN/inf), first at index {first}")


def check_spacing_mm(spacing: Any, error: type[ValueError] = ValueError) -> tuple[float, float, float]:
    """Voxel spacing (dz, dy, dx) in mm: three finite positive numbers."""
    try:
        values = tuple(float(value) for value in spacing)
    except (TypeError, ValueError):
        raise error(f"spacing_mm must be three numbers (dz, dy, dx) in mm, got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise error(f"spacing_mm must be three finite positive numbers (dz, dy, dx) in mm, got {spacing!r}")
    return values


def check_z_mm(z_mm: Any, n_slices: int, error: type[ValueError] = ValueError) -> np.ndarray:
    """Slice positions along the patient axis: n_slices finite, strictly increasing values (float64)."""
    z = np.asarray(z_mm, dtype=np.float64)
    if z.shape != (n_slices,):
        raise error(f"z_mm must have shape ({n_slices},) (one position per slice), got {z.shape}")
    check_finite(z, "z_mm", error)
    if n_slices > 1 and not (np.diff(z) > 0).all():
        raise error("z_mm must be strictly increasing (slices sorted along the patient axis, no duplicates)")
    return z


def check_doses(doses: Iterable[Any], error: type[ValueError] = ValueError) -> list[float]:
    """Dose fractions by need_core's one rule (`validate_doses`), its complaint raised as `error`."""
    try:
        return validate_doses(doses)
    except DoseError as err:
        raise error(str(err)) from None


def check_physics(physics: Mapping[str, Any], error: type[ValueError] = ValueError) -> dict[str, Any]:
    """Physics settings (I0, sigma_e2, mu_water under need_core's key names): a non-empty dict of finite numbers.

    The archive does not own the physics' key names (need_core.physics does); it only makes sure they store exactly.
    """
    if not isinstance(physics, Mapping) or not physics:
        raise error(f"physics must be a non-empty dict of numbers (I0, sigma_e2, mu_water), got {physics!r}")
    checked = to_jsonable(dict(physics), "physics", error)
    not_numbers = [
        key for key, value in checked.items() if isinstance(value, bool) or not isinstance(value, (int, float))
    ]
    if not_numbers:
        raise error(f"physics values must be numbers; {not_numbers} are not")
    return checked


def check_shape2(shape: Any, what: str, error: type[ValueError] = ValueError) -> tuple[int, int]:
    """A 2-D shape such as the sinogram's (n_views, n_det): two positive integers."""
    try:
        values = tuple(int(size) for size in shape)
        exact = all(int(size) == size for size in shape)
    except (TypeError, ValueError):
        raise error(f"{what} must be two positive integers, got {shape!r}") from None
    if len(values) != 2 or not exact or min(values) < 1:
        raise error(f"{what} must be two positive integers, got {shape!r}")
    return values


def to_jsonable(value: Any, what: str, error: type[ValueError] = ValueError) -> Any:
    """A JSON round-tripped copy of `value` (numpy scalars/arrays and tuples become plain numbers and lists).

    Raises if `value` holds something JSON cannot express (objects, NaN/inf), so stored settings compare exactly.
    """

    def plain(item: Any) -> Any:
        if isinstance(item, (np.generic, np.ndarray)):
            return item.tolist()
        raise TypeError(f"{type(item).__name__} is not JSON-able")

    try:
        return json.loads(json.dumps(value, default=plain, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise error(f"{what} must be JSON-able (numbers, strings, lists, dicts; no NaN/inf): {err}") from None

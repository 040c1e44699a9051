"""Dose fractions and their one rule (each in (0, 1], at least one, no two alike), free of torch so that the CLI can
check `--doses` in milliseconds; need_core.physics.validation raises the same complaints as PhysicsInputError."""

from __future__ import annotations

from collections.abc import Iterable

DOSE_TOLERANCE = 1e-9
"""Dose fractions closer than this are the same dose (duplicate checks, archive look-ups)."""


class DoseError(ValueError):
    """A dose fraction, or a list of them, is unusable."""


def require_dose_fraction(dose: float) -> float:
    """Return the dose fraction as float after checking it lies in (0, 1]."""
    try:
        number = float(dose)
    except (TypeError, ValueError) as err:
        raise DoseError(f"dose must be a number in (0, 1], got {dose!r}") from err
    if not (0.0 < number <= 1.0):
        raise DoseError(f"dose must be a fraction of the normal dose in (0, 1], got {dose!r}")
    return number


def validate_doses(values: Iterable[float]) -> list[float]:
    """The one check of a list of dose fractions: non-empty, each in (0, 1], no two within DOSE_TOLERANCE.

    Returns floats in the given order, the order in which flows process and report the doses."""
    try:
        doses = [require_dose_fraction(dose) for dose in values]
    except TypeError:
        raise DoseError(f"doses must be a list of fractions in (0, 1], got {values!r}") from None
    if not doses:
        raise DoseError("doses must name at least one dose fraction in (0, 1], got none")
    for i, dose in enumerate(doses):
        if any(abs(dose - other) <= DOSE_TOLERANCE for other in doses[:i]):
            raise DoseError(f"dose fractions must be distinct; {dose:g} is given twice in {doses}")
    return doses

"""Physical constants of the measurement model (NEED_SPEC.md §1), one validated, serialisable record."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from need_core.physics.validation import PhysicsInputError, require_dose_fraction, require_positive_number

NORMAL_DOSE_INCIDENT_COUNT = 2.5e5
ELECTRONIC_NOISE_VARIANCE = 10.0
MU_WATER_PER_MM = 0.0192


@dataclass(frozen=True)
class PhysicsSettings:
    """Normal-dose incident photons per bin and view (I0), electronic-noise variance (sigma_e^2, counts^2)
    and the water attenuation used for HU conversion (1/mm, ~70 keV)."""

    incident_count: float = NORMAL_DOSE_INCIDENT_COUNT
    sigma_e2: float = ELECTRONIC_NOISE_VARIANCE
    mu_water_per_mm: float = MU_WATER_PER_MM

    def __post_init__(self) -> None:
        object.__setattr__(self, "incident_count", require_positive_number("incident_count", self.incident_count))
        object.__setattr__(self, "sigma_e2", require_positive_number("sigma_e2", self.sigma_e2, allow_zero=True))
        object.__setattr__(self, "mu_water_per_mm", require_positive_number("mu_water_per_mm", self.mu_water_per_mm))

    def incident_count_at(self, dose: float) -> float:
        """I0 * d: incident photons per bin and view of a scan at dose fraction d in (0, 1] (NEED_SPEC.md §1)."""
        return self.incident_count * require_dose_fraction(dose)

    def to_dict(self) -> dict[str, float]:
        """Plain dict for archive attrs and run parameters."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhysicsSettings:
        """Rebuild from to_dict(); unknown keys raise PhysicsInputError, missing keys take the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise PhysicsInputError(
                f"unknown physics setting(s) {sorted(unknown)}; expected a subset of {sorted(names)}"
            )
        return cls(**dict(data))

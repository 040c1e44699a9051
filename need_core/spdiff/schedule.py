"""SPDiff photon schedule and time-step matching (NEED_SPEC.md §2).

The schedule is a decreasing list of photon counts λ_t; a measurement at incident count I0·d is
treated as the diffusion state at the step whose λ_t is closest to I0·d.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from need_core.physics.settings import ELECTRONIC_NOISE_VARIANCE


class ScheduleError(ValueError):
    """A schedule setting or an incident count/dose cannot be used."""


def photon_schedule(num_steps: int, photons_start: float, photons_end: float) -> np.ndarray:
    """λ_t = λ_0 / r_t with r = linspace(1, λ_0/λ_T, T): the decreasing photon count of each step."""
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ScheduleError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    for name, value in (("photons_start", photons_start), ("photons_end", photons_end)):
        if not math.isfinite(value) or value <= 0:
            raise ScheduleError(f"{name} must be a positive finite photon count, got {value!r}")
    if photons_end >= photons_start:
        raise ScheduleError(
            f"photons_end ({photons_end}) must be below photons_start ({photons_start}): the schedule decreases"
        )
    ratios = np.linspace(1.0, photons_start / photons_end, num_steps)
    return photons_start / ratios


@dataclass(frozen=True)
class SPDiffSchedule:
    """All SPDiff diffusion settings: T steps from λ_0 down to λ_T photons, electronic-noise variance σe²."""

    num_steps: int = 10
    photons_start: float = 3e5
    photons_end: float = 2.5e4
    electronic_noise_var: float = ELECTRONIC_NOISE_VARIANCE

    def __post_init__(self) -> None:
        photon_schedule(self.num_steps, self.photons_start, self.photons_end)
        if not math.isfinite(self.electronic_noise_var) or self.electronic_noise_var < 0:
            raise ScheduleError(
                f"electronic_noise_var must be a finite variance >= 0, got {self.electronic_noise_var!r}"
            )

    @property
    def photon_counts(self) -> np.ndarray:
        """λ_t for t = 0 … T-1 (float64)."""
        return photon_schedule(self.num_steps, self.photons_start, self.photons_end)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings, stored in checkpoints so sampling reuses the trained schedule."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SPDiffSchedule:
        """Rebuild a schedule from `to_dict` output; unknown or missing keys are an error."""
        expected = set(cls.__dataclass_fields__)
        if set(values) != expected:
            raise ScheduleError(
                f"schedule settings must have exactly the keys {sorted(expected)}, got {sorted(values)}"
            )
        return cls(**dict(values))


def check_incident_count(incident_count: float) -> float:
    """Return `incident_count` as float, or raise if it is not a positive finite photon count."""
    count = float(incident_count)
    if not math.isfinite(count) or count <= 0:
        raise ScheduleError(f"incident count must be a positive finite number of photons, got {incident_count!r}")
    return count


def match_time_step(incident_count: float, schedule: SPDiffSchedule) -> int:
    """Time-step matching: t* = argmin_t |λ_t − I0·d| (counts beyond the schedule clip to its ends)."""
    count = check_incident_count(incident_count)
    return int(np.argmin(np.abs(schedule.photon_counts - count)))


def network_evaluations(start_step: int, ending: str = "chain") -> int:
    """Sampling from step t* evaluates the network t* + 1 times with the reverse chain (t*, t*−1, …, 0), once with
    the one-shot ending (x̂0 at t*; need_core.spdiff.sampler.ENDINGS)."""
    return 1 if ending == "one_shot" else start_step + 1

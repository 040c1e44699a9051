"""SPDiff photon schedule and time-step matching (NEED_SPEC.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from need_core.physics import PhysicsInputError, PhysicsSettings
from need_core.spdiff import (
    ScheduleError,
    SPDiffSchedule,
    match_time_step,
    network_evaluations,
    photon_schedule,
)


def test_reference_schedule_matches_spec_values() -> None:
    expected = [300000, 135000, 87097, 64286, 50943, 42188, 36000, 31395, 27835, 25000]
    np.testing.assert_allclose(SPDiffSchedule().photon_counts, expected, rtol=0, atol=0.5)


@pytest.mark.parametrize(("dose", "evaluations"), [(1.0, 1), (0.5, 2), (0.25, 4), (0.125, 8), (0.10, 10), (0.05, 10)])
def test_matching_table_equals_spec(dose: float, evaluations: int) -> None:
    start = match_time_step(PhysicsSettings().incident_count_at(dose), SPDiffSchedule())
    assert network_evaluations(start) == evaluations
    assert network_evaluations(start, "one_shot") == 1  # x̂0 at t*, whatever t*


def test_lower_dose_needs_a_schedule_trained_for_it() -> None:
    wide = SPDiffSchedule(num_steps=20, photons_end=5e3)
    physics = PhysicsSettings()
    assert match_time_step(physics.incident_count_at(0.05), wide) > match_time_step(
        physics.incident_count_at(0.1), wide
    )


def test_schedule_round_trips_through_dict() -> None:
    schedule = SPDiffSchedule(num_steps=12, photons_start=2e5, photons_end=1e4, electronic_noise_var=5.0)
    assert SPDiffSchedule.from_dict(schedule.to_dict()) == schedule
    with pytest.raises(ScheduleError, match="keys"):
        SPDiffSchedule.from_dict({"num_steps": 10})


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5, float("nan")])
def test_dose_outside_unit_interval_is_refused(dose: float) -> None:
    with pytest.raises(PhysicsInputError, match=r"\(0, 1\]"):
        PhysicsSettings().incident_count_at(dose)


@pytest.mark.parametrize("count", [0.0, -5.0, float("nan"), float("inf")])
def test_non_positive_or_nan_count_is_refused(count: float) -> None:
    with pytest.raises(ScheduleError, match="positive finite"):
        match_time_step(count, SPDiffSchedule())


@pytest.mark.parametrize(
    "kwargs", [{"num_steps": 1}, {"photons_end": 4e5}, {"photons_start": -1.0}, {"electronic_noise_var": -1.0}]
)
def test_bad_schedule_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ScheduleError):
        SPDiffSchedule(**kwargs)


def test_photon_schedule_decreases() -> None:
    counts = photon_schedule(10, 3e5, 2.5e4)
    assert np.all(np.diff(counts) < 0) and counts[0] == 3e5 and counts[-1] == pytest.approx(2.5e4)

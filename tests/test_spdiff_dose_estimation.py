"""Automatic dose estimation from the data (beyond the paper): within 10 % on real head-CT sinograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from need_core.physics import PhysicsSettings, simulate_transmission
from need_core.spdiff import DoseEstimationError, TransmissionError, estimate_dose, estimate_incident_count
from tests.spdiff_head_ct import head_ct_line_integrals


@pytest.fixture(scope="module")
def held_out_line_integrals(head_ct_path: Path) -> np.ndarray:
    """Two held-out slices of the real head CT at full 256² resolution (336 views)."""
    line_integrals, _ = head_ct_line_integrals(head_ct_path, slice(50, 52))
    return line_integrals


@pytest.mark.parametrize("dose", [0.5, 0.25, 0.1, 0.05])
def test_incident_count_within_ten_percent(held_out_line_integrals: np.ndarray, dose: float) -> None:
    settings = PhysicsSettings()
    transmission = simulate_transmission(held_out_line_integrals, dose, settings, rng=int(dose * 1000))
    estimate = estimate_incident_count(transmission, settings.sigma_e2)
    assert estimate == pytest.approx(settings.incident_count * dose, rel=0.10)
    assert estimate_dose(transmission[0]) == pytest.approx(dose, rel=0.10)


def test_flat_field_is_estimated_closely() -> None:
    rng = np.random.default_rng(0)
    count = 20000.0
    counts = rng.poisson(count * 0.5, (2, 64, 128)) + rng.normal(0, np.sqrt(10.0), (2, 64, 128))
    assert estimate_incident_count(counts / count) == pytest.approx(count, rel=0.05)


def test_unusable_data_is_refused() -> None:
    with pytest.raises(DoseEstimationError, match="too small"):
        estimate_incident_count(np.full((1, 8, 8), 0.5))
    with pytest.raises(DoseEstimationError, match="blocks"):
        estimate_incident_count(np.full((1, 64, 128), 0.01))
    with pytest.raises(DoseEstimationError, match="no measurable noise"):
        estimate_incident_count(np.full((2, 64, 200), 0.5))
    with pytest.raises(TransmissionError, match="NaN"):
        estimate_incident_count(np.full((1, 64, 128), np.nan))

"""Measurement model: count statistics, dose scaling of FBP noise, log transform, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from need_core.physics import (
    TRANSMISSION_FLOOR,
    FanBeamGeometry,
    PhysicsInputError,
    PhysicsSettings,
    fbp,
    forward_project,
    hu_to_mu,
    line_integrals_to_transmission,
    shifted_poisson_counts,
    simulate_counts,
    simulate_transmission,
    transmission_to_line_integrals,
    water_cylinder_phantom,
)

N_SAMPLES = 10**6
I0, SIGMA_E2 = 2.5e5, 10.0


@pytest.mark.parametrize("simulate", [simulate_counts, shifted_poisson_counts])
@pytest.mark.parametrize("p", [2.0, 9.5])  # ~34000 and ~19 expected photons (electronic noise matters)
def test_count_mean_and_variance_match_theory(simulate, p):
    counts = simulate(np.full(N_SAMPLES, p), I0, SIGMA_E2, np.random.default_rng(7))
    expected_mean = I0 * np.exp(-p)
    expected_variance = expected_mean + SIGMA_E2
    assert counts.mean() == pytest.approx(expected_mean, rel=0.02)
    assert counts.var() == pytest.approx(expected_variance, rel=0.02)


def test_simulation_is_reproducible_from_seed_or_generator():
    p = np.linspace(0.0, 4.0, 1000)
    first = simulate_counts(p, I0, SIGMA_E2, 3)
    np.testing.assert_array_equal(first, simulate_counts(p, I0, SIGMA_E2, np.random.default_rng(3)))
    assert not np.array_equal(first, simulate_counts(p, I0, SIGMA_E2, 4))
    with pytest.raises(PhysicsInputError, match="rng must be a numpy Generator or an int seed"):
        simulate_counts(p, I0, SIGMA_E2, None)


def test_transmission_is_normalised_float32_at_any_dose():
    p = np.full((200, 500), 1.5)
    for dose in (1.0, 0.25, 0.05):
        transmission = simulate_transmission(p, dose, PhysicsSettings(), rng=11)
        assert transmission.dtype == np.float32 and transmission.shape == p.shape
        assert transmission.mean() == pytest.approx(np.exp(-1.5), rel=0.01)
        expected_std = np.sqrt(I0 * dose * np.exp(-1.5) + SIGMA_E2) / (I0 * dose)
        assert transmission.std() == pytest.approx(expected_std, rel=0.03)


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5, float("nan"), "half"])
def test_dose_outside_unit_interval_is_rejected(dose):
    with pytest.raises(PhysicsInputError, match=r"dose must be .*\(0, 1\]"):
        simulate_transmission(np.zeros(4), dose, PhysicsSettings(), rng=0)


def test_bad_counts_settings_and_line_integrals_are_rejected():
    with pytest.raises(PhysicsInputError, match="incident_count must be finite and > 0"):
        simulate_counts(np.zeros(3), 0.0, SIGMA_E2, 0)
    with pytest.raises(PhysicsInputError, match="incident_count must be finite and > 0"):
        shifted_poisson_counts(np.zeros(3), -5.0, SIGMA_E2, 0)
    with pytest.raises(PhysicsInputError, match="sigma_e2 must be finite and >= 0"):
        simulate_counts(np.zeros(3), I0, -1.0, 0)
    with pytest.raises(PhysicsInputError, match="line_integrals contains NaN or inf"):
        simulate_counts(np.array([0.0, np.inf]), I0, SIGMA_E2, 0)
    with pytest.raises(PhysicsInputError, match="incident_count must be finite and > 0"):
        PhysicsSettings(incident_count=0)
    with pytest.raises(PhysicsInputError, match="unknown physics setting"):
        PhysicsSettings.from_dict({"I0": 1e5})


def test_settings_round_trip():
    settings = PhysicsSettings(incident_count=1e5, sigma_e2=0.0)
    assert PhysicsSettings.from_dict(settings.to_dict()) == settings


def test_log_transform_inverts_exp_and_floors_non_positive_values():
    p = np.array([0.0, 0.5, 3.0], dtype=np.float32)
    np.testing.assert_allclose(transmission_to_line_integrals(line_integrals_to_transmission(p)), p, atol=1e-6)
    floored = transmission_to_line_integrals(np.array([0.0, -0.01, 1e-9], dtype=np.float32))
    np.testing.assert_allclose(floored, -np.log(TRANSMISSION_FLOOR), rtol=1e-6)
    custom = transmission_to_line_integrals(np.array([-1.0]), eps=0.5 / 2.5e4)
    assert custom[0] == pytest.approx(-np.log(0.5 / 2.5e4), rel=1e-6)
    tensor = transmission_to_line_integrals(torch.tensor([1.0, 0.0]))
    assert isinstance(tensor, torch.Tensor) and torch.isfinite(tensor).all()
    with pytest.raises(PhysicsInputError, match="transmission contains NaN or inf"):
        transmission_to_line_integrals(np.array([np.nan]))
    with pytest.raises(PhysicsInputError, match="eps must be finite and > 0"):
        transmission_to_line_integrals(np.ones(2), eps=0.0)


def test_fbp_noise_std_scales_as_inverse_sqrt_dose():
    geometry = FanBeamGeometry.for_image((64, 64), 4.0)
    phantom = water_cylinder_phantom((64, 64), 4.0)
    line_integrals = forward_project(hu_to_mu(phantom.image_hu), geometry, backend="astra-cpu")
    settings = PhysicsSettings()
    rng = np.random.default_rng(2024)
    roi = np.hypot(*np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5)) < 8  # water, central
    noise_std = {}
    for dose in (1.0, 0.25, 0.1):
        noisy = np.stack([simulate_transmission(line_integrals, dose, settings, rng) for _ in range(6)])
        images = fbp(transmission_to_line_integrals(noisy), geometry, backend="rebin")
        noise_std[dose] = images.std(axis=0)[roi].mean()  # across realisations: no structure in it
    for dose in (0.25, 0.1):
        assert noise_std[dose] / noise_std[1.0] == pytest.approx(1.0 / np.sqrt(dose), rel=0.10)

"""DGDiff HU window, sigmoid schedule and time-step matching (NEED_SPEC.md §4, steps 1–2)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from need_core.dgdiff.hu_window import HUWindowWarning, hu_to_unit, unit_to_hu
from need_core.dgdiff.matching import (
    GuidanceSettings,
    estimate_noise_sigma,
    ldct_guidance_weight,
    match_noise_step,
    start_step,
)
from need_core.dgdiff.schedule import DiffusionSchedule, ScheduleSettings, sigmoid_beta_schedule


def test_hu_window_maps_ends_to_unit_interval_and_back():
    hu = torch.tensor([-1024.0, 0.0, 1024.0, 3072.0])
    unit = hu_to_unit(hu)
    assert torch.allclose(unit, torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    assert torch.allclose(unit_to_hu(unit), hu)


def test_hu_outside_window_is_clipped_with_a_warning_naming_the_count():
    hu = torch.tensor([-2000.0, 0.0, 5000.0, 100.0])
    with pytest.warns(HUWindowWarning, match=r"2 of 4 pixels .*\(1 below, 1 above\)"):
        unit = hu_to_unit(hu, "x_ld")
    assert unit[0] == -1.0 and unit[2] == 1.0


def test_a_few_noisy_air_pixels_below_the_window_are_clipped_silently():
    hu = torch.zeros(1000)
    hu[:300] = -1100.0  # 30 % of the pixels: low-dose noise in air
    with warnings.catch_warnings():
        warnings.simplefilter("error", HUWindowWarning)
        unit = hu_to_unit(hu)
    assert unit[:300].eq(-1.0).all()


def test_hu_nan_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        hu_to_unit(torch.tensor([0.0, float("nan")]))


def test_sigmoid_schedule_is_a_valid_decreasing_alpha_bar():
    schedule = DiffusionSchedule(ScheduleSettings(timesteps=1000))
    betas = sigmoid_beta_schedule(schedule.settings)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    assert (betas > 0).all() and (betas <= 0.999).all()
    alpha_bar = schedule.alphas_cumprod
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()
    assert alpha_bar[0] > 0.999 and alpha_bar[-1] < 1e-3
    assert schedule.posterior_std[0] == pytest.approx(1e-10)


def test_schedule_settings_refuse_nonsense():
    with pytest.raises(ValueError, match="timesteps"):
        ScheduleSettings(timesteps=1)
    with pytest.raises(ValueError, match="sigmoid_end"):
        ScheduleSettings(sigmoid_start=3.0, sigmoid_end=-3.0)


def test_matching_returns_the_step_nearest_a_known_injected_sigma():
    schedule = DiffusionSchedule()
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 64, 64, generator=generator) * 2 - 1
    injected_steps = torch.tensor([5, 120, 400])
    sigmas = schedule.sqrt_one_minus_alphas_cumprod[injected_steps]
    noisy = clean + sigmas[:, None, None] * torch.randn(clean.shape, generator=generator)
    estimate = estimate_noise_sigma(noisy, clean)
    assert torch.allclose(estimate, sigmas, rtol=0.03)
    matched = match_noise_step(schedule, estimate)
    levels = schedule.sqrt_one_minus_alphas_cumprod.tolist()
    for sigma, step in zip(estimate.tolist(), matched.tolist(), strict=True):
        nearest = min(range(len(levels)), key=lambda t: abs(sigma - levels[t]))
        assert step == nearest
    assert (matched - injected_steps).abs().max() <= 0.05 * injected_steps.max()
    exact = match_noise_step(schedule, sigmas)
    assert exact.tolist() == injected_steps.tolist()


def test_start_step_is_matched_step_over_divisor_but_at_least_one():
    assert start_step(torch.tensor([0, 9, 10, 57, 999])).tolist() == [1, 1, 1, 5, 99]
    assert start_step(torch.tensor([57]), divisor=5).tolist() == [11]
    with pytest.raises(ValueError, match="divisor"):
        start_step(torch.tensor([3]), divisor=0)


def test_ldct_guidance_weight_follows_the_reference_formula_without_overflow():
    for sigma in (0.0, 0.01, 0.02, 0.05):
        e = math.exp(5000 * sigma**2)
        assert float(ldct_guidance_weight(torch.tensor([sigma]))[0]) == pytest.approx(0.7 * e / (10 + e), rel=1e-6)
    assert float(ldct_guidance_weight(torch.tensor([1.0]))[0]) == pytest.approx(0.7)
    calibrated = GuidanceSettings(s1_scale=0.9, s1_offset=2.0, s1_sharpness=100.0)
    e = math.exp(100 * 0.05**2)
    assert float(ldct_guidance_weight(torch.tensor([0.05]), calibrated)[0]) == pytest.approx(
        0.9 * e / (2 + e), rel=1e-6
    )


@pytest.mark.parametrize("bad", [{"s2": 1.5}, {"s1_scale": -0.1}, {"divisor": 0}, {"s1_offset": float("nan")}])
def test_guidance_settings_refuse_bad_values(bad):
    with pytest.raises(ValueError):
        GuidanceSettings(**bad)


def test_guidance_settings_round_trip_and_refuse_unknown_keys():
    settings = GuidanceSettings(s2=0.5, divisor=5)
    assert GuidanceSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(ValueError, match="unknown guidance"):
        GuidanceSettings.from_dict({"s3": 1.0})


def test_noise_estimate_and_matching_refuse_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        estimate_noise_sigma(torch.zeros(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="finite"):
        match_noise_step(DiffusionSchedule(), torch.tensor([float("nan")]))

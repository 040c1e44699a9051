"""SPDiff forward process and reverse step: moments against theory, determinism (NEED_SPEC.md §2)."""

from __future__ import annotations

import pytest
import torch

from need_core.random_streams import slice_generators
from need_core.spdiff import SPDiffSchedule, forward_process_sample, reverse_step


def test_forward_process_mean_and_variance_match_shifted_poisson_theory() -> None:
    schedule = SPDiffSchedule()
    x0 = torch.tensor([0.02, 0.3, 1.0], dtype=torch.float64)
    draws = 40000
    for step in (1, 5, 9):
        lam = float(schedule.photon_counts[step])
        batch = x0.expand(draws, -1).contiguous()
        steps = torch.full((draws,), step)
        samples = forward_process_sample(batch, steps, schedule, torch.Generator().manual_seed(step))
        variance = (lam * x0 + schedule.electronic_noise_var) / lam**2
        mean_tolerance = 5 * torch.sqrt(variance / draws)
        assert torch.all((samples.mean(0) - x0).abs() < mean_tolerance), "x_t must be unbiased (the − σe² shift)"
        torch.testing.assert_close(samples.var(0), variance, rtol=0.05, atol=0)


def test_forward_process_keeps_clean_data_at_step_zero() -> None:
    x0 = torch.rand(4, 3, 5, 6)
    steps = torch.tensor([0, 3, 0, 9])
    noisy = forward_process_sample(x0, steps, SPDiffSchedule(), torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], x0[0]) and torch.equal(noisy[2], x0[2])
    assert not torch.equal(noisy[1], x0[1])


def test_forward_process_is_deterministic_for_a_seed() -> None:
    x0, steps = torch.rand(2, 3, 4, 4), torch.tensor([2, 7])
    first = forward_process_sample(x0, steps, SPDiffSchedule(), torch.Generator().manual_seed(3))
    second = forward_process_sample(x0, steps, SPDiffSchedule(), torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


def test_forward_process_refuses_steps_outside_schedule() -> None:
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        forward_process_sample(torch.rand(1, 3, 4, 4), torch.tensor([10]), SPDiffSchedule(), torch.Generator())


def test_reverse_step_adds_the_missing_photons_on_average() -> None:
    schedule = SPDiffSchedule()
    lam = schedule.photon_counts
    step = 5
    x_t = torch.full((2, 25000), 0.4, dtype=torch.float64)
    x0_hat = torch.full_like(x_t, 0.5)
    previous = reverse_step(x_t, x0_hat, step, schedule, slice_generators(1, [0, 1]))
    expected_mean = (lam[step] * 0.4 + (lam[step - 1] - lam[step]) * 0.5) / lam[step - 1]
    expected_var = (lam[step - 1] - lam[step]) * 0.5 / lam[step - 1] ** 2
    assert float(previous.mean()) == pytest.approx(expected_mean, abs=5 * (expected_var / 50000) ** 0.5)
    assert float(previous.var()) == pytest.approx(expected_var, rel=0.05)


@pytest.mark.parametrize("step", [0, 1])
def test_reverse_step_returns_the_estimate_at_the_last_two_steps(step: int) -> None:
    x0_hat = torch.rand(3, 4)
    assert reverse_step(torch.rand(3, 4), x0_hat, step, SPDiffSchedule(), slice_generators(0, [0, 1, 2])) is x0_hat


def test_reverse_step_draws_each_slice_from_its_own_stream() -> None:
    schedule = SPDiffSchedule()
    x_t, x0_hat = torch.full((3, 40), 0.4), torch.full((3, 40), 0.5)
    together = reverse_step(x_t, x0_hat, 5, schedule, slice_generators(0, [7, 8, 9]))
    alone = reverse_step(x_t[1:2], x0_hat[1:2], 5, schedule, slice_generators(0, [8]))
    assert torch.equal(together[1], alone[0])
    assert not torch.equal(together[0], together[1])
    with pytest.raises(ValueError, match="one generator per slice"):
        reverse_step(x_t, x0_hat, 5, schedule, slice_generators(0, [7]))

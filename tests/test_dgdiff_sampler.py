"""DGDiff doubly guided sampler: equations, per-slice start steps in one batch, determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from need_core.dgdiff.diffusion import ancestral_step
from need_core.dgdiff.hu_window import HUWindowWarning, hu_to_unit
from need_core.dgdiff.matching import GuidanceSettings, estimate_image_noise
from need_core.dgdiff.network import UNetSettings, build_unet
from need_core.dgdiff.sampler import StartStepWarning, ddim_sample, guided_step, refine
from need_core.dgdiff.schedule import DiffusionSchedule

# Heavy synthetic noise pushes air below −1024 HU on purpose; the warning itself is tested separately.
pytestmark = pytest.mark.filterwarnings("ignore::need_core.dgdiff.hu_window.HUWindowWarning")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_unet("tiny").eval()


@pytest.fixture(scope="module")
def schedule() -> DiffusionSchedule:
    return DiffusionSchedule()


def disc_phantom(n: int, size: int = 32) -> np.ndarray:
    """n copies of a water disc (0 HU) in air (−1000 HU) with a brighter insert (+300 HU)."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    image = np.where(xx**2 + yy**2 < (0.4 * size) ** 2, 0.0, -1000.0)
    image[(xx - 3) ** 2 + yy**2 < 9] = 300.0
    return np.repeat(image[None], n, axis=0).astype(np.float32)


def noisy_copies(clean: np.ndarray, noise_hu: list[float], seed: int = 1) -> np.ndarray:
    """Add Gaussian noise of a different std (HU) to each slice."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(clean.shape) * np.asarray(noise_hu)[:, None, None]
    return (clean + noise).astype(np.float32)


def test_guided_step_with_unit_weights_is_the_plain_ancestral_step(model, schedule):
    generator = torch.Generator().manual_seed(3)
    x, x_ld, x_init, noise = (torch.randn(3, 1, 32, 32, generator=generator) for _ in range(4))
    for step in (0, 1, 7):
        t = torch.full((3,), step)
        ones = torch.ones(3, 1, 1, 1)
        with torch.no_grad():
            guided = guided_step(model, schedule, x, t, x_ld, x_init, ones, ones, noise)
            plain = ancestral_step(model, schedule, x, t, noise)
        assert torch.equal(guided, plain)


def test_guidance_pulls_towards_ldct_and_initial_images(model, schedule):
    generator = torch.Generator().manual_seed(4)
    x, x_ld, x_init, noise = (torch.randn(2, 1, 32, 32, generator=generator) for _ in range(4))
    t = torch.zeros(2, dtype=torch.long)
    zeros = torch.zeros(2, 1, 1, 1)
    with torch.no_grad():
        fully_init = guided_step(model, schedule, x, t, x_ld, x_init, zeros + 1, zeros, noise)
    assert torch.allclose(fully_init, x_init)


def test_batched_sampling_with_per_slice_start_steps_equals_one_slice_at_a_time(model, schedule):
    clean = disc_phantom(4)
    x_ld = noisy_copies(clean, [20.0, 250.0, 500.0, 900.0])
    steps_batched = refine(model, x_ld, clean, schedule, batch_size=4, seed=7)
    assert len(set(steps_batched.start_steps.tolist())) == 4, steps_batched.start_steps
    singles = [
        refine(model, x_ld[i : i + 1], clean[i : i + 1], schedule, batch_size=1, seed=7, slice_ids=[i])
        for i in range(4)
    ]
    for i, single in enumerate(singles):
        assert single.start_steps[0] == steps_batched.start_steps[i]
        np.testing.assert_allclose(single.images_hu[0], steps_batched.images_hu[i], atol=1e-3)
    mixed = refine(model, x_ld, clean, schedule, batch_size=3, seed=7)
    np.testing.assert_allclose(mixed.images_hu, steps_batched.images_hu, atol=1e-3)


def test_on_batch_hears_each_slice_once_as_its_batch_is_refined(model, schedule):
    clean = disc_phantom(3)
    x_ld = noisy_copies(clean, [20.0, 900.0, 250.0])
    heard: list[list[int]] = []
    refined = refine(model, x_ld, clean, schedule, batch_size=2, slice_ids=[40, 41, 42], on_batch=heard.append)
    assert [len(batch) for batch in heard] == [2, 1]
    assert sorted(s for batch in heard for s in batch) == [40, 41, 42]
    noisiest_first = [40 + i for i in np.argsort(-refined.start_steps, kind="stable")]
    assert [s for batch in heard for s in batch] == noisiest_first  # batches run from the highest start step down


def test_refine_is_deterministic_for_a_seed_and_varies_with_it(model, schedule):
    clean = disc_phantom(2)
    x_ld = noisy_copies(clean, [300.0, 300.0])
    first = refine(model, x_ld, clean, schedule, seed=11)
    again = refine(model, x_ld, clean, schedule, seed=11)
    other = refine(model, x_ld, clean, schedule, seed=12)
    assert np.array_equal(first.images_hu, again.images_hu)
    assert not np.allclose(first.images_hu, other.images_hu)
    assert first.images_hu.shape == (2, 32, 32) and first.images_hu.dtype == np.float32


def test_start_steps_grow_with_the_noise_of_the_ldct_image(model, schedule):
    clean = disc_phantom(3)
    result = refine(model, noisy_copies(clean, [10.0, 400.0, 1200.0]), clean, schedule)
    assert result.start_steps[0] == 1
    assert result.start_steps[0] < result.start_steps[1] < result.start_steps[2]
    with_divisor_5 = refine(
        model, noisy_copies(clean, [10.0, 400.0, 1200.0]), clean, schedule, guidance=GuidanceSettings(divisor=5)
    )
    assert (with_divisor_5.start_steps[1:] > result.start_steps[1:]).all()


def test_given_noise_levels_replace_the_difference_estimate(model, schedule):
    noisy = noisy_copies(disc_phantom(2, size=64) + 1500.0, [200.0, 600.0])  # no air: little window clipping
    sigma = estimate_image_noise(hu_to_unit(torch.from_numpy(noisy), "noisy"))
    expected = np.array([200.0, 600.0]) * 2.0 / 4096.0  # HU -> model units of the [-1024, 3072] window
    np.testing.assert_allclose(sigma.numpy(), expected, rtol=0.15)
    alone = refine(model, noisy, noisy, schedule)  # x_init = x_LD: the difference says there is no noise
    assert (alone.start_steps == 1).all()
    told = refine(model, noisy, noisy, schedule, sigma=sigma.numpy())
    assert told.start_steps[0] > 1 and told.start_steps[1] > told.start_steps[0]
    with pytest.raises(ValueError, match="one noise level per slice"):
        refine(model, noisy, noisy, schedule, sigma=[0.1])


def test_refine_refuses_bad_input(model, schedule):
    clean = disc_phantom(2)
    with pytest.raises(ValueError, match="same shape"):
        refine(model, clean, clean[:1], schedule)
    broken = clean.copy()
    broken[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="x_ld has 1 NaN"):
        refine(model, broken, clean, schedule)
    with pytest.raises(ValueError, match="guidance weights"):
        refine(model, clean, clean, schedule, guidance=GuidanceSettings(s2=1.5))
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        refine(model, clean[None], clean[None], schedule)


def test_refine_never_starts_beyond_the_steps_the_model_was_trained_on(model, schedule):
    clean = disc_phantom(2)
    noisy = noisy_copies(clean, [10.0, 1200.0])
    free = refine(model, noisy, clean, schedule, guidance=GuidanceSettings(divisor=5))
    capped = int(free.start_steps.max()) - 1
    with pytest.warns(StartStepWarning, match=f"1 of 2 slices .* trained on \\(<= {capped}\\)"):
        limited = refine(model, noisy, clean, schedule, guidance=GuidanceSettings(divisor=5), max_step=capped)
    assert limited.start_steps.tolist() == [free.start_steps[0], capped]


def test_refine_warns_about_pixels_outside_the_hu_window(model, schedule):
    clean = disc_phantom(1)
    x_ld = clean.copy()
    x_ld[0, :2, :2] = 4000.0
    with pytest.warns(HUWindowWarning, match="x_ld: 4 of 1024 pixels"):
        refine(model, x_ld, clean, schedule)


def test_ddim_sampling_is_deterministic_and_accepts_a_condition(schedule):
    torch.manual_seed(0)
    model = build_unet("tiny")
    first = ddim_sample(model, schedule, (2, 1, 16, 16), steps=5, generator=torch.Generator().manual_seed(1))
    again = ddim_sample(model, schedule, (2, 1, 16, 16), steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.abs().max() <= 1.0
    conditioned = build_unet(UNetSettings(base_channels=8, multipliers=(1, 2), res_blocks=1, in_channels=2))
    out = ddim_sample(
        conditioned,
        schedule,
        (1, 1, 16, 16),
        steps=3,
        eta=1.0,
        generator=torch.Generator().manual_seed(2),
        condition=torch.zeros(1, 1, 16, 16),
    )
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_refine_on_cuda_matches_cpu(model, schedule):
    clean = disc_phantom(3)
    x_ld = noisy_copies(clean, [20.0, 300.0, 700.0])
    on_cpu = refine(model, x_ld, clean, schedule, seed=5)
    on_gpu = refine(model.to("cuda"), x_ld, clean, schedule, seed=5)
    model.to("cpu")
    assert np.array_equal(on_cpu.start_steps, on_gpu.start_steps)
    np.testing.assert_allclose(on_cpu.images_hu, on_gpu.images_hu, atol=2.0)

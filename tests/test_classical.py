"""The classical baselines (tasks/classical.py): NLM, TV and optional BM3D on the LDCT FBP, with strengths relative
to each slice's own noise level."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from need_core.metrics import psnr
from tasks import classical
from tests.pipeline_fixtures import write_small_ingested_archive


def phantom_hu(size: int = 64) -> np.ndarray:
    """A head-like phantom in HU: air, a soft-tissue ellipse inside a 1000 HU skull ring, two low-contrast inserts."""
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    radius = np.hypot(x / 0.85, y / 0.95)
    image = np.full((size, size), -1000.0)
    image[radius < 0.9] = 1000.0
    image[radius < 0.8] = 40.0
    image[np.hypot(x - 0.3, y) < 0.15] = 80.0
    image[np.hypot(x + 0.3, y + 0.2) < 0.12] = -100.0
    return image


def noisy_stack(sigma_hu: float, n: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) stacks of n phantom slices with white Gaussian noise of `sigma_hu`."""
    clean = np.repeat(phantom_hu()[None], n, axis=0)
    noise = np.random.default_rng(seed).normal(0.0, sigma_hu, clean.shape)
    return clean, (clean + noise).astype(np.float32)


def test_noise_sigma_reads_white_noise_and_scales_with_the_image():
    noise = np.random.default_rng(1).normal(0.0, 30.0, (64, 64))
    assert classical.noise_sigma(noise) == pytest.approx(30.0, rel=0.06)
    image = phantom_hu() + noise
    assert classical.noise_sigma(2.0 * image) == pytest.approx(2.0 * classical.noise_sigma(image))


@pytest.mark.parametrize("method", ["nlm", "tv"])
@pytest.mark.parametrize("sigma_hu", [20.0, 60.0])
def test_one_strength_denoises_at_two_noise_levels(method, sigma_hu):
    clean, noisy = noisy_stack(sigma_hu)
    denoised = classical.DENOISERS[method](noisy, classical.STRENGTHS[method])
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    gain = np.asarray(psnr(denoised, clean)) - np.asarray(psnr(noisy, clean))
    assert (gain > 2.0).all(), gain


def test_nlm_strength_is_relative_to_the_noise_level():
    # h and sigma follow the slice's own σ, so scaling the image scales the result and changes nothing else
    _, noisy = noisy_stack(30.0, n=1)
    np.testing.assert_allclose(classical.nlm_images(2.0 * noisy), 2.0 * classical.nlm_images(noisy), atol=0.05)


def test_more_nlm_strength_removes_more():
    _, noisy = noisy_stack(30.0, n=1)
    removed = [float(np.std(noisy - classical.nlm_images(noisy, strength))) for strength in (0.3, 1.0, 3.0)]
    assert removed[0] < removed[1] < removed[2]


def test_a_tiny_tv_strength_returns_the_input():
    _, noisy = noisy_stack(30.0, n=1)
    np.testing.assert_allclose(classical.tv_images(noisy, 1e-6), noisy, atol=0.5)


def test_a_constant_slice_comes_back_unchanged():
    flat = np.full((1, 32, 32), 40.0, dtype=np.float32)
    for method in ("nlm", "tv"):
        np.testing.assert_array_equal(classical.DENOISERS[method](flat, 1.0), flat)


@pytest.mark.parametrize("method", ["nlm", "tv", "bm3d"])
def test_bad_strengths_and_shapes_are_refused(method):
    denoise = classical.DENOISERS[method]
    with pytest.raises(ValueError, match="strength"):
        denoise(np.zeros((1, 16, 16), np.float32), 0.0)
    if method != "bm3d" or classical.bm3d_available():
        with pytest.raises(ValueError, match=r"\(n, H, W\)"):
            denoise(np.zeros((16, 16), np.float32), 1.0)


def test_without_the_bm3d_package_bm3d_is_left_out_and_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # makes `import bm3d` raise ImportError
    assert not classical.bm3d_available()
    assert classical.classical_methods() == ("nlm", "tv")
    with pytest.raises(ImportError, match=r"need-pipeline\[bench\]"):
        classical.bm3d_images(noisy_stack(30.0, n=1)[1])
    _, noisy = noisy_stack(30.0, n=1)
    assert set(classical.classical_baselines(noisy)) == {"nlm", "tv"}


def test_bm3d_denoises_when_installed():
    pytest.importorskip("bm3d")
    clean, noisy = noisy_stack(40.0, n=1)
    denoised = classical.bm3d_images(noisy)
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    assert psnr(denoised[0], clean[0]) > psnr(noisy[0], clean[0]) + 2.0
    assert float(np.abs(classical.bm3d_images(noisy, 1e-4) - noisy).max()) < 1.0
    assert "bm3d" in classical.classical_baselines(noisy)


def test_classical_baselines_hold_every_installed_method():
    _, noisy = noisy_stack(30.0, n=2)
    images = classical.classical_baselines(noisy)
    assert list(images) == list(classical.classical_methods()) and {"nlm", "tv"} <= set(images)
    assert all(values.shape == noisy.shape for values in images.values())


def test_baseline_task_adds_the_classical_denoisers_of_the_low_dose_fbp(head_ct_path, tmp_path):
    from storage.archive import open_archive
    from tasks.baselines import RAMP, baseline_images, low_dose_fbp, read_line_integrals

    archive_path = tmp_path / "small.zarr"
    write_small_ingested_archive(head_ct_path, archive_path, 0.1)

    images = baseline_images.fn(str(archive_path), 0.1, [0, 2], None, None, device="cpu")
    assert list(images) == ["fbp_hann", *classical.classical_methods()]
    # each classical baseline is its denoiser, at its chosen strength, of the stored scans' ramp FBP
    archive = open_archive(archive_path)
    fbp_ld = low_dose_fbp(archive, read_line_integrals(archive, 0.1, [0, 2]), RAMP)
    for method in classical.classical_methods():
        expected = classical.DENOISERS[method](fbp_ld, classical.STRENGTHS[method])
        np.testing.assert_allclose(images[method], expected, atol=1e-3)

"""PSNR / SSIM / RMSE as NEED_SPEC.md §5 defines them, checked against scikit-image on real head CT."""

from __future__ import annotations

import gzip
import plistlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from need_core.metrics import MetricInputError, psnr, rmse, ssim


def _head_ct_slices(path: Path, indices: list[int]) -> np.ndarray:
    """A few slices (HU, float64) of the InVesalius Cranium volume: a gzipped tar with main.plist + matrix.dat."""
    with gzip.open(path) as compressed, tarfile.open(fileobj=compressed) as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()}
        info = plistlib.loads(archive.extractfile(members["main.plist"]).read())["matrix"]
        raw = archive.extractfile(members[info["filename"]]).read()
    volume = np.frombuffer(raw, dtype=np.dtype(info["dtype"]).newbyteorder("<")).reshape(info["shape"])
    return volume[indices].astype(np.float64)


@pytest.fixture(scope="module")
def head_pair(head_ct_path):
    reference = _head_ct_slices(head_ct_path, [50, 60])
    noisy = reference + np.random.default_rng(5).normal(0.0, 60.0, reference.shape)
    return noisy, reference


def _display(hu: np.ndarray) -> np.ndarray:
    return (np.clip(hu, -1000, 1000) + 1000) / 2000 * 255


def test_ssim_and_psnr_match_scikit_image_on_head_ct(head_pair):
    noisy, reference = head_pair
    ours_ssim, ours_psnr = ssim(noisy, reference), psnr(noisy, reference)
    assert ours_ssim.shape == ours_psnr.shape == (2,)
    for index in range(2):
        x, y = _display(noisy[index]), _display(reference[index])
        data_range = y.max() - y.min()
        expected_ssim = structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
        )
        assert ours_ssim[index] == pytest.approx(expected_ssim, abs=1e-4)
        assert ours_psnr[index] == pytest.approx(peak_signal_noise_ratio(y, x, data_range=data_range), abs=1e-6)


def test_single_images_give_floats_and_torch_batches_give_tensors(head_pair):
    noisy, reference = head_pair
    assert isinstance(ssim(noisy[0], reference[0]), float)
    assert isinstance(psnr(noisy[0], reference[0]), float)
    batched = rmse(torch.from_numpy(noisy), torch.from_numpy(reference))
    assert isinstance(batched, torch.Tensor) and batched.shape == (2,)
    assert rmse(noisy[0], reference[0]) == pytest.approx(float(batched[0]))


def test_identical_images_are_perfect(head_pair):
    _, reference = head_pair
    assert ssim(reference[0], reference[0]) == pytest.approx(1.0)
    assert psnr(reference[0], reference[0]) == float("inf")
    assert rmse(reference[0], reference[0]) == 0.0


def test_rmse_is_in_hu_on_clipped_images():
    reference = np.zeros((16, 16))
    assert rmse(reference + 30.0, reference) == pytest.approx(30.0)
    bright = np.full((16, 16), 1000.0)
    assert rmse(bright + 2000.0, bright) == 0.0  # both clip to 1000 HU


def test_bad_inputs_are_rejected():
    image = np.linspace(-1000, 1000, 400).reshape(20, 20)
    with pytest.raises(MetricInputError, match=r"shape \(20, 20\) differs from ref_hu shape \(20, 19\)"):
        psnr(image, image[:, :19])
    with pytest.raises(MetricInputError, match="pred_hu contains NaN or inf"):
        ssim(np.where(image > 900, np.nan, image), image)
    with pytest.raises(MetricInputError, match="ref_hu is constant"):
        psnr(image, np.full((20, 20), -1024.0))
    with pytest.raises(MetricInputError, match="at least 11x11"):
        ssim(image[:8, :8], image[:8, :8])
    with pytest.raises(MetricInputError, match=r"\(H, W\)"):
        rmse(image[0], image[0])


def test_the_windowed_mean_is_the_separable_gaussian_convolution():
    from need_core.metrics import _local_mean, gaussian_window

    images = torch.rand(3, 40, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    taps = gaussian_window()
    convolved = torch.nn.functional.conv2d(images[:, None], taps.view(1, 1, 1, -1))
    convolved = torch.nn.functional.conv2d(convolved, taps.view(1, 1, -1, 1))[:, 0]
    windowed = _local_mean(images, taps)
    assert windowed.shape == (3, 30, 23)
    torch.testing.assert_close(windowed, convolved, rtol=0, atol=1e-13)


def test_a_summary_row_from_per_slice_values_is_the_quality_row(head_pair):
    from need_core.reporting import metric_values, quality_row, summary_row

    noisy, reference = head_pair
    values = metric_values(noisy, reference)
    assert {name: v.shape for name, v in values.items()} == {"psnr": (2,), "ssim": (2,), "rmse_hu": (2,)}
    assert summary_row("m", 0.25, values) == quality_row("m", 0.25, noisy, reference)

"""Forward projection and FBP: units (mm), conventions shared by all backends, CT numbers, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from need_core.physics import (
    BackendUnavailableError,
    FanBeamGeometry,
    PhysicsInputError,
    PhysicsSettings,
    astra_cuda_available,
    fbp,
    fbp_hu,
    forward_project,
    hu_to_mu,
    mu_to_hu,
    water_cylinder_phantom,
)
from need_core.physics.rebin import parallel_grid_for, rebin_to_parallel

CPU_FBP_BACKENDS = ("rebin", "torch")
GPU = pytest.mark.skipif(not astra_cuda_available(), reason="needs a CUDA GPU usable by ASTRA")


def _disk(geometry: FanBeamGeometry, centre_mm: tuple[float, float], radius_mm: float, mu: float) -> np.ndarray:
    """Point-sampled disk image (1/mm) at centre (x, y) in mm, y up."""
    (ny, nx), (dy, dx) = geometry.image_shape, geometry.pixel_spacing_mm
    x = (np.arange(nx) - 0.5 * (nx - 1)) * dx
    y = (0.5 * (ny - 1) - np.arange(ny)) * dy
    xx, yy = np.meshgrid(x, y)
    return (np.hypot(xx - centre_mm[0], yy - centre_mm[1]) <= radius_mm).astype(np.float32) * mu


def _blob(geometry: FanBeamGeometry, centre_mm: tuple[float, float], sigma_mm: float, mu: float) -> np.ndarray:
    """Smooth Gaussian blob (1/mm) at centre (x, y) in mm, y up: sharp edges would only test interpolation."""
    (ny, nx), (dy, dx) = geometry.image_shape, geometry.pixel_spacing_mm
    x = (np.arange(nx) - 0.5 * (nx - 1)) * dx
    y = (0.5 * (ny - 1) - np.arange(ny)) * dy
    xx, yy = np.meshgrid(x, y)
    squared = (xx - centre_mm[0]) ** 2 + (yy - centre_mm[1]) ** 2
    return (mu * np.exp(-squared / (2 * sigma_mm**2))).astype(np.float32)


@pytest.fixture(scope="module")
def small_geometry() -> FanBeamGeometry:
    return FanBeamGeometry.for_image((64, 64), 2.0)


@pytest.fixture(scope="module")
def phantom_128():
    geometry = FanBeamGeometry.for_image((128, 128), 2.0)
    phantom = water_cylinder_phantom((128, 128), 2.0)
    return geometry, phantom, forward_project(hu_to_mu(phantom.image_hu), geometry, backend="astra-cpu")


def test_line_integrals_are_in_mm_units(small_geometry):
    radius, mu = 40.0, 0.02
    sinogram = forward_project(_disk(small_geometry, (0.0, 0.0), radius, mu), small_geometry, backend="astra-cpu")
    assert sinogram.dtype == np.float32 and sinogram.shape == small_geometry.sinogram_shape
    # n_det is even: the two central bins straddle the central ray, whose chord is the diameter
    centre = small_geometry.n_det // 2
    central = sinogram[:, centre - 1 : centre + 1].mean(axis=1)
    assert central == pytest.approx(np.full(small_geometry.n_views, 2 * radius * mu), rel=0.03)


def test_batch_and_torch_input_match_single_slices(small_geometry):
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 0.03, size=(2, 64, 64)).astype(np.float32)
    batch = forward_project(torch.from_numpy(images), small_geometry, backend="astra-cpu")
    assert batch.shape == (2, *small_geometry.sinogram_shape)
    np.testing.assert_array_equal(batch[1], forward_project(images[1], small_geometry, backend="astra-cpu"))


def test_rebinned_fan_data_equal_a_parallel_projection(small_geometry):
    import astra

    from need_core.physics.astra_support import volume_geometry

    image = _blob(small_geometry, (20.0, 30.0), 8.0, 0.02) + _blob(small_geometry, (-30.0, -10.0), 5.0, 0.01)
    rebinned = rebin_to_parallel(forward_project(image, small_geometry, backend="astra-cpu")[None], small_geometry)[0]
    grid = parallel_grid_for(small_geometry)
    geometry = astra.create_proj_geom("parallel", grid.offset_spacing_mm, grid.n_offsets, grid.angles)
    projector = astra.create_projector("strip", geometry, volume_geometry(small_geometry))
    try:
        sinogram_id, reference = astra.create_sino(image, projector)
        astra.data2d.delete(sinogram_id)
    finally:
        astra.projector.delete(projector)
    assert np.abs(rebinned - reference).mean() < 0.01 * reference.mean()


@pytest.mark.parametrize("backend", CPU_FBP_BACKENDS)
def test_fbp_puts_an_off_centre_object_where_it_was(small_geometry, backend):
    image = _blob(small_geometry, (31.0, 41.0), 8.0, 0.02)  # on a pixel centre
    recon = fbp(forward_project(image, small_geometry, backend="astra-cpu"), small_geometry, backend=backend)
    assert recon.shape == small_geometry.image_shape and recon.dtype == np.float32
    assert np.unravel_index(np.argmax(recon), recon.shape) == np.unravel_index(np.argmax(image), image.shape)
    assert recon.max() == pytest.approx(0.02, rel=0.05)
    assert np.abs(recon - image).mean() < 0.01 * 0.02


@pytest.mark.parametrize("backend", CPU_FBP_BACKENDS)
def test_fbp_ct_numbers_of_water_cylinder(phantom_128, backend):
    geometry, phantom, sinogram = phantom_128
    image_hu = fbp_hu(sinogram, geometry, PhysicsSettings(), backend=backend)
    assert abs(image_hu[phantom.water_roi].mean()) <= 5.0
    assert abs(image_hu[phantom.dense_roi].mean() - 1000.0) <= 20.0
    assert abs(image_hu[phantom.light_roi].mean() + 500.0) <= 20.0


def test_cpu_backends_agree_and_batches_work(phantom_128):
    geometry, phantom, sinogram = phantom_128
    batch = np.stack([sinogram, 0.5 * sinogram])
    rebin = fbp(batch, geometry, filter="hann", backend="rebin")
    reference = fbp(torch.from_numpy(batch), geometry, filter="hann", backend="torch", device="cpu")
    assert rebin.shape == reference.shape == (2, 128, 128)
    inside = phantom.image_hu > -1000.0  # edges differ slightly (rebinning interpolates); compare the object
    assert np.abs(mu_to_hu(rebin[0]) - mu_to_hu(reference[0]))[inside].mean() < 12.0
    np.testing.assert_allclose(rebin[1], 0.5 * rebin[0], atol=1e-6)


def test_window_filters_lower_noise_and_keep_ct_numbers(phantom_128):
    geometry, phantom, sinogram = phantom_128
    noisy = sinogram + np.random.default_rng(1).normal(0.0, 0.01, sinogram.shape).astype(np.float32)
    stds = {}
    for name in ("ram-lak", "shepp-logan", "hann"):
        hu = fbp_hu(noisy, geometry, filter=name, backend="rebin")
        assert abs(hu[phantom.water_roi].mean()) <= 15.0
        stds[name] = hu[phantom.water_roi].std()
    assert stds["hann"] < stds["shepp-logan"] < stds["ram-lak"]


def test_hu_units_round_trip_for_numpy_and_torch():
    hu = np.array([-1000.0, 0.0, 1000.0], dtype=np.float32)
    np.testing.assert_allclose(hu_to_mu(hu), [0.0, 0.0192, 0.0384], rtol=1e-6)
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-3)
    tensor = hu_to_mu(torch.tensor([0.0, 500.0]), mu_water=0.02)
    assert isinstance(tensor, torch.Tensor)
    assert torch.allclose(tensor, torch.tensor([0.02, 0.03]))
    with pytest.raises(PhysicsInputError, match="NaN or inf"):
        hu_to_mu(np.array([0.0, np.nan]))
    with pytest.raises(PhysicsInputError, match="mu_water must be finite and > 0"):
        mu_to_hu(np.zeros(2), mu_water=0.0)


def test_wrong_shapes_are_rejected_with_the_expected_shape(small_geometry):
    with pytest.raises(PhysicsInputError, match=r"expected image_shape \(ny, nx\) = \(64, 64\)"):
        forward_project(np.zeros((64, 65), np.float32), small_geometry)
    with pytest.raises(PhysicsInputError, match=r"expected \(n_views, n_det\) = \(84, 108\)"):
        fbp(np.zeros((84, 100), np.float32), small_geometry)
    with pytest.raises(PhysicsInputError, match="expected"):
        fbp(np.zeros((1, 2, 84, 108), np.float32), small_geometry)


def test_non_finite_input_is_rejected(small_geometry):
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.inf
    with pytest.raises(PhysicsInputError, match="mu contains NaN or inf"):
        forward_project(image, small_geometry)
    sinogram = np.zeros(small_geometry.sinogram_shape, np.float32)
    sinogram[0, 0] = np.nan
    with pytest.raises(PhysicsInputError, match="line_integrals contains NaN or inf"):
        fbp(sinogram, small_geometry)


def test_unknown_backend_filter_and_short_scan_are_rejected(small_geometry):
    sinogram = np.zeros(small_geometry.sinogram_shape, np.float32)
    with pytest.raises(PhysicsInputError, match="unknown FBP backend"):
        fbp(sinogram, small_geometry, backend="fast")
    with pytest.raises(PhysicsInputError, match="unknown FBP filter"):
        fbp(sinogram, small_geometry, filter="hamming")
    with pytest.raises(PhysicsInputError, match="unknown projection backend"):
        forward_project(np.zeros((64, 64), np.float32), small_geometry, backend="rebin")
    short = FanBeamGeometry.for_image((64, 64), 2.0, angle_range_rad=np.pi * 1.5)
    with pytest.raises(PhysicsInputError, match="needs a full scan"):
        fbp(np.zeros(short.sinogram_shape, np.float32), short)


@pytest.mark.skipif(astra_cuda_available(), reason="checks the error raised without a GPU")
def test_astra_cuda_without_gpu_is_a_clear_error(small_geometry):
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        forward_project(np.zeros((64, 64), np.float32), small_geometry, backend="astra-cuda")
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        fbp(np.zeros(small_geometry.sinogram_shape, np.float32), small_geometry, backend="astra-cuda")


@pytest.mark.gpu
@GPU
def test_astra_cuda_matches_cpu_backends(phantom_128):
    geometry, phantom, sinogram = phantom_128
    mu = hu_to_mu(phantom.image_hu)
    gpu_sinogram = forward_project(mu, geometry, backend="astra-cuda")
    assert np.abs(gpu_sinogram - sinogram).mean() < 0.01 * sinogram.mean()
    reference = fbp(sinogram, geometry, filter="hann", backend="torch", device="cpu")
    for backend, device in (("astra-cuda", None), ("torch", "cuda")):
        image = fbp(sinogram, geometry, filter="hann", backend=backend, device=device)
        assert np.abs(image - reference).mean() < 0.01 * 0.0192, backend
    image_hu = fbp_hu(sinogram, geometry, backend="astra-cuda")
    assert abs(image_hu[phantom.water_roi].mean()) <= 5.0
    assert abs(image_hu[phantom.dense_roi].mean() - 1000.0) <= 20.0
    assert abs(image_hu[phantom.light_roi].mean() + 500.0) <= 20.0


@pytest.mark.slow
@pytest.mark.parametrize(("size", "spacing"), [(256, 1.0), (512, 0.5)])
def test_ct_numbers_at_full_size(size, spacing):
    geometry = FanBeamGeometry.for_image((size, size), spacing)
    phantom = water_cylinder_phantom((size, size), spacing)
    image_hu = fbp_hu(forward_project(hu_to_mu(phantom.image_hu), geometry), geometry)
    assert abs(image_hu[phantom.water_roi].mean()) <= 5.0
    assert abs(image_hu[phantom.dense_roi].mean() - 1000.0) <= 20.0
    assert abs(image_hu[phantom.light_roi].mean() + 500.0) <= 20.0

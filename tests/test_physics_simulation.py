"""The one scan simulator: noise from (seed, stream, slice, dose) only, HU clipping at air, the 1/d variance law,
and the archive written by ingest equals simulate_scan's output."""

from __future__ import annotations

import numpy as np
import pytest

from need_core.physics import (
    AIR_HU,
    ARCHIVE_STREAM,
    NORMAL_DOSE,
    FanBeamGeometry,
    PhysicsInputError,
    PhysicsSettings,
    attenuation_from_hu,
    simulate_scan,
    slice_rng,
    water_cylinder_phantom,
)

SIZE, SPACING = 32, 7.0
GEOMETRY = FanBeamGeometry.for_image((SIZE, SIZE), SPACING)
PHYSICS = PhysicsSettings()
DOSES = (0.5, 0.1)


def images(n: int) -> np.ndarray:
    """n water-cylinder slices in air, with -1024 HU padding in the corners (as many scanners write) and a
    slightly different water value per slice, so slices differ."""
    phantom = water_cylinder_phantom((SIZE, SIZE), SPACING).image_hu.astype(np.float32)
    stack = np.stack([np.where(phantom > AIR_HU, phantom + 10.0 * k, phantom) for k in range(n)])
    stack[:, :4, :4] = -1024.0
    return stack


def scan_of(slices: list[int], **options):
    """simulate_scan of the given slices of `images(4)`, seed 3 unless told otherwise."""
    options = {"seed": 3, **options}
    return simulate_scan(images(4)[slices], GEOMETRY, PHYSICS, DOSES, slice_indices=slices, **options)


def test_noise_depends_on_slice_not_on_which_slices_are_simulated_together():
    together, alone, reordered = scan_of([0, 1, 2, 3]), scan_of([2]), scan_of([3, 1])
    for dose in (NORMAL_DOSE, *DOSES):
        np.testing.assert_array_equal(alone.transmission(dose)[0], together.transmission(dose)[2])
        np.testing.assert_array_equal(reordered.transmission(dose), together.transmission(dose)[[3, 1]])
    np.testing.assert_array_equal(together.select([3, 1]).proj_ld[0.1], reordered.proj_ld[0.1])
    np.testing.assert_allclose(alone.fbp_nd[0], together.fbp_nd[2], atol=1e-3)


def test_seed_stream_and_dose_each_change_the_noise():
    base = scan_of([1])
    assert not np.array_equal(base.proj_nd, scan_of([1], seed=4).proj_nd)
    assert not np.array_equal(base.proj_nd, scan_of([1], stream=0x5EED).proj_nd)
    # the two doses draw different noise: their normalised deviations are uncorrelated
    clean = np.exp(-base.line_integrals)
    z = {d: (base.transmission(d) - clean) * np.sqrt(d) for d in (NORMAL_DOSE, 0.5)}
    assert abs(np.corrcoef(z[NORMAL_DOSE].ravel(), z[0.5].ravel())[0, 1]) < 0.1


def test_archive_stream_keeps_the_entropy_every_archive_was_written_with():
    expected = np.random.default_rng([3, 17, 250_000]).random(4)
    np.testing.assert_array_equal(slice_rng(3, 17, 0.25, ARCHIVE_STREAM).random(4), expected)
    other = np.random.default_rng([3, 0x5EED, 17, 250_000]).random(4)
    np.testing.assert_array_equal(slice_rng(3, 17, 0.25, 0x5EED).random(4), other)


def test_hu_below_air_is_clipped_so_attenuation_is_never_negative():
    mu = attenuation_from_hu(np.array([-2000.0, -1024.0, AIR_HU, 0.0]), PHYSICS)
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.0, PHYSICS.mu_water_per_mm], atol=1e-9)
    padded = np.full((1, SIZE, SIZE), -1024.0, np.float32)
    scan = simulate_scan(padded, GEOMETRY, PHYSICS, [], seed=0, slice_indices=[0])
    np.testing.assert_array_equal(scan.line_integrals, 0.0)
    assert scan_of([0, 1]).line_integrals.min() >= 0.0


def test_transmission_noise_variance_scales_as_one_over_dose():
    scan = simulate_scan(images(4), GEOMETRY, PHYSICS, [0.25, 0.05], seed=0, slice_indices=range(4))
    clean = np.exp(-scan.line_integrals)
    variance = {d: float(np.mean((scan.transmission(d) - clean) ** 2 / clean)) for d in (NORMAL_DOSE, 0.25, 0.05)}
    for dose in (0.25, 0.05):
        assert variance[dose] / variance[NORMAL_DOSE] == pytest.approx(1.0 / dose, rel=0.1)
    assert variance[NORMAL_DOSE] == pytest.approx(1.0 / PHYSICS.incident_count_at(NORMAL_DOSE), rel=0.1)


def test_doses_are_checked_and_only_simulated_doses_can_be_read():
    scan = scan_of([0], seed=0)
    assert scan.transmission(NORMAL_DOSE) is scan.proj_nd and sorted(scan.proj_ld) == sorted(DOSES)
    with pytest.raises(PhysicsInputError, match="was not simulated"):
        scan.transmission(0.25)
    with pytest.raises(PhysicsInputError, match="not simulated"):
        scan.select([5])
    with pytest.raises(PhysicsInputError, match=r"\(0, 1\]"):
        simulate_scan(images(1), GEOMETRY, PHYSICS, [1.5], seed=0, slice_indices=[0])
    with pytest.raises(PhysicsInputError, match="one slice index per image"):
        simulate_scan(images(2), GEOMETRY, PHYSICS, DOSES, seed=0, slice_indices=[0])
    assert PHYSICS.incident_count_at(0.25) == pytest.approx(0.25 * PHYSICS.incident_count)


def test_ingest_writes_exactly_what_simulate_scan_returns(tmp_path):
    from storage.archive import create_archive, open_archive
    from tasks.chunking import SliceChunk
    from tasks.ingest import ingest_chunk

    hu = images(3)
    path = tmp_path / "a.zarr"
    create_archive(
        path,
        image_hu=hu,
        spacing_mm=(2.0, SPACING, SPACING),
        z_mm=np.arange(3) * 2.0,
        doses=list(DOSES),
        geometry=GEOMETRY.to_dict(),
        physics=PHYSICS.to_dict(),
        seed=5,
        source={},
        sinogram_shape=GEOMETRY.sinogram_shape,
    )
    ingest_chunk.fn(str(path), SliceChunk(0, 2), list(DOSES))
    ingest_chunk.fn(str(path), SliceChunk(2, 3), list(DOSES))
    stored = open_archive(path).dataset
    scan = simulate_scan(hu, GEOMETRY, PHYSICS, DOSES, seed=5, slice_indices=range(3))
    np.testing.assert_array_equal(stored.proj_nd.values, scan.proj_nd)
    np.testing.assert_array_equal(stored.fbp_nd.values, scan.fbp_nd)
    for dose in DOSES:
        np.testing.assert_array_equal(stored.proj_ld.sel(dose=dose).values, scan.proj_ld[dose])

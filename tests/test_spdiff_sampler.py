"""SPDiff sampler: batched over slices, halo and edges, determinism, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from need_core.spdiff import (
    SPDiffModel,
    SPDiffSchedule,
    SPDiffSettingsError,
    SPDiffUNet,
    TransmissionError,
    denoise_volume,
    network_profile,
)
from need_core.spdiff.sampler import neighbour_indices
from need_core.spdiff.schedule import ScheduleError

SHAPE = (12, 16)


@pytest.fixture()
def model() -> SPDiffModel:
    torch.manual_seed(0)
    return SPDiffModel(SPDiffUNet(network_profile("tiny")).eval(), SPDiffSchedule(), SHAPE)


def low_dose(slices: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 1.0, (slices, *SHAPE)).astype(np.float32)


def test_output_shape_follows_halo(model: SPDiffModel) -> None:
    volume = low_dose()
    assert denoise_volume(model, volume, 25000.0).transmission.shape == (5, *SHAPE)
    assert denoise_volume(model, volume, 25000.0, halo=(True, False)).transmission.shape == (4, *SHAPE)
    assert denoise_volume(model, volume, 25000.0, halo=(True, True)).transmission.shape == (3, *SHAPE)


def test_halo_slices_are_context_for_their_neighbours(model: SPDiffModel) -> None:
    volume = low_dose()
    with_halo = denoise_volume(model, volume, 2.5e5, halo=(True, True)).transmission
    without_halo = denoise_volume(model, volume[1:4], 2.5e5).transmission
    full = denoise_volume(model, volume, 2.5e5).transmission
    # one network evaluation at full dose: the interior slices see the same context as in the full volume
    np.testing.assert_allclose(with_halo, full[1:4], atol=1e-6)
    assert not np.allclose(with_halo[0], without_halo[0], atol=1e-6)


def test_edges_mirror_the_neighbour() -> None:
    assert neighbour_indices(4).tolist() == [[1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 2]]
    assert neighbour_indices(1).tolist() == [[0, 0, 0]]


def test_deterministic_for_a_seed(model: SPDiffModel) -> None:
    volume = low_dose()
    first = denoise_volume(model, volume, 12500.0, seed=7, batch_size=2)
    again = denoise_volume(model, volume, 12500.0, seed=7, batch_size=2)
    other_seed = denoise_volume(model, volume, 12500.0, seed=8, batch_size=2)
    other_stream = denoise_volume(model, volume, 12500.0, seed=7, batch_size=2, stream=(1,))
    np.testing.assert_array_equal(first.transmission, again.transmission)
    assert not np.allclose(first.transmission, other_seed.transmission)
    assert not np.allclose(first.transmission, other_stream.transmission)


def test_a_slice_draws_from_its_own_id_not_its_position(model: SPDiffModel) -> None:
    volume = low_dose()
    as_slices_0_to_4 = denoise_volume(model, volume, 12500.0, seed=7, batch_size=1).transmission
    as_slices_10_to_14 = denoise_volume(
        model, volume, 12500.0, seed=7, batch_size=1, slice_ids=range(10, 15)
    ).transmission
    relabelled = denoise_volume(model, volume, 12500.0, seed=7, batch_size=1, slice_ids=range(10, 15)).transmission
    assert not np.allclose(as_slices_0_to_4, as_slices_10_to_14)
    np.testing.assert_array_equal(as_slices_10_to_14, relabelled)
    with pytest.raises(ValueError, match="one per slice"):
        denoise_volume(model, volume, 12500.0, slice_ids=range(3))


def test_start_step_is_returned(model: SPDiffModel) -> None:
    assert denoise_volume(model, low_dose(), 2.5e5).start_step == 0
    assert denoise_volume(model, low_dose(), 62500.0).start_step == 3


def test_output_is_transmission_in_unit_interval_and_keeps_array_type(model: SPDiffModel) -> None:
    out = denoise_volume(model, torch.from_numpy(low_dose()), 25000.0).transmission
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_slightly_negative_measurements_are_accepted(model: SPDiffModel) -> None:
    volume = low_dose()
    volume[:, 0, :4] = -0.002  # electronic noise on rays with almost no photons
    assert np.isfinite(denoise_volume(model, volume, 12500.0).transmission).all()


def test_missing_dose_is_estimated_from_the_data(model: SPDiffModel) -> None:
    rng = np.random.default_rng(0)
    count = 12500.0
    volume = (rng.poisson(count * 0.6, (4, 64, 96)) / count).astype(np.float32)
    wide = SPDiffModel(model.network, model.schedule, (64, 96))
    estimated = denoise_volume(wide, volume, None, seed=1)
    labelled = denoise_volume(wide, volume, count, seed=1)
    np.testing.assert_array_equal(estimated.transmission, labelled.transmission)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 3, np.nan, v), "NaN/inf"),
        (lambda v: np.where(np.arange(v.size).reshape(v.shape) == 3, np.inf, v), "NaN/inf"),
        (lambda v: -np.abs(v), "no positive value"),
        (lambda v: v * 2.5e5, "raw counts"),
        (lambda v: v[:, :, :-1], "trained on"),
        (lambda v: v[0], r"\(slices, views, detectors\)"),
    ],
)
def test_bad_transmission_is_refused(model: SPDiffModel, mutate, message: str) -> None:
    with pytest.raises(TransmissionError, match=message):
        denoise_volume(model, mutate(low_dose()), 25000.0)


@pytest.mark.parametrize("count", [0.0, -100.0, float("nan")])
def test_bad_incident_count_is_refused(model: SPDiffModel, count: float) -> None:
    with pytest.raises(ScheduleError, match="positive finite"):
        denoise_volume(model, low_dose(), count)


def test_other_schedule_and_empty_halo_chunks_are_refused(model: SPDiffModel) -> None:
    with pytest.raises(SPDiffSettingsError, match="trained with"):
        denoise_volume(model, low_dose(), 25000.0, SPDiffSchedule(num_steps=20))
    with pytest.raises(TransmissionError, match="no slice to denoise"):
        denoise_volume(model, low_dose(2), 25000.0, halo=(True, True))

"""Sampling profiles and `need calibrate`: profiles round-trip and pick the nearest calibrated dose, the sampler
options they hold behave as documented, and calibration on a small real-CT archive with tiny models writes a
profile that reconstruct uses (and refuses for other models), found again through the model registry."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.calibrate import calibrate
from flows.models import resolve_model, shipped_weights
from flows.reconstruct import run_reconstruct
from flows.registration import register_model_file
from flows.sampling import choose_sampling, sampling_tag
from flows.tracking.store import open_tracker
from need_core import dgdiff, spdiff
from need_core.sampling import REFERENCE_SAMPLING, DoseSampling, SamplingProfile, SamplingProfileError
from storage.archive import open_archive
from tasks.calibration import COORDINATES, coordinate_moves
from tasks.reconstruct import ReconstructOptions
from tests.pipeline_fixtures import ingest_small_with_tiny_models

CALIBRATED = DoseSampling("one_shot", replace(dgdiff.REFERENCE_GUIDANCE, s2=0.4, divisor=5, start_noise="residual"))


def profile_for(models: dict[str, str], doses=(0.5, 0.1)) -> SamplingProfile:
    return SamplingProfile(
        name="test", doses=tuple(doses), settings=(CALIBRATED, DoseSampling()), models=tuple(sorted(models.items()))
    )


def test_a_profile_round_trips_through_its_file_and_takes_the_nearest_dose_in_log_dose(tmp_path):
    profile = profile_for({"spdiff": "a" * 16, "dgdiff": "b" * 16})
    loaded = SamplingProfile.load(profile.save(tmp_path / "p.json"))
    assert loaded == profile
    assert loaded.at(0.5) == CALIBRATED and loaded.at(0.3) == CALIBRATED  # log(0.3) is nearer log(0.5) than log(0.1)
    assert loaded.at(0.2) == DoseSampling() and loaded.at(0.01) == DoseSampling()
    assert REFERENCE_SAMPLING.at(0.37) == DoseSampling() and REFERENCE_SAMPLING.is_reference
    assert loaded.fits("a" * 16, "b" * 16) and not loaded.fits("a" * 16, "c" * 16)
    assert REFERENCE_SAMPLING.fits("anything", "else")
    renamed = replace(profile, name="other name")
    assert renamed.result_settings() == profile.result_settings()  # the name shapes no result
    assert profile.result_settings() != REFERENCE_SAMPLING.result_settings()


@pytest.mark.parametrize(
    ("text", "problem"),
    [("not json", "cannot read"), ("[1, 2]", "holds no sampling profile"), ('{"doses": []}', "not a sampling profile")],
)
def test_a_bad_profile_file_is_refused_with_a_clear_error(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(SamplingProfileError, match=problem):
        SamplingProfile.load(path)


def test_bad_settings_are_refused():
    with pytest.raises(SamplingProfileError, match="spdiff_ending"):
        DoseSampling("halfway")
    with pytest.raises(ValueError, match="start_noise"):
        replace(dgdiff.REFERENCE_GUIDANCE, start_noise="some")
    with pytest.raises(SamplingProfileError, match="doses must lie in"):
        SamplingProfile("x", doses=(1.5,), settings=(DoseSampling(),))


def test_each_coordinate_move_changes_only_its_coordinate():
    start = DoseSampling()
    for coordinate in COORDINATES:
        moves = coordinate_moves(start, coordinate)
        assert len(set(moves)) == len(moves) >= 2
        for move in moves:
            changed = {k for k, v in move.to_dict().items() if start.to_dict()[k] != v}
            allowed = {"s1": {"s1_scale", "s1_offset", "s1_sharpness"}, "dgdiff_ending": {"ending"}}
            assert changed <= allowed.get(coordinate, {coordinate})


def test_residual_start_noise_tops_up_to_the_start_level_and_equals_the_spec_for_a_clean_x_init():
    schedule = dgdiff.DiffusionSchedule()
    network = dgdiff.UNet(dgdiff.PROFILES["tiny"]).eval()
    x = torch.zeros(2, 1, 32, 32)
    steps = torch.tensor([3, 3])
    ones = torch.ones(2)

    def sample(residual):
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        return dgdiff.guided_sample(network, schedule, x, x, steps, ones, ones, generators, residual)

    assert torch.allclose(sample(None), sample(torch.zeros(2)), atol=1e-5)
    assert not torch.allclose(sample(None), sample(torch.full((2,), 0.01)))


def test_the_one_shot_ending_evaluates_the_network_once_at_the_matched_step(monkeypatch):
    network = spdiff.network_profile("tiny")
    model = spdiff.SPDiffModel(spdiff.SPDiffUNet(network), spdiff.SPDiffSchedule(), (16, 24))
    calls = []
    original = spdiff.sampler.predict_clean
    monkeypatch.setattr(spdiff.sampler, "predict_clean", lambda *a, **k: calls.append(a[2]) or original(*a, **k))
    x = np.random.default_rng(0).uniform(0.2, 0.9, (3, 16, 24)).astype(np.float32)
    chain = spdiff.denoise_volume(model, x, 2.5e5 * 0.1, device="cpu")
    chain_calls, calls[:] = list(calls), []
    shot = spdiff.denoise_volume(model, x, 2.5e5 * 0.1, device="cpu", ending="one_shot")
    assert calls == [shot.start_step] and len(chain_calls) == chain.start_step + 1 > 1
    assert shot.transmission.shape == x.shape and 0 <= shot.transmission.min() <= shot.transmission.max() <= 1


@pytest.fixture(scope="module")
def small(tmp_path_factory, head_ct_path, prefect_harness, dask_address):
    """An ingested 6-slice archive (doses 0.5, 0.1) and tiny model checkpoints."""
    return ingest_small_with_tiny_models(head_ct_path, tmp_path_factory.mktemp("calibrate"), dask_address)


def test_calibration_writes_a_profile_that_the_registry_serves_and_reconstruct_uses(
    small, tracking_store, dask_address, tmp_path
):
    pristine, spdiff_path, dgdiff_path = small
    archive = tmp_path / "archive.zarr"
    shutil.copytree(pristine, archive)
    models = resolve_model(spdiff_path, "spdiff"), resolve_model(dgdiff_path, "dgdiff")
    register_model_file(open_tracker(True, "calibration-test"), Path(dgdiff_path), "dgdiff")
    assert choose_sampling(None, *models)[0] == REFERENCE_SAMPLING  # nothing calibrated yet
    result = calibrate(
        catalog=str(archive),
        spdiff=spdiff_path,
        dgdiff=dgdiff_path,
        doses=[0.5],
        validation_slices=[2, 3],
        device="cpu",
        experiment="calibration-test",
    )
    written = Path(result["profile"])
    profile = SamplingProfile.load(written)
    assert profile.fits(models[0].identity, models[1].identity) and profile.doses == (0.5,)
    assert list(profile.calibration["slices"].values()) == ["2-3"]
    (entry,) = result["doses"]
    assert entry["scores"]["calibrated"] >= entry["scores"]["reference"]
    assert len(entry["trials"]) > len(COORDINATES)
    trials = json.loads(written.with_name(f"{written.stem}_trials.json").read_text())
    assert trials[0]["dose"] == 0.5 and written.with_suffix(".png").is_file()
    assert result["tagged_version"].startswith("need-dgdiff/")
    found, why = choose_sampling(None, *models)
    assert found == profile and sampling_tag(models[0]) in why

    def outputs(**options):
        run_reconstruct(
            catalog=str(archive),
            doses=[0.5],
            spdiff=spdiff_path,
            dgdiff=dgdiff_path,
            chunk_slices=2,
            device="cpu",
            dask_address=dask_address,
            tracking=False,
            slices=[0, 1],
            **options,
        )
        return open_archive(archive).read("need", 0, 2, dose=0.5)

    reference_key = ReconstructOptions(device="cpu", chunk_slices=2).result_key(*models, open_archive(archive))
    reference_images = outputs(sampling="reference")
    assert open_archive(archive).stale_slices("reconstruct", 0.5, reference_key).tolist()[:2] != [0, 1]
    calibrated_images = outputs()  # by default, the registry's profile for these two models
    # the profile is part of the result key: the slices are no longer done by the reference settings
    assert open_archive(archive).stale_slices("reconstruct", 0.5, reference_key).tolist()[:2] == [0, 1]
    if not profile.is_reference:
        assert not np.array_equal(reference_images, calibrated_images)

    other = replace(profile, models=(("dgdiff", "0" * 16), ("spdiff", models[0].identity)))
    with pytest.raises(SamplingProfileError, match="not for these models"):
        choose_sampling(str(other.save(tmp_path / "other.json")), *models)


def test_the_shipped_weights_come_with_their_calibrated_profile(tracking_store):
    models = [resolve_model(str(shipped_weights(kind)), kind) for kind in ("spdiff", "dgdiff")]
    profile, why = choose_sampling(None, *models)
    assert why.startswith("shipped sampling_") and profile.fits(models[0].identity, models[1].identity)
    assert profile.doses == (0.5, 0.25, 0.1, 0.05) and not profile.is_reference
    assert set(profile.calibration["slices"].values()) == {"40-42,67-69"}  # validation slices, not 45-64

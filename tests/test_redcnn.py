"""RED-CNN baseline: learning on real paired head-CT images, exact checkpoint resume, inference and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from need_core import redcnn
from need_core.physics import (
    FanBeamGeometry,
    PhysicsSettings,
    fbp_hu,
    forward_project,
    hu_to_mu,
    simulate_transmission,
    transmission_to_line_integrals,
)
from storage.checkpoints import CheckpointError, load_checkpoint, save_trainer
from storage.readers import read_volume
from tests.pipeline_fixtures import write_small_ingested_archive

PAIR_SLICES = [10, 25, 35, 75, 90, 100]  # training slices of the head-CT split
TINY = redcnn.TrainSettings(profile="tiny", learning_rate=1e-3, batch_size=4, patch_size=32, paired_dose=0.05, seed=3)


def paired_fbp(hu: np.ndarray, spacing_mm: float, dose: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """FBP images (HU) of simulated scans of `hu` at `dose` and at normal dose (the target, with its own noise)."""
    geometry = FanBeamGeometry.for_image(hu.shape[1:], spacing_mm)
    physics = PhysicsSettings()
    line_integrals = forward_project(hu_to_mu(hu), geometry, backend="astra-cpu")
    rng = np.random.default_rng(seed)

    def fbp_at(d: float) -> np.ndarray:
        transmission = simulate_transmission(line_integrals, d, physics, rng)
        return fbp_hu(transmission_to_line_integrals(transmission), geometry, physics)

    return fbp_at(dose), fbp_at(1.0)


@pytest.fixture(scope="module")
def head_pairs(head_ct_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Real head-CT slices block-averaged to 64x64, paired as (5 %-dose FBP, normal-dose FBP): at this pixel size only
    a low dose leaves enough noise for a few hundred steps to show learning."""
    volume = read_volume(head_ct_path)
    hu = volume.hu[PAIR_SLICES].astype(np.float32)
    small = hu.reshape(len(PAIR_SLICES), 64, 4, 64, 4).mean(axis=(2, 4))
    return paired_fbp(small, volume.spacing_mm[1] * 4, dose=0.05, seed=7)


def test_network_keeps_the_image_shape_for_every_profile():
    for profile in redcnn.PROFILES:
        model = redcnn.build_redcnn(profile)
        size = model.settings.min_image_size
        out = model(torch.rand(2, 1, size, size + 3))
        assert out.shape == (2, 1, size, size + 3)
        assert (out >= 0).all()  # the final ReLU, as in the original


def test_paper_profile_is_the_published_architecture():
    settings = redcnn.PROFILES["paper"]
    assert (settings.channels, settings.kernel_size) == (96, 5)
    model = redcnn.build_redcnn("paper")
    assert len(model.encoder) == 5 and len(model.decoder) == 5


def test_hu_scaling_round_trips_without_clipping():
    hu = torch.tensor([-3000.0, -2048.0, 0.0, 2048.0, 5000.0])
    assert torch.allclose(redcnn.net_to_hu(redcnn.hu_to_net(hu)), hu)
    assert redcnn.hu_to_net(torch.tensor(-2048.0)) == 0 and redcnn.hu_to_net(torch.tensor(2048.0)) == 1


def test_loss_falls_on_real_paired_head_ct(head_pairs):
    low, normal = head_pairs
    trainer = redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(low, normal), device="cpu")
    error_before = np.mean((redcnn.denoise_images(trainer.model(), low, device="cpu") - normal) ** 2)
    losses = trainer.fit(300)
    error_after = np.mean((redcnn.denoise_images(trainer.model(), low, device="cpu") - normal) ** 2)
    assert trainer.step == 300 and len(losses) == 300
    assert error_before == pytest.approx(np.mean((low - normal) ** 2), rel=1e-4)  # it starts as the identity
    assert error_after < 0.99 * error_before
    assert np.mean(losses[-50:]) < np.mean(losses[:50])


def test_checkpoint_round_trip_resumes_bit_exactly(head_pairs, tmp_path):
    pairs = redcnn.PairedImages(*head_pairs)
    trainer = redcnn.RedCNNTrainer(TINY, pairs, device="cpu")
    trainer.fit(3)
    path = save_trainer(tmp_path / "redcnn.pt", trainer)
    uninterrupted = trainer.fit(3)

    blob = load_checkpoint(path, redcnn.CHECKPOINT_KIND, expected_settings=TINY.to_dict())
    assert "ema" not in blob and set(blob["rng_states"]) == {"batch"}
    resumed = redcnn.RedCNNTrainer.from_payload(blob, pairs, device="cpu")
    assert resumed.step == 3
    assert resumed.fit(3) == uninterrupted
    for name, value in trainer.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name


def test_checkpoint_model_denoises_like_the_trained_one(head_pairs, tmp_path):
    low, normal = head_pairs
    trainer = redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(low, normal), device="cpu")
    trainer.fit(2)
    path = save_trainer(tmp_path / "redcnn.pt", trainer)
    model = redcnn.load_model(load_checkpoint(path, redcnn.CHECKPOINT_KIND), device="cpu")
    expected = redcnn.denoise_images(trainer.network, low[:2], device="cpu")
    np.testing.assert_array_equal(redcnn.denoise_images(model, low[:2], device="cpu"), expected)


def test_checkpoint_with_other_settings_or_kind_is_refused(head_pairs, tmp_path):
    trainer = redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(*head_pairs), device="cpu")
    path = save_trainer(tmp_path / "redcnn.pt", trainer)
    other = redcnn.TrainSettings(profile="tiny", patch_size=48, seed=3)
    with pytest.raises(CheckpointError, match="patch_size"):
        load_checkpoint(path, redcnn.CHECKPOINT_KIND, expected_settings=other.to_dict())
    with pytest.raises(CheckpointError, match="'redcnn'"):
        load_checkpoint(path, "dgdiff")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", redcnn.CHECKPOINT_KIND)


def test_denoising_does_not_depend_on_batch_size_or_input_type(head_pairs):
    low, _ = head_pairs
    model = redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(*head_pairs), device="cpu").model()
    one_by_one = redcnn.denoise_images(model, low, batch_size=1, device="cpu")
    batched = redcnn.denoise_images(model, torch.from_numpy(low), batch_size=4, device="cpu")
    assert one_by_one.shape == low.shape and one_by_one.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-3)


def test_method_is_named_after_the_training_dose():
    assert redcnn.method_name(TINY) == "redcnn_5"
    assert redcnn.method_name(redcnn.TrainSettings(profile="tiny", paired_dose=0.25)) == "redcnn_25"
    assert redcnn.method_name(redcnn.TrainSettings(profile="tiny")) == "redcnn"


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((32, 32), np.float32), r"\(n, H, W\)"),
        (np.zeros((1, 1, 32, 32), np.float32), r"\(n, H, W\)"),
        (np.full((1, 32, 32), np.nan, np.float32), "NaN/inf"),
        (np.full((1, 32, 32), 2.5e5, np.float32), "plausible HU range"),
        (np.zeros((1, 8, 32), np.float32), "smaller than the network's minimum"),
    ],
)
def test_bad_images_for_denoising_raise_clear_errors(images, match):
    model = redcnn.build_redcnn("tiny")
    with pytest.raises(redcnn.RedCNNInputError, match=match):
        redcnn.denoise_images(model, images, device="cpu")


def test_bad_training_data_and_settings_raise_clear_errors():
    good = np.zeros((2, 40, 40), np.float32)
    with pytest.raises(redcnn.RedCNNInputError, match="paired images of one shape"):
        redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(good, np.zeros((3, 40, 40), np.float32)), device="cpu")
    with pytest.raises(redcnn.RedCNNInputError, match="exceeds the training images"):
        redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(good[:, :20, :20], good[:, :20, :20]), device="cpu")
    bad = good.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(redcnn.RedCNNInputError, match="NaN/inf"):
        redcnn.RedCNNTrainer(TINY, redcnn.PairedImages(good, bad), device="cpu")
    with pytest.raises(redcnn.RedCNNInputError, match="batch_size"):
        redcnn.denoise_images(redcnn.build_redcnn("tiny"), good, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match="unknown RED-CNN profile"):
        redcnn.TrainSettings(profile="huge")
    with pytest.raises(ValueError, match="minimum"):
        redcnn.TrainSettings(profile="paper", patch_size=16)
    with pytest.raises(ValueError, match="paired_dose"):
        redcnn.TrainSettings(paired_dose=0.0)


def test_baseline_task_denoises_the_archive_low_dose_fbp(head_ct_path, tmp_path):
    from tasks.baselines import redcnn_rows

    archive_path = tmp_path / "small.zarr"
    hu = write_small_ingested_archive(head_ct_path, archive_path, 0.25)
    trainer = redcnn.RedCNNTrainer(
        redcnn.TrainSettings(profile="tiny", patch_size=32, paired_dose=0.25), redcnn.PairedImages(hu, hu), device="cpu"
    )
    checkpoint = save_trainer(tmp_path / "redcnn.pt", trainer)

    rows, images = redcnn_rows.fn(str(archive_path), 0.25, [0, 2], str(checkpoint), device="cpu")
    assert [row["method"] for row in rows] == ["redcnn_25"] and rows[0]["n_slices"] == 2
    assert set(images) == {"reference", "fbp_ld", "redcnn_25"}
    # an untrained RED-CNN is the identity, so its row scores the low-dose FBP
    np.testing.assert_allclose(images["redcnn_25"], images["fbp_ld"], atol=1e-3)
    with pytest.raises(FileNotFoundError):
        redcnn_rows.fn(str(archive_path), 0.25, [0], str(tmp_path / "missing.pt"), device="cpu")

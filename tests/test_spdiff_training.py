"""SPDiff training on normal-dose transmission: loss falls on real data, exact resume, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from need_core.physics import PhysicsSettings, simulate_transmission
from need_core.spdiff import (
    CHECKPOINT_KIND,
    NetworkSettings,
    SPDiffSchedule,
    SPDiffSettingsError,
    SPDiffTrainer,
    TrainSettings,
    TransmissionError,
    load_model,
    network_profile,
)
from need_core.spdiff.training import TripletPatchSampler, _triplet_table, l1_loss
from need_core.training import TrainingPayloadError
from storage.checkpoints import CheckpointError, load_checkpoint, save_trainer
from tests.spdiff_head_ct import head_ct_line_integrals

TINY = network_profile("tiny")
TINY_TRAINING = TrainSettings(
    network=TINY, learning_rate=1e-3, batch_size=4, patch_shape=(32, 32), ema_start=4, ema_every=2
)


@pytest.fixture(scope="module")
def normal_dose_volume(head_ct_path: Path) -> np.ndarray:
    """Normal-dose transmission of 6 real head-CT slices at 64² (84 views × 108 bins)."""
    line_integrals, _ = head_ct_line_integrals(head_ct_path, slice(50, 56), downsample=4)
    return simulate_transmission(line_integrals, 1.0, PhysicsSettings(), rng=0)


def synthetic_volume(slices: int = 4, shape: tuple[int, int] = (20, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.05, 1.0, (slices, *shape)).astype(np.float32)


def tiny_trainer(volumes: list[np.ndarray], **overrides) -> SPDiffTrainer:
    settings = TrainSettings(
        **{"network": TINY, "batch_size": 2, "patch_shape": (16, 16), "ema_start": 2, "ema_every": 1, **overrides}
    )
    return SPDiffTrainer(settings, volumes, device="cpu")


def test_tiny_model_loss_falls_on_real_normal_dose_data(normal_dose_volume: np.ndarray) -> None:
    trainer = SPDiffTrainer(TINY_TRAINING, [normal_dose_volume], device="cpu")
    losses = trainer.fit(40)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    assert trainer.step == 40


def test_log_domain_loss_is_the_post_log_error_and_a_log_domain_model_learns(normal_dose_volume: np.ndarray) -> None:
    estimate, clean = torch.tensor([0.5, 0.02]), torch.tensor([0.25, 0.01])
    torch.testing.assert_close(l1_loss(estimate, clean, "log"), torch.log(torch.tensor(2.0)))  # both rays off by 2x
    torch.testing.assert_close(l1_loss(estimate, clean, "transmission"), torch.tensor(0.13))
    with pytest.raises(ValueError, match="loss_domain"):
        TrainSettings(loss_domain="sqrt")
    network = NetworkSettings(channels=(8, 16, 32), convs_per_block=1, domain="log")
    training = TrainSettings(network=network, batch_size=4, patch_shape=(32, 32), learning_rate=1e-3, loss_domain="log")
    trainer = SPDiffTrainer(training, [normal_dose_volume], device="cpu")
    losses = trainer.fit(40)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_triplets_never_cross_runs_and_mirror_at_edges() -> None:
    table = _triplet_table([3, 2])
    np.testing.assert_array_equal(table, [[1, 0, 1], [0, 1, 2], [1, 2, 1], [4, 3, 4], [3, 4, 3]])


def test_patch_sampler_returns_windows_of_the_data() -> None:
    volume = synthetic_volume()
    sampler = TripletPatchSampler([volume], (8, 10))
    batch = sampler.sample(5, torch.Generator().manual_seed(0))
    assert batch.shape == (5, 3, 8, 10)
    data = torch.from_numpy(volume)
    for triplet in batch:
        middle = triplet[1]
        hits = [
            (s, r, c)
            for s in range(4)
            for r in range(20 - 8 + 1)
            for c in range(24 - 10 + 1)
            if torch.equal(data[s, r : r + 8, c : c + 10], middle)
        ]
        assert len(hits) == 1


def index_volume(views: int = 12, detectors: int = 10) -> np.ndarray:
    """Transmission whose every value encodes its (view, bin): exp(-(view·100 + bin + 1) / 10⁴)."""
    view, bin_ = np.meshgrid(np.arange(views), np.arange(detectors), indexing="ij")
    return np.exp(-(view * 100 + bin_ + 1) / 1e4)[None].repeat(3, axis=0).astype(np.float32)


def patch_indices(batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The (view, bin) indices of each value of an index_volume batch's middle slices."""
    code = np.rint(-np.log(batch[:, 1].double().numpy()) * 1e4 - 1).astype(int)
    return code // 100, code % 100


def test_view_shift_draws_patches_around_the_whole_circle_of_views() -> None:
    sampler = TripletPatchSampler([index_volume()], (5, 4))
    views, bins = patch_indices(sampler.sample(200, torch.Generator().manual_seed(0), view_shift=True))
    np.testing.assert_array_equal((views - views[:, :1]) % 12, np.broadcast_to(np.arange(5)[:, None], (200, 5, 4)))
    assert set(views[:, 0, 0]) == set(range(12))  # starts anywhere, wrapping past the last view
    assert (views[:, -1, 0] < views[:, 0, 0]).any()
    unshifted, _ = patch_indices(sampler.sample(200, torch.Generator().manual_seed(0)))
    assert unshifted[:, 0, 0].max() == 12 - 5


def test_mirror_reverses_views_and_bins_together_for_about_half_the_patches() -> None:
    sampler = TripletPatchSampler([index_volume()], (5, 4))
    views, bins = patch_indices(sampler.sample(400, torch.Generator().manual_seed(0), mirror=True))
    mirrored = views[:, 0, 0] > views[:, -1, 0]
    assert 150 < mirrored.sum() < 250
    assert (np.diff(bins[mirrored], axis=-1) == -1).all() and (np.diff(views[mirrored], axis=-2) == -1).all()
    assert (np.diff(bins[~mirrored], axis=-1) == 1).all() and (np.diff(views[~mirrored], axis=-2) == 1).all()


def test_thickness_scale_scales_every_line_integral_of_a_patch_by_one_factor_in_range() -> None:
    # transmission kept below 0.9: the log of a ray near 1 is too small for its ratio to be read in float32
    volume = np.random.default_rng(0).uniform(0.05, 0.9, (4, 20, 24)).astype(np.float32)
    sampler = TripletPatchSampler([volume], (8, 10))
    plain = sampler.sample(300, torch.Generator().manual_seed(0))
    scaled = sampler.sample(300, torch.Generator().manual_seed(0), thickness_scale=(0.8, 1.25))
    ratio = (torch.log(scaled) / torch.log(plain)).double()
    per_patch = ratio.flatten(1)
    torch.testing.assert_close(per_patch.min(1).values, per_patch.max(1).values, rtol=1e-4, atol=0)
    assert 0.8 - 1e-6 <= per_patch.min() and per_patch.max() <= 1.25 + 1e-6
    assert (per_patch[:, 0] < 0.85).any() and (per_patch[:, 0] > 1.2).any()
    with pytest.raises(ValueError, match="thickness_scale"):
        TrainSettings(thickness_scale=(1.2, 0.8))


def test_augmented_training_resumes_exactly_and_an_older_payload_resumes() -> None:
    volume = synthetic_volume()
    augmented = {"view_shift": True, "mirror": True, "thickness_scale": (0.8, 1.25)}
    straight = tiny_trainer([volume], **augmented)
    straight.fit(4)
    first = tiny_trainer([volume], **augmented)
    first.fit(2)
    resumed = SPDiffTrainer.from_payload(first.snapshot(), [volume], device="cpu")
    resumed.fit(2)
    for key, value in straight.payload()["model"].items():
        assert torch.equal(value, resumed.payload()["model"][key]), key
    older = tiny_trainer([volume]).snapshot()  # as stored before the augmentation fields existed
    for key in augmented:
        del older["settings"]["training"][key]
    assert SPDiffTrainer.from_payload(older, [volume], device="cpu").train_settings.mirror is False


def test_resume_from_payload_continues_bit_exactly() -> None:
    volume = synthetic_volume()
    straight = tiny_trainer([volume])
    straight.fit(6)
    first = tiny_trainer([volume])
    first.fit(3)
    resumed = SPDiffTrainer.from_payload(first.snapshot(), [volume], device="cpu")
    resumed.fit(3)
    for key, value in straight.payload()["model"].items():
        assert torch.equal(value, resumed.payload()["model"][key]), key
    for key, value in straight.payload()["ema"].items():
        assert torch.equal(value, resumed.payload()["ema"][key]), key


def test_checkpoint_round_trip_is_bit_exact(tmp_path: Path) -> None:
    trainer = tiny_trainer([synthetic_volume()])
    trainer.fit(3)
    path = save_trainer(tmp_path / "spdiff.pt", trainer)
    blob = load_checkpoint(path, CHECKPOINT_KIND, expected_settings=trainer.settings)
    restored = SPDiffTrainer.from_payload(blob, [synthetic_volume()], device="cpu")
    before, after = trainer.payload(), restored.payload()
    assert after["step"] == 3
    for part in ("model", "ema"):
        assert all(torch.equal(before[part][k], after[part][k]) for k in before[part])
    assert set(after["rng_states"]) == {"batch", "noise"}
    assert all(torch.equal(before["rng_states"][name], after["rng_states"][name]) for name in ("batch", "noise"))
    model = load_model(blob, device="cpu")
    assert model.schedule == trainer.train_settings.schedule and model.sinogram_shape == (20, 24)
    assert all(torch.equal(v, before["ema"][k]) for k, v in model.network.state_dict().items())
    assert not model.network.training


def test_checkpoint_from_other_settings_is_refused(tmp_path: Path) -> None:
    trainer = tiny_trainer([synthetic_volume()])
    path = save_trainer(tmp_path / "spdiff.pt", trainer)
    other = {**trainer.settings, "schedule": SPDiffSchedule(num_steps=20).to_dict()}
    with pytest.raises(CheckpointError, match="other settings"):
        load_checkpoint(path, CHECKPOINT_KIND, expected_settings=other)
    blob = load_checkpoint(path, CHECKPOINT_KIND)
    with pytest.raises(TrainingPayloadError, match=r"sinogram_shape: stored \[20, 24\], now \[20, 28\]"):
        SPDiffTrainer.from_payload(blob, [synthetic_volume(shape=(20, 28))], device="cpu")
    with pytest.raises(TrainingPayloadError, match=r"lacks \['optimizer'\]"):
        SPDiffTrainer.from_payload(
            {key: value for key, value in blob.items() if key != "optimizer"}, [synthetic_volume()], device="cpu"
        )


def test_missing_or_corrupt_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt", CHECKPOINT_KIND)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt, CHECKPOINT_KIND)
    with pytest.raises(SPDiffSettingsError, match="lacks"):
        load_model({"settings": {}}, device="cpu")
    with pytest.raises(SPDiffSettingsError, match="malformed"):
        load_model({"settings": {}, "ema": {}}, device="cpu")


def test_bad_training_data_is_refused() -> None:
    bad = synthetic_volume()
    bad[0, 0, 0] = np.nan
    with pytest.raises(TransmissionError, match="NaN"):
        tiny_trainer([bad])
    with pytest.raises(TransmissionError, match="raw counts"):
        tiny_trainer([synthetic_volume() * 2.5e5])
    with pytest.raises(ValueError, match=">= 2 slices"):
        tiny_trainer([synthetic_volume(slices=1)])
    with pytest.raises(ValueError, match="one sinogram shape"):
        tiny_trainer([synthetic_volume(), synthetic_volume(shape=(20, 28))])
    with pytest.raises(ValueError, match="exceeds"):
        tiny_trainer([synthetic_volume()], patch_shape=(64, 64))


def test_trainer_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    tiny_trainer([synthetic_volume()])
    assert torch.equal(torch.rand(1), expected)

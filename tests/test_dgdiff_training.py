"""DGDiff training: loss falls on real head-CT images, restricted steps, EMA, exact-resume checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from need_core.dgdiff.diffusion import v_prediction_loss
from need_core.dgdiff.hu_window import hu_to_unit
from need_core.dgdiff.model import load_model
from need_core.dgdiff.schedule import DiffusionSchedule, ScheduleSettings
from need_core.dgdiff.training import DGDiffTrainer, TrainSettings, max_reachable_step
from need_core.training import random_patches
from storage.checkpoints import CheckpointError, load_checkpoint, save_trainer
from storage.readers.inv3 import read_inv3

TINY = dict(profile="tiny", batch_size=4, ema_start=2, learning_rate=2e-3)


def block_mean(images: np.ndarray, factor: int) -> np.ndarray:
    """Downsample (n, H, W) by averaging factor×factor blocks."""
    n, height, width = images.shape
    return images.reshape(n, height // factor, factor, width // factor, factor).mean(axis=(2, 4))


@pytest.fixture(scope="module")
def head_ct_32(head_ct_path) -> np.ndarray:
    """Training slices 0–39 of the real head CT at 32²."""
    return block_mean(read_inv3(head_ct_path).hu[0:40], 8)


def parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """Detached copies of a model's parameters, in order."""
    return [p.detach().clone() for p in model.parameters()]


def test_tiny_loss_falls_on_real_head_ct_images(head_ct_32):
    trainer = DGDiffTrainer(TrainSettings(**TINY, seed=1), head_ct_32, device="cpu")
    generator = torch.Generator().manual_seed(99)
    held = hu_to_unit(torch.from_numpy(head_ct_32[::5]))[:, None]
    t = torch.randint(1000, (held.shape[0],), generator=generator)
    noise = torch.randn(held.shape, generator=generator)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(v_prediction_loss(trainer.network, trainer.schedule, held, t, noise))

    before = held_out_loss()
    losses = trainer.fit(150)
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    assert trainer.step == 150


def test_max_train_step_restricts_the_sampled_steps(head_ct_32):
    trainer = DGDiffTrainer(TrainSettings(**TINY, max_train_step=3), head_ct_32, device="cpu")
    seen: list[int] = []
    trainer.network.register_forward_pre_hook(lambda _module, args: seen.extend(args[1].tolist()))
    trainer.fit(10)
    assert len(seen) == 40 and set(seen) <= {0, 1, 2} and len(set(seen)) == 3


def test_max_reachable_step_covers_the_start_steps_the_sampler_uses():
    schedule = DiffusionSchedule()
    low, high = max_reachable_step(schedule, 0.01), max_reachable_step(schedule, 0.3)
    assert low == 1 and high > 10
    with pytest.raises(ValueError, match="max_train_step"):
        TrainSettings(max_train_step=0)


def test_ema_copies_the_model_until_ema_start_then_lags(head_ct_32):
    trainer = DGDiffTrainer(TrainSettings(**TINY), head_ct_32, device="cpu")
    trainer.fit(2)
    assert all(torch.equal(a, b) for a, b in zip(parameters(trainer.ema), parameters(trainer.network), strict=True))
    trainer.fit(2)
    assert not all(torch.equal(a, b) for a, b in zip(parameters(trainer.ema), parameters(trainer.network), strict=True))


def test_checkpoint_round_trip_resumes_bit_exactly(head_ct_32, tmp_path):
    settings = TrainSettings(**TINY, crop_size=16, seed=3)
    trainer = DGDiffTrainer(settings, head_ct_32, device="cpu")
    trainer.fit(3)
    path = save_trainer(tmp_path / "dgdiff.pt", trainer)
    trainer.fit(3)

    blob = load_checkpoint(path, "dgdiff", expected_settings=settings.to_dict())
    resumed = DGDiffTrainer.from_payload(blob, head_ct_32, device="cpu")
    assert resumed.step == 3
    resumed.fit(3)
    assert all(torch.equal(a, b) for a, b in zip(parameters(trainer.network), parameters(resumed.network), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(parameters(trainer.ema), parameters(resumed.ema), strict=True))

    model = load_model(blob, device="cpu")
    stored_ema = DGDiffTrainer.from_payload(blob, head_ct_32, device="cpu").ema
    assert all(torch.equal(a, b) for a, b in zip(model.network.parameters(), stored_ema.parameters(), strict=True))
    assert torch.equal(model.schedule.betas, trainer.schedule.betas) and not model.network.training


def test_rotations_turn_the_same_windows_by_every_quarter_turn():
    image = torch.arange(36.0).reshape(1, 6, 6)
    plain = random_patches([image], 200, (3, 3), True, torch.Generator().manual_seed(0))[0][:, 0]
    turned = random_patches([image], 200, (3, 3), True, torch.Generator().manual_seed(0), random_rotate=True)[0][:, 0]
    turns = [next(k for k in range(4) if torch.equal(torch.rot90(p, k), t)) for p, t in zip(plain, turned, strict=True)]
    assert set(turns) == {0, 1, 2, 3}
    wide = random_patches([image], 100, (2, 4), False, torch.Generator().manual_seed(0), random_rotate=True)[0]
    assert wide.shape == (100, 1, 2, 4)  # a non-square window only turns by half turns


def test_an_older_checkpoint_without_the_rotation_setting_resumes(head_ct_32):
    trainer = DGDiffTrainer(TrainSettings(**TINY, crop_size=16), head_ct_32, device="cpu")
    older = trainer.snapshot()
    del older["settings"]["random_rotate"]
    assert DGDiffTrainer.from_payload(older, head_ct_32, device="cpu").train_settings.random_rotate is False


def test_mismatched_missing_and_corrupt_checkpoints_are_refused(head_ct_32, tmp_path):
    trainer = DGDiffTrainer(TrainSettings(**TINY), head_ct_32, device="cpu")
    path = save_trainer(tmp_path / "dgdiff.pt", trainer)
    other = TrainSettings(**TINY, schedule=ScheduleSettings(timesteps=500)).to_dict()
    with pytest.raises(CheckpointError, match="other settings"):
        load_checkpoint(path, "dgdiff", expected_settings=other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", "dgdiff")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt, "dgdiff")
    blob = load_checkpoint(path, "dgdiff")
    blob["betas"] = blob["betas"] * 1.01
    with pytest.raises(ValueError, match="β schedule differs"):
        load_model(blob, device="cpu")
    with pytest.raises(ValueError, match="β schedule differs"):
        DGDiffTrainer.from_payload(blob, head_ct_32, device="cpu")


def test_training_refuses_bad_images_and_settings():
    settings = TrainSettings(**TINY, crop_size=64)
    with pytest.raises(ValueError, match="crop_size 64 exceeds"):
        DGDiffTrainer(settings, np.zeros((2, 32, 32), np.float32), device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        DGDiffTrainer(settings, np.full((2, 64, 64), np.nan, np.float32), device="cpu")
    with pytest.raises(ValueError, match="unknown DGDiff profile"):
        TrainSettings(profile="huge")
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainSettings(profile="tiny", crop_size=20)

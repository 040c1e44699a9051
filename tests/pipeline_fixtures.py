"""Shared builders for flow tests: a small real-CT archive and tiny (briefly trained) model checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from need_core import dgdiff, spdiff
from storage.archive import open_archive
from storage.checkpoints import save_checkpoint
from storage.readers import read_volume

SMALL_SPACING = [3.0, 3.8, 3.8]  # head CT slices 44-55 (every other one), 4x smaller in-plane


def write_small_head_npy(head_ct_path: Path, directory: Path, n_slices: int = 6) -> str:
    """Real head-CT slices at 64x64, saved as .npy (the reader then needs the spacing given)."""
    hu = read_volume(head_ct_path).hu[44 : 44 + 2 * n_slices : 2]
    small = hu.reshape(n_slices, 64, 4, 64, 4).mean(axis=(2, 4)).astype(np.float32)
    path = directory / "head_small.npy"
    np.save(path, small)
    return str(path)


def write_tiny_models(archive_path: Path, directory: Path, train_steps: int = 3) -> tuple[str, str]:
    """Tiny SPDiff and DGDiff checkpoints fitted for a few steps on the archive's normal-dose data."""
    archive = open_archive(archive_path)
    proj_nd = archive.read("proj_nd", 0, archive.n_slices)
    sp = spdiff.Trainer([proj_nd], network="tiny", training=spdiff.TrainingSettings(batch_size=2, patch_shape=(32, 32)),
                        device="cpu")
    sp.train(train_steps)
    sp_path = save_checkpoint(directory / "spdiff_tiny.pt", spdiff.CHECKPOINT_KIND, sp.settings, **sp.state_payload())
    dg = dgdiff.DGDiffTrainer(dgdiff.TrainSettings(profile="tiny", batch_size=2), device="cpu")
    dg.fit(archive.read("fbp_nd", 0, archive.n_slices), train_steps)
    dg_path = save_checkpoint(directory / "dgdiff_tiny.pt", "dgdiff", dg.checkpoint_settings(), **dg.checkpoint_payload())
    return str(sp_path), str(dg_path)

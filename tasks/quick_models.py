"""Quickly made SPDiff and DGDiff checkpoints (a few training steps, or none) for tests, smoke runs and the
orchestration and speed benchmarks: real checkpoint files in the shipped format, with weights not meant to be good."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from need_core import dgdiff, spdiff
from storage.archive import open_archive
from storage.checkpoints import save_trainer

QUICK_BATCH_SIZE = 2
SPDIFF_QUICK_PATCH = (32, 32)


def write_quick_models(
    proj_nd: np.ndarray, fbp_nd: np.ndarray, directory: Path, *, profile: str = "tiny", train_steps: int = 3
) -> tuple[str, str]:
    """SPDiff and DGDiff checkpoints of `profile`, fitted for `train_steps` steps (0: as initialised from the
    trainers' fixed seeds) on normal-dose transmission (n, views, det) and images (n, H, W); returns their paths."""
    network = spdiff.network_profile(profile)
    sp = spdiff.SPDiffTrainer(
        spdiff.TrainSettings(
            network=network, batch_size=QUICK_BATCH_SIZE, patch_shape=SPDIFF_QUICK_PATCH, loss_domain=network.domain
        ),
        [proj_nd],
        device="cpu",
    )
    dg = dgdiff.DGDiffTrainer(dgdiff.TrainSettings(profile=profile, batch_size=QUICK_BATCH_SIZE), fbp_nd, device="cpu")
    paths = []
    for trainer in (sp, dg):
        trainer.fit(train_steps)
        paths.append(str(save_trainer(Path(directory) / f"{trainer.kind}_{profile}.pt", trainer)))
    return paths[0], paths[1]


def write_tiny_models(archive_path: Path, directory: Path, train_steps: int = 3) -> tuple[str, str]:
    """Tiny SPDiff and DGDiff checkpoints fitted for a few steps on the archive's normal-dose data."""
    archive = open_archive(archive_path)
    return write_quick_models(
        archive.read("proj_nd", 0, archive.n_slices),
        archive.read("fbp_nd", 0, archive.n_slices),
        directory,
        train_steps=train_steps,
    )

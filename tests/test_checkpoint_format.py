"""Checkpoint format 2 (one payload layout for every trainer): version-1 files migrate on load, and the shipped
weights load, give their recorded outputs (the version-1 code's for the file still in format 1), and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from need_core import dgdiff, redcnn, spdiff
from storage.checkpoints import FORMAT, CheckpointError, load_checkpoint, migrate_v1, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
# Forward passes of each shipped network on `probe`: (sum of the output, one output value, the file's format). The
# format-1 file's values were computed with the version-1 code (before the migration); the SPDiff and DGDiff files,
# retrained with augmentations (issue #18), are written in format 2 and their values are theirs when shipped.
# bench/results/redcnn_cpu.pt is not among them: `bench/redcnn.py` retrains and rewrites it on every run.
SHIPPED = {
    "weights/spdiff_cpu.pt": (148.62229984253645, 0.2105967402458191, 2),
    "weights/dgdiff_cpu.pt": (8.427237620577216, -0.6290026903152466, 2),
    "weights/redcnn_25_cpu.pt": (273.5831395238638, 0.4735186696052551, 1),
}

INFERENCE_WEIGHTS = {"spdiff": ("ema", "ema"), "dgdiff": ("ema_model", "ema"), "redcnn": ("model", "model")}
"""Where the weights used for inference are stored, in format 1 and in format 2."""


def probe(*shape: int) -> torch.Tensor:
    """A fixed input in (0.1, 0.9): a ramp folded modulo 17."""
    return (torch.arange(int(np.prod(shape)), dtype=torch.float32).reshape(shape) % 17) / 17 * 0.8 + 0.1


def shipped_output(path: str) -> torch.Tensor:
    """The shipped model's output on a fixed tiny input, loaded through load_checkpoint and the package's load_model."""
    kind = torch.load(REPO / path, weights_only=True)["kind"]
    blob = load_checkpoint(REPO / path, kind)
    with torch.no_grad():
        if kind == "spdiff":
            return spdiff.load_model(blob, device="cpu").network(probe(1, 3, 16, 20), torch.tensor([4]))[:, None]
        if kind == "dgdiff":
            return dgdiff.load_model(blob, device="cpu").network(probe(1, 1, 32, 32) * 2 - 1, torch.tensor([7]))
        return redcnn.load_model(blob, device="cpu")(probe(1, 1, 24, 24))


def test_migrate_v1_renames_the_ema_and_generator_states_only():
    weights, state = {"w": torch.ones(2)}, torch.arange(3, dtype=torch.uint8)
    v1 = {
        "format": FORMAT,
        "format_version": 1,
        "kind": "dgdiff",
        "settings": {"a": 1},
        "model": weights,
        "ema_model": weights,
        "optimizer": {},
        "step": 5,
        "rng_state": state,
        "betas": torch.ones(3),
    }
    migrated = migrate_v1(v1)
    assert set(migrated) == {
        "format",
        "format_version",
        "kind",
        "settings",
        "model",
        "ema",
        "optimizer",
        "step",
        "rng_states",
        "betas",
    }
    assert migrated["format_version"] == 2 and migrated["ema"] is weights and migrated["rng_states"] == {"batch": state}
    assert v1["format_version"] == 1 and "ema_model" in v1  # the loaded dict is not changed in place
    spdiff_v1 = {
        "format_version": 1,
        "model": weights,
        "ema": weights,
        "batch_rng_state": state,
        "noise_rng_state": state + 1,
    }
    assert set(migrate_v1(spdiff_v1)["rng_states"]) == {"batch", "noise"}
    assert "ema" not in migrate_v1({"format_version": 1, "model": weights, "rng_state": state})  # RED-CNN


def test_other_format_versions_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "future.pt", "redcnn", {})
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "format_version": 3}, path)
    with pytest.raises(CheckpointError, match="format version 3: this code reads version 2 and migrates version 1"):
        load_checkpoint(path, "redcnn")


@pytest.mark.parametrize("path", sorted(SHIPPED))
def test_shipped_checkpoints_load_to_their_recorded_outputs(path):
    raw = torch.load(REPO / path, weights_only=True)
    expected_sum, expected_value, written_format = SHIPPED[path]
    assert raw["format_version"] == written_format  # shipped as written; a format-1 file is migrated on every load
    output = shipped_output(path)
    assert output.double().sum().item() == pytest.approx(expected_sum, rel=1e-5)
    assert output[0, 0, 5, 7].item() == pytest.approx(expected_value, abs=1e-5)
    v1_key, v2_key = INFERENCE_WEIGHTS[raw["kind"]]
    stored_key = v1_key if written_format == 1 else v2_key
    loaded = load_checkpoint(REPO / path, raw["kind"])[v2_key]
    assert all(torch.equal(raw[stored_key][key], loaded[key]) for key in raw[stored_key])


def shipped_training_data(kind: str, settings: dict) -> object:
    """Stand-in training data of the shapes the shipped checkpoint was trained on (resuming needs the data)."""
    images = np.zeros((2, 64, 64), np.float32)
    if kind == "spdiff":
        return [np.full((2, *settings["sinogram_shape"]), 0.5, np.float32)]
    return images if kind == "dgdiff" else redcnn.PairedImages(images, images)


@pytest.mark.parametrize("path", ["weights/spdiff_cpu.pt", "weights/dgdiff_cpu.pt", "weights/redcnn_25_cpu.pt"])
def test_shipped_checkpoints_resume_through_the_trainer_protocol(path):
    trainers = {"spdiff": spdiff.SPDiffTrainer, "dgdiff": dgdiff.DGDiffTrainer, "redcnn": redcnn.RedCNNTrainer}
    kind = torch.load(REPO / path, weights_only=True)["kind"]
    blob = load_checkpoint(REPO / path, kind)
    trainer = trainers[kind].from_payload(blob, shipped_training_data(kind, blob["settings"]), device="cpu")
    assert trainer.step == blob["step"] and trainer.settings == blob["settings"]
    assert all(torch.equal(value, blob["model"][key]) for key, value in trainer.network.state_dict().items())
    assert all(torch.equal(trainer.generators[name].get_state(), state) for name, state in blob["rng_states"].items())

"""Model checkpoints on disk: atomic saves, and loads that refuse missing, corrupt or mismatched files clearly.

A checkpoint is a dict saved with torch.save::

    {"format": "need-checkpoint", "format_version": 2, "kind": "spdiff" | "dgdiff" | "redcnn",
     "settings": {...JSON-able settings...}, **trainer.payload(), ...records (training data, tracking run)}

need_core builds and reads the payload (need_core.training); this module only owns the file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from need_core.training import Trainer, settings_mismatch

FORMAT = "need-checkpoint"
FORMAT_VERSION = 2
"""2: one payload layout for every kind (need_core.training): EMA weights under `ema`, generator states by name
under `rng_states`. Version-1 files are read through `migrate_v1`."""
V1_GENERATORS = {"rng_state": "batch", "batch_rng_state": "batch", "noise_rng_state": "noise"}
"""Version-1 keys of generator states (DGDiff and RED-CNN: `rng_state`; SPDiff: two) and their version-2 names."""


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used (corrupt, other format, other kind or settings)."""


def save_checkpoint(path: str | os.PathLike, kind: str, settings: Mapping[str, Any], **payload: Any) -> Path:
    """Write a checkpoint atomically (temp file + rename), so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "settings": dict(settings), **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(blob, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_trainer(path: str | os.PathLike, trainer: Trainer[Any, Any], **records: Any) -> Path:
    """Checkpoint a need_core trainer (its kind, settings and payload) with extra JSON-able `records`."""
    return save_checkpoint(path, trainer.kind, trainer.settings, **trainer.payload(), **records)


def migrate_v1(blob: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint in the version-2 layout: DGDiff's `ema_model` becomes `ema`, and the generator states
    move under `rng_states` (V1_GENERATORS); weights and everything else are kept as they are."""
    migrated = {key: value for key, value in blob.items() if key != "ema_model" and key not in V1_GENERATORS}
    if "ema_model" in blob:
        migrated["ema"] = blob["ema_model"]
    migrated["rng_states"] = {name: blob[key] for key, name in V1_GENERATORS.items() if key in blob}
    migrated["format_version"] = 2
    return migrated


def load_checkpoint(
    path: str | os.PathLike,
    kind: str,
    expected_settings: Mapping[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint of `kind`; if `expected_settings` is given, every key in it must match exactly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {err}") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a NEED checkpoint (missing format marker {FORMAT!r})")
    if blob.get("format_version") == 1:
        blob = migrate_v1(blob)
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {blob.get('format_version')}: this code reads version "
            f"{FORMAT_VERSION} and migrates version 1"
        )
    if blob.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {blob.get('kind')!r} model, expected {kind!r}")
    if expected_settings is not None:
        mismatched = settings_mismatch(blob["settings"], expected_settings)
        if mismatched:
            raise CheckpointError(f"checkpoint {path} was made with other settings: {mismatched}")
    return blob

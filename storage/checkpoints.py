"""Model checkpoints on disk: atomic saves, and loads that refuse missing, corrupt or mismatched files clearly.

A checkpoint is a dict saved with torch.save::

    {"format": "need-checkpoint", "format_version": 1, "kind": "spdiff" | "dgdiff" | ...,
     "settings": {...JSON-able model/schedule settings...}, ...anything else (weights, EMA, optimizer, step)}

need_core builds and reads the payload; this module only owns the file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

FORMAT = "need-checkpoint"
FORMAT_VERSION = 1


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
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {blob.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    if blob.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {blob.get('kind')!r} model, expected {kind!r}")
    if expected_settings is not None:
        mismatched = settings_mismatch(blob["settings"], expected_settings)
        if mismatched:
            raise CheckpointError(f"checkpoint {path} was made with other settings: {mismatched}")
    return blob


def settings_mismatch(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys of `expected` whose stored value differs, as {key: (stored, expected)}."""
    return {key: (stored.get(key), value) for key, value in expected.items() if stored.get(key) != value}

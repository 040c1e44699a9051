"""Model references as the flows take them (a checkpoint path, `models:/NAME/VERSION` or `models:/NAME@ALIAS`),
pinned to one local checkpoint before any compute; workers receive the pinned `ResolvedModel`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from flows.tracking.registry import fetch_registered_checkpoint
from storage.checkpoints import load_checkpoint
from tasks.models import MODEL_KINDS, ResolvedModel


def resolve_model(reference: str, kind: str) -> ResolvedModel:
    """Turn a reference into a pinned local checkpoint, checking it exists and is of `kind`; registered models are
    downloaded once into a local cache."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    registered = ""
    if reference.startswith("models:/"):
        path, registered = fetch_registered_checkpoint(reference, file_digest)
    else:
        path = Path(reference).expanduser()
    load_checkpoint(path, kind)  # missing, corrupt or wrong-kind files fail here, before any compute
    return ResolvedModel(
        kind=kind, reference=reference, path=str(path.resolve()), identity=file_digest(path), registered=registered
    )


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256: a checkpoint's identity in ledgers and the model registry."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]

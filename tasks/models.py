"""Trained models by reference: resolve a reference to a local checkpoint once, load it once per worker process."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from need_core import dgdiff, spdiff
from need_core.device import resolve_device
from storage.checkpoints import load_checkpoint

MODEL_KINDS = ("spdiff", "dgdiff")


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference pinned to one checkpoint file; `identity` is its content hash, so a retrained file is new."""

    kind: str
    reference: str
    path: str
    identity: str
    registered: str = ""  # "need-spdiff/3" for a models:/ reference, "" for a path


def resolve_model(reference: str, kind: str) -> ResolvedModel:
    """Turn a reference (a checkpoint path, `models:/NAME/VERSION` or `models:/NAME@ALIAS`) into a pinned local
    checkpoint, checking it exists and is of `kind`; registered models are downloaded once into a local cache."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    registered = ""
    if reference.startswith("models:/"):
        from tasks.tracking import fetch_registered_checkpoint

        path, registered = fetch_registered_checkpoint(reference, file_digest)
    else:
        path = Path(reference).expanduser()
    load_checkpoint(path, kind)  # missing, corrupt or wrong-kind files fail here, before any compute
    return ResolvedModel(kind=kind, reference=reference, path=str(path.resolve()), identity=file_digest(path),
                         registered=registered)


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=4)
def load_spdiff(model: ResolvedModel, device: str) -> spdiff.SPDiffModel:
    """The EMA SPDiff model on `device`, cached per worker process."""
    blob = load_checkpoint(model.path, "spdiff", map_location="cpu")
    return spdiff.load_model_from_payload(blob, device=device)


@lru_cache(maxsize=4)
def load_dgdiff(model: ResolvedModel, device: str) -> tuple[torch.nn.Module, Any]:
    """The EMA DGDiff network and its schedule on `device`, cached per worker process."""
    blob = load_checkpoint(model.path, "dgdiff", map_location="cpu")
    return dgdiff.model_from_checkpoint(blob, device=device)


def worker_device(device: str) -> str:
    """Resolve `auto` on the worker that runs the task (a GPU worker picks CUDA, a CPU one the CPU)."""
    return str(resolve_device(device))

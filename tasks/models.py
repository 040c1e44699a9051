"""Trained models on the workers: a pinned checkpoint (`ResolvedModel`, resolved by flows.models) loaded once per
worker process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


@lru_cache(maxsize=4)
def load_spdiff(model: ResolvedModel, device: str) -> spdiff.SPDiffModel:
    """The EMA SPDiff model on `device`, cached per worker process."""
    return spdiff.load_model(load_checkpoint(model.path, spdiff.CHECKPOINT_KIND, map_location="cpu"), device=device)


@lru_cache(maxsize=4)
def load_dgdiff(model: ResolvedModel, device: str) -> dgdiff.DGDiffModel:
    """The EMA DGDiff model (network and schedule) on `device`, cached per worker process."""
    return dgdiff.load_model(load_checkpoint(model.path, dgdiff.CHECKPOINT_KIND, map_location="cpu"), device=device)


def worker_device(device: str) -> str:
    """Resolve `auto` on the worker that runs the task (a GPU worker picks CUDA, a CPU one the CPU)."""
    return str(resolve_device(device))

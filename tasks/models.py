"""Trained models on the workers: a pinned checkpoint (`ResolvedModel`, resolved by flows.models) loaded once per
worker process and kept for the chunks that follow, keyed by the checkpoint's content hash."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from need_core import dgdiff, spdiff
from need_core.device import resolve_device
from storage.checkpoints import load_checkpoint

MODEL_KINDS = ("spdiff", "dgdiff")
MODELS_PER_PROCESS = 4
"""Loaded models a process keeps (a run uses two; a long-lived worker may see a few model versions)."""

Model = TypeVar("Model")
_LOADED: OrderedDict[tuple[str, str, str], Any] = OrderedDict()


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference pinned to one checkpoint file; `identity` is its content hash, so a retrained file is new."""

    kind: str
    reference: str
    path: str
    identity: str
    registered: str = ""  # "need-spdiff/3" for a models:/ reference, "" for a path


def cached_model(model: ResolvedModel, device: str, load: Callable[[], Model]) -> Model:
    """`load()` the first time this process meets the checkpoint's content on `device`, then the kept model: the
    same file under another path (a registry download, a copied catalog's run) is not loaded again."""
    key = (model.kind, model.identity, device)
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    loaded = load()
    _LOADED[key] = loaded
    while len(_LOADED) > MODELS_PER_PROCESS:
        _LOADED.popitem(last=False)
    return loaded


def checkpoint(model: ResolvedModel, kind: str) -> dict[str, Any]:
    """The checkpoint file's contents, tensors on the CPU (a model is moved to its device when built)."""
    return load_checkpoint(model.path, kind, map_location="cpu")


def load_spdiff(model: ResolvedModel, device: str) -> spdiff.SPDiffModel:
    """The EMA SPDiff model on `device`, loaded once per process."""
    return cached_model(model, device, lambda: spdiff.load_model(checkpoint(model, spdiff.CHECKPOINT_KIND), device))


def load_dgdiff(model: ResolvedModel, device: str) -> dgdiff.DGDiffModel:
    """The EMA DGDiff model (network and schedule) on `device`, loaded once per process."""
    return cached_model(model, device, lambda: dgdiff.load_model(checkpoint(model, dgdiff.CHECKPOINT_KIND), device))


def worker_device(device: str) -> str:
    """Resolve `auto` on the worker that runs the task (a GPU worker picks CUDA, a CPU one the CPU)."""
    return str(resolve_device(device))

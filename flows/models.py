"""Model references as the flows take them (a checkpoint path, `models:/NAME/VERSION` or `models:/NAME@ALIAS`),
pinned to one local checkpoint before any compute; workers receive the pinned `ResolvedModel`.

`default_model(kind)` is what a command uses when no model is named: the registry's `@champion`, else the shipped
`cpu` weights (weights/MODEL_CARD.md), found in a checkout or in an installed package's data folder.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from pathlib import Path

from flows.tracking.location import store_can_answer, tracking_uri
from flows.tracking.registry import CHAMPION, REGISTERED_NAMES, fetch_registered_checkpoint, registered_alias
from storage.checkpoints import load_checkpoint
from tasks.models import MODEL_KINDS, ResolvedModel

SHIPPED_FILES = {"spdiff": "spdiff_cpu.pt", "dgdiff": "dgdiff_cpu.pt", "redcnn": "redcnn_25_cpu.pt"}
"""The shipped `cpu`-profile checkpoint of each kind (weights/MODEL_CARD.md)."""
DATA_FOLDER = "share/need-pipeline"
"""Where an installed package keeps `weights/` and `prefect.yaml` under its prefix (pyproject's data-files)."""
CHECKOUT = Path(__file__).resolve().parent.parent


def data_roots() -> list[Path]:
    """Folders that may hold the shipped `weights/` and `prefect.yaml`: the checkout, then the install prefixes."""
    user = sysconfig.get_path("data", sysconfig.get_preferred_scheme("user"))
    prefixes = [sysconfig.get_path("data"), sys.prefix, user]
    return [CHECKOUT, *dict.fromkeys(Path(prefix) / DATA_FOLDER for prefix in prefixes if prefix)]


def shipped_weights_dir() -> Path:
    """The folder of the shipped weights: `weights/` of the checkout, else of the installed package's data folder
    (the checkout's path, which names them in the error, when neither holds them)."""
    for root in data_roots():
        if (root / "weights" / SHIPPED_FILES["spdiff"]).is_file():
            return root / "weights"
    return CHECKOUT / "weights"


def shipped_weights(kind: str) -> Path:
    """The shipped checkpoint of `kind` (it may be missing: see flows.demo.shipped_models for the message)."""
    return shipped_weights_dir() / SHIPPED_FILES[kind]


def default_model(kind: str) -> tuple[str, str]:
    """The model a command uses for `kind` when none is named, and why: `models:/need-<kind>@champion` when that
    alias exists in the configured tracking store, else the shipped weights file.

    Cheap and quiet: a store that does not exist yet (a SQLite file not created) or cannot be reached is not
    created or waited for; it only means "no champion"."""
    if kind not in SHIPPED_FILES:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {tuple(SHIPPED_FILES)}")
    uri = tracking_uri()
    name = REGISTERED_NAMES[kind]
    version = _champion_version(uri, name)
    if version is not None:
        return f"models:/{name}@{CHAMPION}", f"registry champion {name} v{version}"
    return str(shipped_weights(kind)), f"shipped weights (no @{CHAMPION} in {uri})"


def _champion_version(uri: str, name: str) -> str | None:
    """The version `name@champion` points to in the store at `uri`, or None (no store, no model, no alias)."""
    return registered_alias(uri, name, CHAMPION) if store_can_answer(uri) else None


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

"""Checkpoint files registered as MLflow models (`need register`, and the shipped weights by `need demo`): one
version per file content, described and signed (flows.tracking.registry), `@champion` set when a model has none.

    need register weights/spdiff_cpu.pt --kind spdiff                 # champion only if need-spdiff has none
    need register outputs/models/x_spdiff_cpu.pt --alias champion     # moves the champion, and says so
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flows.models import SHIPPED_FILES, file_digest, shipped_weights_dir
from flows.tracking.registry import (
    CHAMPION,
    CHECKSUM_TAG,
    REGISTERED_NAMES,
    alias_version,
    crown_if_vacant,
    move_alias,
    register_checkpoint,
    registered_version,
)
from flows.tracking.store import Tracker
from storage.checkpoints import load_checkpoint

REGISTER_EXPERIMENT = "need-models"
SHIPPED_KINDS = ("spdiff", "dgdiff", "redcnn")


@dataclass(frozen=True)
class Registration:
    """What registering one file did: its version, whether it is new, and where `@champion` points now."""

    kind: str
    name: str
    version: str
    digest: str
    new: bool
    champion: str | None
    moved_from: str | None = None  # the version an explicit alias pointed to before, when it moved

    def describe(self, alias: str | None = None) -> str:
        """One line for the user."""
        line = f"{self.name} v{self.version} ({'registered' if self.new else 'already registered'}, {self.digest})"
        if alias and self.moved_from:
            line += f"; @{alias} moved from v{self.moved_from} to v{self.version}"
        elif alias:
            line += f"; @{alias} -> v{self.version}"
        if alias != CHAMPION:
            line += f"; @{CHAMPION} -> v{self.champion}" if self.champion else f"; no @{CHAMPION}"
        return line


def register_model_file(
    tracker: Tracker,
    checkpoint: Path,
    kind: str,
    alias: str | None = None,
    description: str = "",
    profile: str = "",
) -> Registration:
    """Register `checkpoint` (a checkpoint of `kind`) unless a version with its digest exists, in a run of its own;
    crown it `@champion` when the model has none; point `alias` at it when given (moving it, if elsewhere).
    `profile`: the training profile, for the description, when the checkpoint does not record it (SPDiff's)."""
    checkpoint = Path(checkpoint)
    load_checkpoint(checkpoint, kind)  # missing, corrupt or wrong-kind files fail before anything is logged
    name, digest = REGISTERED_NAMES[kind], file_digest(checkpoint)
    existing = registered_version(tracker, kind, digest)
    version = existing.split("/", 1)[1] if existing else None
    if version is None:
        tags = {CHECKSUM_TAG: digest, "need.checkpoint": str(checkpoint.resolve())}
        with tracker.run(f"register {kind} {checkpoint.name}", f"register-{kind}", tags=tags) as run_id:
            params = {"model": kind, "checkpoint": str(checkpoint.resolve()), "digest": digest}
            tracker.log_params(run_id, {**params, **({"profile": profile} if profile else {})})
            version = register_checkpoint(tracker, run_id, checkpoint, kind, digest, description)
            tracker.set_tags(run_id, {"need.model_version": version})
    else:
        crown_if_vacant(tracker.client, name, version)
    moved = move_alias(tracker.client, name, alias, version) if alias else None
    champion = alias_version(tracker.client, name, CHAMPION)
    return Registration(kind, name, version, digest, existing is None, champion, moved)


def model_card_summary(filename: str, card: Path) -> str:
    """The model card's table row for `filename` and its "Intended use and limits" section, as plain text ("" when
    the card does not list the file)."""
    if not card.is_file():
        return ""
    text = card.read_text()
    rows = [line for line in text.splitlines() if line.startswith(f"| `{filename}`")]
    if not rows:
        return ""
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    header = ("file", "model", "sha256", "steps", "trained on", "training run")
    parts = [f"{key}: {value}" for key, value in zip(header, cells, strict=False) if key not in ("file", "sha256")]
    limits = text.split("## Intended use and limits", 1)[1].strip() if "## Intended use and limits" in text else ""
    lines = [f"shipped weights/{filename} (weights/MODEL_CARD.md)", *parts]
    return "\n".join(lines + ([" ".join(limits.split())] if limits else []))


def register_shipped_models(tracker: Tracker, folder: Path | None = None) -> dict[str, Registration]:
    """Register the shipped `cpu` weights (spdiff, dgdiff, redcnn) with the model card's text, each `@champion`
    where its model has none yet: after this, the deployments' `models:/need-<kind>@champion` resolve."""
    folder = folder or shipped_weights_dir()
    return {
        kind: register_model_file(
            tracker,
            folder / SHIPPED_FILES[kind],
            kind,
            description=model_card_summary(SHIPPED_FILES[kind], folder / "MODEL_CARD.md"),
            profile="cpu",
        )
        for kind in SHIPPED_KINDS
    }

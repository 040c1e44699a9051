"""Train flow: SPDiff or DGDiff on an archive's normal-dose data, or the supervised RED-CNN baseline on paired
low-/normal-dose images, validated, logged and registered in MLflow.

    need train ARCHIVE --model spdiff --profile cpu --steps 2000 [--resume]
    need train ARCHIVE --model redcnn --profile cpu --steps 1500 --train-dose 0.25

`steps` is the total: `--resume` continues the checkpoint (and its MLflow run) exactly up to it. The checkpoint is
saved at every validation, so a killed run loses at most one validation interval. The finished checkpoint is
registered as a new version of `need-spdiff` / `need-dgdiff` / `need-redcnn`, usable as `models:/need-spdiff/N`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from tqdm.auto import tqdm

from flows.models import file_digest
from flows.tracking.registry import REGISTERED_NAMES
from flows.tracking.runs import TrainingRunLog, slice_ranges
from flows.tracking.store import default_experiment, open_tracker
from storage.archive import open_archive
from storage.checkpoints import save_trainer
from tasks.train import (
    VALIDATION_DOSE,
    data_record,
    resolve_train_dose,
    simulate_validation_set,
    start_training,
    training_split,
    validate,
)


def default_checkpoint(archive: str, model: str, profile: str, train_dose: float | None = None) -> Path:
    """`models/<archive name>_<model>_<profile>.pt` next to the archive (RED-CNN: `<model>` is e.g. `redcnn_25`,
    named after its training dose)."""
    path = Path(archive).resolve()
    label = model if train_dose is None else f"{model}_{round(train_dose * 100):d}"
    return path.parent / "models" / f"{path.name.removesuffix('.zarr')}_{label}_{profile}.pt"


@flow(name="train")
def train(
    archive: str,
    model: str = "spdiff",
    profile: str = "cpu",
    steps: int = 2000,
    resume: bool = False,
    checkpoint: str | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    validate_every: int | None = None,
    train_slices: list[int] | None = None,
    validation_slices: list[int] | None = None,
    tracking: bool = True,
    experiment: str | None = None,
    train_dose: float | None = None,
) -> dict[str, Any]:
    """Train `model` to `steps` total steps; return the checkpoint, run and model version.

    SPDiff and DGDiff train on normal-dose data only. RED-CNN, the supervised exception, trains on the FBP of the
    archive's low-dose scans at `train_dose` (default 0.25; one of the archive's doses) paired with `fbp_nd`.
    `batch_size` None: 8 for SPDiff and DGDiff, 16 for RED-CNN."""
    logger = get_run_logger()
    if steps < 1 or (validate_every is not None and validate_every < 1):
        raise ValueError(f"steps and validate_every must be >= 1, got {steps}, {validate_every}")
    tracker = open_tracker(tracking, experiment or default_experiment(archive))
    store = open_archive(archive)
    split = training_split(store, train_slices, validation_slices)
    dose = resolve_train_dose(model, train_dose, store)
    path = Path(checkpoint) if checkpoint else default_checkpoint(archive, model, profile, dose)
    trainer, run_id = start_training(model, profile, store, split, path, resume, batch_size, seed, device, dose)
    record = data_record(store, split, dose)
    validation_set = simulate_validation_set(store, split.validation)
    params = {
        "model": model,
        "profile": profile,
        "settings": trainer.settings,
        **record,
        "train_slices": slice_ranges(list(split.train)),
        "validation_slices": slice_ranges(list(split.validation)),
        "validation_heldout": split.heldout,
        "validation_dose": VALIDATION_DOSE,
        "checkpoint": str(path),
    }
    log = TrainingRunLog(
        tracker,
        model,
        run_id,
        f"train {model} {profile}",
        params,
        {"need.archive": str(store.path), "need.target_steps": steps, "need.device": device},
    )
    every = validate_every or max(1, steps // 10)
    validation = None
    try:
        with (
            tqdm(total=steps, initial=min(trainer.step, steps), desc=f"train {model}", unit="step") as bar,
            tempfile.TemporaryDirectory(prefix="need-train-") as scratch,
        ):
            while trainer.step < steps:
                losses: list[tuple[int, float]] = []

                def on_step(step: int, loss: float, losses: list[tuple[int, float]] = losses) -> None:
                    losses.append((step, loss))
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}")

                trainer.fit(min(every - trainer.step % every, steps - trainer.step), on_step)
                save_trainer(path, trainer, training_data=record, tracking_run_id=log.run_id or "")
                validation = validate(trainer, validation_set)
                log.log_progress(trainer.step, losses, validation, Path(scratch))
                logger.info("step %d: %s", trainer.step, validation.metrics)
        version = log.finish(path, file_digest(path))
    except BaseException:
        log.fail()
        raise
    registered = f"{REGISTERED_NAMES[model]}/{version}" if version else None
    return {
        "checkpoint": str(path),
        "step": trainer.step,
        "run_id": log.run_id,
        "model_version": registered,
        "validation": validation.metrics if validation else None,
    }

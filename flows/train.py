"""Train flow: SPDiff or DGDiff on a catalog's normal-dose data, or the supervised RED-CNN baseline on paired
low-/normal-dose images, validated, logged and registered in MLflow.

    need train CATALOG --model spdiff --profile cpu --steps 2000 [--resume]
    need train CATALOG --model redcnn --profile cpu --steps 1500 --train-dose 0.25

A catalog split by patient (`need split`) trains on every train study and validates on the val studies; a single
study without a split (the bundled head CT, or one named with `--studies`) is split by slices. `steps` is the total:
`--resume` continues the checkpoint (and its MLflow run) exactly up to it. The checkpoint is saved at every
validation, so a killed run loses at most one validation interval. The finished checkpoint is registered as a new
version of `need-spdiff` / `need-dgdiff` / `need-redcnn` (an MLflow model with a signature and a description),
usable as `models:/need-spdiff/N`; the first version of a model also becomes its `@champion`, a later one never moves
it (`need register CHECKPOINT --alias champion` does).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from tqdm.auto import tqdm

from flows.models import file_digest
from flows.reports import train_run_name
from flows.tracking.datasets import log_catalog_inputs
from flows.tracking.registry import REGISTERED_NAMES
from flows.tracking.runs import TrainingRunLog
from flows.tracking.store import default_experiment, open_tracker
from storage.catalog import open_catalog
from storage.checkpoints import save_trainer
from storage.ledger import slice_ranges
from tasks.train import data_record, start_training
from tasks.train_data import TrainingPlan, plan_training, resolve_train_dose
from tasks.train_validation import VALIDATION_DOSE, simulate_validation_set, validate


def default_checkpoint(catalog: str, model: str, profile: str, train_dose: float | None = None) -> Path:
    """`models/<catalog name>_<model>_<profile>.pt` next to the catalog (RED-CNN: `<model>` is e.g. `redcnn_25`,
    named after its training dose)."""
    path = Path(catalog).resolve()
    label = model if train_dose is None else f"{model}_{round(train_dose * 100):d}"
    return path.parent / "models" / f"{path.name.removesuffix('.zarr')}_{label}_{profile}.pt"


def plan_params(plan: TrainingPlan, record: dict[str, Any]) -> dict[str, Any]:
    """Run params of what trains and validates: the digest and counts of the studies, and a single study's slices."""
    params: dict[str, Any] = {
        "catalog_digest": record["catalog_digest"],
        "train_studies": len(plan.train),
        "validation_studies": len(plan.validation),
        "validation_heldout": plan.heldout,
        **{key: record[key] for key in ("archive_settings_hash", "train_dose") if key in record},
    }
    if not plan.patient_level:
        params["train_slices"] = slice_ranges(list(plan.train[0].slices))
        params["validation_slices"] = slice_ranges(list(plan.validation[0].slices))
    return params


@flow(name="train", flow_run_name=train_run_name)
def train(
    catalog: str,
    model: str = "spdiff",
    profile: str = "cpu",
    steps: int = 2000,
    resume: bool = False,
    checkpoint: str | None = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int | None = None,
    validate_every: int | None = None,
    studies: list[str] | None = None,
    train_slices: list[int] | None = None,
    validation_slices: list[int] | None = None,
    tracking: bool = True,
    experiment: str | None = None,
    train_dose: float | None = None,
) -> dict[str, Any]:
    """Train `model` to `steps` total steps; return the checkpoint, run, model version and the studies used.

    SPDiff and DGDiff train on normal-dose data only. RED-CNN, the supervised exception, trains on the FBP of the
    low-dose scans at `train_dose` (default 0.25; a dose of every training study) paired with `fbp_nd`.
    `studies` limits training and validation to those studies. `batch_size` None: 8 for SPDiff and DGDiff, 16 for
    RED-CNN."""
    logger = get_run_logger()
    if steps < 1 or (validate_every is not None and validate_every < 1):
        raise ValueError(f"steps and validate_every must be >= 1, got {steps}, {validate_every}")
    tracker = open_tracker(tracking, experiment or default_experiment(catalog))
    store = open_catalog(catalog)
    plan = plan_training(store, model, studies, train_slices, validation_slices)
    for line in plan.skipped:
        logger.warning("train %s: skipped %s", model, line)
    dose = resolve_train_dose(model, train_dose, plan)
    path = Path(checkpoint) if checkpoint else default_checkpoint(catalog, model, profile, dose)
    record = data_record(store, plan, dose)
    trainer, run_id = start_training(model, profile, plan, record, path, resume, batch_size, seed, device, dose)
    validation_sets = [simulate_validation_set(part.archive, part.slices) for part in plan.validation]
    params = {
        "model": model,
        "profile": profile,
        "settings": trainer.settings,
        **plan_params(plan, record),
        "validation_dose": VALIDATION_DOSE,
        "checkpoint": str(path),
    }
    tags = {"need.archive": str(store.path), "need.target_steps": steps, "need.device": device}
    log = TrainingRunLog(tracker, model, run_id, f"train {model} {profile}", params, tags)
    if tracker is not None and log.run_id is not None:
        log_catalog_inputs(tracker, log.run_id, store, plan.train_rows, "training")
        log_catalog_inputs(tracker, log.run_id, store, plan.validation_rows, "validation")
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
                validation = validate(trainer, validation_sets)
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
        "studies": record["studies"],
        "validation_studies": record["validation_studies"],
        "skipped": list(plan.skipped),
    }

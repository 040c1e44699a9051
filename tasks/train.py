"""Training on an archive's data: which slices, each kind's trainer (the need_core.training protocol) with this
pipeline's settings, resumable checkpoints, and cheap validation on held-out slices with freshly simulated noise.

SPDiff (`proj_nd`) and DGDiff (`fbp_nd`) train on normal-dose data only and never read `proj_ld`. RED-CNN is the
supervised exception: the baseline learns the mapping from the FBP of the training slices' low-dose scans
(`proj_ld` at one training dose) to their normal-dose FBP (`fbp_nd`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from need_core import dgdiff, redcnn, spdiff
from need_core.metrics import psnr, ssim
from need_core.physics import (
    FanBeamGeometry,
    PhysicsSettings,
    fbp_hu,
    simulate_scan,
    transmission_to_line_integrals,
)
from need_core.training import Trainer
from storage.archive import Archive, UnknownDoseError
from storage.checkpoints import load_checkpoint
from storage.splits import HEAD_CT_SPLIT
from tasks.baselines import RAMP, low_dose_fbp
from tasks.chunking import SliceChunk, contiguous_chunks

TRAINERS = {trainer.kind: trainer for trainer in (spdiff.SPDiffTrainer, dgdiff.DGDiffTrainer, redcnn.RedCNNTrainer)}
MODEL_KINDS = tuple(TRAINERS)
PROFILES = ("tiny", "cpu", "paper")
VALIDATION_DOSE = 0.25
DGDIFF_INIT_DOSE = 0.5  # DGDiff validation starts from a less noisy FBP, standing in for SPDiff's output
VALIDATION_STREAM = 0x5EED  # keeps validation noise apart from the archive's own simulated scans
HEAD_CT_SLICES = 108
SPDIFF_PATCH = 64
DEFAULT_BATCH_SIZE = {"spdiff": 8, "dgdiff": 8, "redcnn": 16}
# DGDiff as bench/dgdiff.py's "reachable_steps" variant: random crops (full images for `paper`), and only the
# steps guided sampling can reach: the matching never starts above a noise level of 0.25 in [-1, 1] units.
DGDIFF_CROP = {"tiny": 64, "cpu": 64, "paper": None}
DGDIFF_MAX_SIGMA = 0.25
DGDIFF_LEARNING_RATE = 2e-4
# RED-CNN as bench/redcnn.py: 64x64 patches, lr 3e-4, MSE, paired with the FBP of the 25 %-dose scans
REDCNN_TRAIN_DOSE = 0.25
REDCNN_PATCH = 64
REDCNN_LEARNING_RATE = 3e-4


class TrainingInputError(ValueError):
    """Training was asked for something the archive or checkpoint cannot give (bad slices, mismatched resume)."""


@dataclass(frozen=True)
class TrainingSplit:
    """Slices that train the model and the few that validate it (`heldout`: disjoint from the training slices)."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    heldout: bool


def is_bundled_head_ct(archive: Archive) -> bool:
    """Whether the archive was ingested from the bundled InVesalius head CT (an .inv3 source of 108 slices)."""
    return archive.attrs.get("source", {}).get("format") == "inv3" and archive.n_slices == HEAD_CT_SLICES


def middle_run(slices: list[int], count: int) -> list[int]:
    """`count` consecutive entries from the middle of `slices`."""
    start = max(0, (len(slices) - count) // 2)
    return slices[start : start + count]


def training_split(
    archive: Archive,
    train_slices: list[int] | None = None,
    validation_slices: list[int] | None = None,
    n_validation: int = 3,
) -> TrainingSplit:
    """The bundled head CT uses HEAD_CT_SPLIT (validation: middle held-out slices); other archives train on every
    slice unless told otherwise and validate on `validation_slices` or the middle slices."""
    everything = list(range(archive.n_slices))
    if train_slices is None and validation_slices is None and is_bundled_head_ct(archive):
        return TrainingSplit(HEAD_CT_SPLIT.train, tuple(middle_run(list(HEAD_CT_SPLIT.heldout), n_validation)), True)
    train = sorted(set(train_slices if train_slices is not None else everything))
    validation = sorted(
        set(validation_slices if validation_slices is not None else middle_run(everything, n_validation))
    )
    for name, chosen in (("training", train), ("validation", validation)):
        bad = [s for s in chosen if not 0 <= s < archive.n_slices]
        if not chosen or bad:
            raise TrainingInputError(
                f"{name} slices must be a non-empty subset of [0, {archive.n_slices}); got {chosen}"
            )
    return TrainingSplit(tuple(train), tuple(validation), heldout=not set(train) & set(validation))


def slice_runs(slices: tuple[int, ...] | list[int]) -> list[SliceChunk]:
    """Contiguous runs of the slices (SPDiff trains on slice triplets inside a run, never across a gap)."""
    return contiguous_chunks(slices, max_slices=max(len(slices), 1))


def read_normal_dose(archive: Archive, var: str, slices: tuple[int, ...]) -> list[np.ndarray]:
    """Normal-dose data (`proj_nd` or `fbp_nd`) of the slices, one array per contiguous run; never low-dose data.

    This is all SPDiff and DGDiff ever read. RED-CNN, the supervised exception, also reads the low-dose scans
    (`read_low_dose_fbp`)."""
    if var not in ("proj_nd", "fbp_nd"):
        raise TrainingInputError(f"training reads normal-dose data only (proj_nd, fbp_nd), not {var!r}")
    runs = [archive.read(var, run.start, run.stop) for run in slice_runs(slices)]
    for run, values in zip(slice_runs(slices), runs, strict=True):
        if not np.isfinite(values).all():
            raise TrainingInputError(f"{var} of slices {run.label} holds NaN/inf (not ingested?): run `need ingest`")
    return runs


def resolve_train_dose(kind: str, train_dose: float | None, archive: Archive) -> float | None:
    """RED-CNN's training dose (REDCNN_TRAIN_DOSE unless given), which must be one of the archive's doses; None for
    SPDiff and DGDiff, which train on normal-dose data only and refuse a training dose."""
    if kind not in MODEL_KINDS:
        raise TrainingInputError(f"unknown model {kind!r}: expected one of {MODEL_KINDS}")
    if kind != "redcnn":
        if train_dose is not None:
            raise TrainingInputError(f"a training dose applies to redcnn only: {kind} trains on normal-dose data")
        return None
    dose = REDCNN_TRAIN_DOSE if train_dose is None else float(train_dose)
    try:
        archive.dose_index(dose)
    except UnknownDoseError:
        raise TrainingInputError(
            f"training dose {dose:g} is not a dose of the archive {archive.path}: it holds "
            f"low-dose scans at {', '.join(f'{d:g}' for d in archive.doses) or 'no dose'}; "
            "choose one of them with --train-dose"
        ) from None
    return dose


def read_low_dose_fbp(archive: Archive, dose: float, slices: tuple[int, ...]) -> list[np.ndarray]:
    """Ramp FBP (HU) of the slices' stored low-dose scans `proj_ld` at `dose`, one array per contiguous run: RED-CNN's
    training inputs. Computed here, since the archive's `fbp_ld` is only written by `need reconstruct`."""
    images = []
    for run in slice_runs(slices):
        transmission = archive.read("proj_ld", run.start, run.stop, dose=dose)
        if not np.isfinite(transmission).all():
            raise TrainingInputError(
                f"proj_ld of slices {run.label} at dose {dose:g} holds NaN/inf (not ingested?): run `need ingest`"
            )
        images.append(low_dose_fbp(archive, transmission_to_line_integrals(transmission), RAMP))
    return images


TrainingData = list[np.ndarray] | np.ndarray | redcnn.PairedImages


def read_training_data(archive: Archive, kind: str, slices: tuple[int, ...], train_dose: float | None) -> TrainingData:
    """The data `kind`'s trainer is built on: SPDiff the `proj_nd` runs, DGDiff the `fbp_nd` images, RED-CNN the
    FBP of `proj_ld` at `train_dose` paired with `fbp_nd`."""
    if kind == "spdiff":
        return read_normal_dose(archive, "proj_nd", slices)
    if kind == "dgdiff":
        return np.concatenate(read_normal_dose(archive, "fbp_nd", slices))
    if train_dose is None:
        raise TrainingInputError("redcnn needs a training dose")
    return redcnn.PairedImages(
        inputs_hu=np.concatenate(read_low_dose_fbp(archive, train_dose, slices)),
        targets_hu=np.concatenate(read_normal_dose(archive, "fbp_nd", slices)),
    )


@dataclass
class ValidationSet:
    """Held-out slices with fresh low-dose noise: the normal-dose reference, the noisy inputs and their FBPs."""

    slices: list[int]
    runs: list[SliceChunk]
    reference_hu: np.ndarray
    transmission_ld: list[np.ndarray]
    fbp_ld_hu: np.ndarray
    fbp_init_hu: np.ndarray
    incident_count: float
    geometry: FanBeamGeometry
    physics: PhysicsSettings


def simulate_validation_set(archive: Archive, slices: tuple[int, ...], dose: float = VALIDATION_DOSE) -> ValidationSet:
    """Simulate scans of the validation slices with the archive's simulator in VALIDATION_STREAM: at `dose` (the
    inputs) and at DGDIFF_INIT_DOSE (DGDiff's initial image); noise independent of the archive's `proj_ld`."""
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    runs = slice_runs(slices)
    scans = [
        simulate_scan(
            archive.read("image_hu", run.start, run.stop),
            geometry,
            physics,
            [dose, DGDIFF_INIT_DOSE],
            seed=int(archive.settings["seed"]),
            slice_indices=range(run.start, run.stop),
            stream=VALIDATION_STREAM,
        )
        for run in runs
    ]
    return ValidationSet(
        slices=[s for scan in scans for s in scan.slice_indices],
        runs=runs,
        reference_hu=np.concatenate([archive.read("fbp_nd", run.start, run.stop) for run in runs]),
        transmission_ld=[scan.transmission(dose) for scan in scans],
        fbp_ld_hu=np.concatenate([scan.fbp(dose) for scan in scans]),
        fbp_init_hu=np.concatenate([scan.fbp(DGDIFF_INIT_DOSE) for scan in scans]),
        incident_count=physics.incident_count_at(dose),
        geometry=geometry,
        physics=physics,
    )


@dataclass
class Validation:
    """Validation metrics (model output and its input, against the normal-dose image) and one sample slice."""

    metrics: dict[str, float]
    sample: dict[str, np.ndarray]


def score(output_hu: np.ndarray, input_hu: np.ndarray, data: ValidationSet) -> Validation:
    """Mean PSNR/SSIM of the model's output and of its input against the normal-dose reference."""
    middle = len(data.slices) // 2
    metrics = {
        "val_psnr": float(np.mean(psnr(output_hu, data.reference_hu))),
        "val_ssim": float(np.mean(ssim(output_hu, data.reference_hu))),
        "val_psnr_input": float(np.mean(psnr(input_hu, data.reference_hu))),
    }
    sample = {"reference": data.reference_hu[middle], "input": input_hu[middle], "model": output_hu[middle]}
    return Validation(metrics, sample)


def validate_spdiff(model: spdiff.SPDiffModel, data: ValidationSet, device: str) -> Validation:
    """Denoise the validation sinograms, FBP, and score against `fbp_nd`."""
    denoised = [
        spdiff.denoise_volume(
            model, x, data.incident_count, slice_ids=range(run.start, run.stop), device=device
        ).transmission
        for run, x in zip(data.runs, data.transmission_ld, strict=True)
    ]
    output = np.concatenate([fbp_hu(transmission_to_line_integrals(x), data.geometry, data.physics) for x in denoised])
    return score(output, data.fbp_ld_hu, data)


def validate_dgdiff(model: dgdiff.DGDiffModel, data: ValidationSet, device: str) -> Validation:
    """Refine the less noisy FBP guided by the low-dose FBP, and score against `fbp_nd`."""
    refined = dgdiff.refine(
        model.network,
        data.fbp_ld_hu,
        data.fbp_init_hu,
        model.schedule,
        seed=0,
        slice_ids=data.slices,
        device=device,
        max_step=model.max_start_step,
    )
    return score(refined.images_hu, data.fbp_init_hu, data)


def validate_redcnn(model: redcnn.RedCNN, data: ValidationSet, device: str) -> Validation:
    """Denoise the validation slices' low-dose FBP and score against `fbp_nd`."""
    return score(redcnn.denoise_images(model, data.fbp_ld_hu, batch_size=4, device=device), data.fbp_ld_hu, data)


VALIDATORS = {"spdiff": validate_spdiff, "dgdiff": validate_dgdiff, "redcnn": validate_redcnn}


def validate(trainer: Trainer[Any, Any], data: ValidationSet) -> Validation:
    """Score the trainer's inference model (EMA weights where it keeps them) on the validation set."""
    return VALIDATORS[trainer.kind](trainer.model(), data, str(trainer.device))


def spdiff_settings(profile: str, volumes: list[np.ndarray], batch_size: int, seed: int) -> spdiff.TrainSettings:
    """The profile's network, trained in its own domain on SPDIFF_PATCH patches (shrunk to the sinograms)."""
    network = spdiff.network_profile(profile)
    views, detectors = volumes[0].shape[1:]
    return spdiff.TrainSettings(
        network=network,
        batch_size=batch_size,
        seed=seed,
        loss_domain=network.domain,
        patch_shape=(min(SPDIFF_PATCH, views), min(SPDIFF_PATCH, detectors)),
    )


def dgdiff_settings(profile: str, images: np.ndarray, batch_size: int, seed: int) -> dgdiff.TrainSettings:
    """Random crops (DGDIFF_CROP) and only the steps guided sampling reaches (t < max_reachable_step)."""
    settings = dgdiff.TrainSettings(
        profile=profile,
        batch_size=batch_size,
        seed=seed,
        learning_rate=DGDIFF_LEARNING_RATE,
        crop_size=dgdiff_crop_size(profile, images.shape[-2:]),
    )
    reachable = dgdiff.max_reachable_step(dgdiff.DiffusionSchedule(settings.schedule), DGDIFF_MAX_SIGMA)
    return replace(settings, max_train_step=reachable)


def dgdiff_crop_size(profile: str, image_shape: tuple[int, ...]) -> int | None:
    """DGDiff's training crop: DGDIFF_CROP[profile] (None: full images), shrunk to the images and to a multiple of
    the network's size_multiple."""
    wanted = DGDIFF_CROP[profile]
    if wanted is None:
        return None
    multiple = dgdiff.PROFILES[profile].size_multiple
    crop = min(wanted, *image_shape) // multiple * multiple
    if crop < multiple:
        raise TrainingInputError(
            f"images {tuple(image_shape)} are too small for DGDiff's {profile!r} profile "
            f"(crops must be multiples of {multiple})"
        )
    return crop


def redcnn_settings(
    profile: str, pairs: redcnn.PairedImages, batch_size: int, seed: int, dose: float | None
) -> redcnn.TrainSettings:
    """REDCNN_PATCH patches (shrunk to the images) at REDCNN_LEARNING_RATE, recording the inputs' dose."""
    return redcnn.TrainSettings(
        profile=profile,
        learning_rate=REDCNN_LEARNING_RATE,
        batch_size=batch_size,
        patch_size=min(REDCNN_PATCH, *pairs.inputs_hu.shape[-2:]),
        paired_dose=dose,
        seed=seed,
    )


def new_trainer(
    kind: str, profile: str, data: Any, batch_size: int, seed: int, device: str, train_dose: float | None
) -> Trainer[Any, Any]:
    """A fresh trainer of `kind` on `data` (as `read_training_data` reads it) with this pipeline's settings."""
    if kind == "spdiff":
        return spdiff.SPDiffTrainer(spdiff_settings(profile, data, batch_size, seed), data, device)
    if kind == "dgdiff":
        return dgdiff.DGDiffTrainer(dgdiff_settings(profile, data, batch_size, seed), data, device)
    return redcnn.RedCNNTrainer(redcnn_settings(profile, data, batch_size, seed, train_dose), data, device)


def data_record(archive: Archive, split: TrainingSplit, train_dose: float | None = None) -> dict[str, Any]:
    """What the model was trained on, stored in the checkpoint and checked on resume (with RED-CNN's training dose)."""
    record = {
        "archive_settings_hash": archive.settings_hash,
        "train_slices": list(split.train),
        "validation_slices": list(split.validation),
    }
    return record if train_dose is None else {**record, "train_dose": train_dose}


def start_training(
    kind: str,
    profile: str,
    archive: Archive,
    split: TrainingSplit,
    checkpoint: Path,
    resume: bool,
    batch_size: int | None,
    seed: int,
    device: str,
    train_dose: float | None = None,
) -> tuple[Trainer[Any, Any], str | None]:
    """A new trainer, or (resume) the one in `checkpoint` continued exactly; returns it and its MLflow run id.

    `train_dose`: RED-CNN's training dose, as `resolve_train_dose` gives it (None for SPDiff and DGDiff).
    `batch_size` None: DEFAULT_BATCH_SIZE of the kind (a resumed training keeps its checkpoint's)."""
    if kind not in TRAINERS:
        raise TrainingInputError(f"unknown model {kind!r}: expected one of {MODEL_KINDS}")
    if profile not in PROFILES:
        raise TrainingInputError(f"unknown profile {profile!r}: expected one of {PROFILES}")
    data = read_training_data(archive, kind, split.train, train_dose)
    if not resume:
        if checkpoint.exists():
            raise TrainingInputError(
                f"checkpoint {checkpoint} exists: pass --resume to continue it, or choose another --checkpoint"
            )
        batch = DEFAULT_BATCH_SIZE[kind] if batch_size is None else batch_size
        return new_trainer(kind, profile, data, batch, seed, device, train_dose), None
    blob = load_checkpoint(checkpoint, kind)
    stored, wanted = blob.get("training_data"), data_record(archive, split, train_dose)
    if stored != wanted:
        raise TrainingInputError(
            f"checkpoint {checkpoint} was trained on other data ({stored}); this run would use {wanted}"
        )
    return TRAINERS[kind].from_payload(blob, data, device), blob.get("tracking_run_id") or None

"""Training on an archive's data: which slices, one interface over the trainers, resumable checkpoints, and cheap
validation on held-out slices with freshly simulated low-dose noise.

SPDiff (`proj_nd`) and DGDiff (`fbp_nd`) train on normal-dose data only and never read `proj_ld`. RED-CNN is the
supervised exception: the baseline learns the mapping from the FBP of the training slices' low-dose scans
(`proj_ld` at one training dose) to their normal-dose FBP (`fbp_nd`)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from need_core import dgdiff, redcnn, spdiff
from need_core.metrics import psnr, ssim
from need_core.physics import (
    FanBeamGeometry,
    PhysicsSettings,
    fbp_hu,
    forward_project,
    hu_to_mu,
    simulate_transmission,
    transmission_to_line_integrals,
)
from storage.archive import Archive
from storage.checkpoints import load_checkpoint, save_checkpoint
from storage.splits import HEAD_CT_SPLIT
from tasks.baselines import RAMP, low_dose_fbp
from tasks.chunking import SliceChunk, contiguous_chunks

MODEL_KINDS = ("spdiff", "dgdiff", "redcnn")
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
    return slices[start:start + count]


def training_split(archive: Archive, train_slices: list[int] | None = None,
                   validation_slices: list[int] | None = None, n_validation: int = 3) -> TrainingSplit:
    """The bundled head CT uses HEAD_CT_SPLIT (validation: middle held-out slices); other archives train on every
    slice unless told otherwise and validate on `validation_slices` or the middle slices."""
    everything = list(range(archive.n_slices))
    if train_slices is None and validation_slices is None and is_bundled_head_ct(archive):
        return TrainingSplit(HEAD_CT_SPLIT.train, tuple(middle_run(list(HEAD_CT_SPLIT.heldout), n_validation)), True)
    train = sorted(set(train_slices if train_slices is not None else everything))
    validation = sorted(set(validation_slices if validation_slices is not None else middle_run(everything, n_validation)))
    for name, chosen in (("training", train), ("validation", validation)):
        bad = [s for s in chosen if not 0 <= s < archive.n_slices]
        if not chosen or bad:
            raise TrainingInputError(f"{name} slices must be a non-empty subset of [0, {archive.n_slices}); got {chosen}")
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
    for run, values in zip(slice_runs(slices), runs):
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
    if not any(abs(dose - held) <= 1e-9 for held in archive.doses):
        raise TrainingInputError(f"training dose {dose:g} is not a dose of the archive {archive.path}: it holds "
                                 f"low-dose scans at {', '.join(f'{d:g}' for d in archive.doses) or 'no dose'}; "
                                 "choose one of them with --train-dose")
    return dose


def read_low_dose_fbp(archive: Archive, dose: float, slices: tuple[int, ...]) -> list[np.ndarray]:
    """Ramp FBP (HU) of the slices' stored low-dose scans `proj_ld` at `dose`, one array per contiguous run: RED-CNN's
    training inputs. Computed here, since the archive's `fbp_ld` is only written by `need reconstruct`."""
    images = []
    for run in slice_runs(slices):
        transmission = archive.read("proj_ld", run.start, run.stop, dose=dose)
        if not np.isfinite(transmission).all():
            raise TrainingInputError(f"proj_ld of slices {run.label} at dose {dose:g} holds NaN/inf (not ingested?): "
                                     "run `need ingest`")
        images.append(low_dose_fbp(archive, transmission_to_line_integrals(transmission), RAMP))
    return images


@dataclass(frozen=True)
class PairedImages:
    """RED-CNN's training set: low-dose FBP inputs and normal-dose FBP targets (n, H, W) in HU, and the dose."""

    inputs_hu: np.ndarray
    targets_hu: np.ndarray
    dose: float


TrainingData = list[np.ndarray] | PairedImages


def read_training_data(archive: Archive, kind: str, slices: tuple[int, ...], train_dose: float | None) -> TrainingData:
    """What `kind` trains on: normal-dose data for SPDiff and DGDiff (one array per run), paired images for RED-CNN."""
    if kind != "redcnn":
        return read_normal_dose(archive, TRAINING_DATA[kind][0], slices)
    if train_dose is None:
        raise TrainingInputError("redcnn needs a training dose")
    return PairedImages(inputs_hu=np.concatenate(read_low_dose_fbp(archive, train_dose, slices)),
                        targets_hu=np.concatenate(read_normal_dose(archive, "fbp_nd", slices)), dose=train_dose)


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
    """Simulate scans of the validation slices from their clean line integrals: at `dose` (the inputs) and at
    DGDIFF_INIT_DOSE (DGDiff's initial image); noise seeded by (archive seed, slice), independent of `proj_ld`."""
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    seed = int(archive.settings["seed"])
    runs = slice_runs(slices)
    transmission: dict[float, list[np.ndarray]] = {dose: [], DGDIFF_INIT_DOSE: []}
    for run in runs:
        clean = forward_project(hu_to_mu(archive.read("image_hu", run.start, run.stop), physics.mu_water_per_mm), geometry)
        for fraction, stack in transmission.items():
            stack.append(np.stack([
                simulate_transmission(clean[s - run.start], fraction, physics,
                                      np.random.default_rng([seed, VALIDATION_STREAM, s, round(fraction * 1e6)]))
                for s in range(run.start, run.stop)
            ]))

    def images(fraction: float) -> np.ndarray:
        return np.concatenate([fbp_hu(transmission_to_line_integrals(x), geometry, physics) for x in transmission[fraction]])

    ordered = [s for run in runs for s in range(run.start, run.stop)]
    reference = np.concatenate([archive.read("fbp_nd", run.start, run.stop) for run in runs])
    return ValidationSet(slices=ordered, runs=runs, reference_hu=reference, transmission_ld=transmission[dose],
                         fbp_ld_hu=images(dose), fbp_init_hu=images(DGDIFF_INIT_DOSE),
                         incident_count=physics.incident_count * dose, geometry=geometry, physics=physics)


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


class SPDiffTraining:
    """SPDiff training on `proj_nd` triplets, behind the interface the train flow uses."""

    kind = "spdiff"

    def __init__(self, trainer: spdiff.Trainer, device: str) -> None:
        self.trainer, self.device = trainer, device

    @classmethod
    def create(cls, volumes: list[np.ndarray], profile: str, batch_size: int, seed: int, device: str) -> "SPDiffTraining":
        views, detectors = volumes[0].shape[1:]
        settings = spdiff.TrainingSettings(batch_size=batch_size, seed=seed,
                                           patch_shape=(min(SPDIFF_PATCH, views), min(SPDIFF_PATCH, detectors)),
                                           loss_domain=spdiff.network_profile(profile).domain)
        return cls(spdiff.Trainer(volumes, network=profile, training=settings, device=device), device)

    @classmethod
    def resume(cls, blob: dict[str, Any], volumes: list[np.ndarray], device: str) -> "SPDiffTraining":
        return cls(spdiff.Trainer.from_payload(blob, volumes, device=device), device)

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def settings(self) -> dict[str, Any]:
        return self.trainer.settings

    def fit(self, steps: int, on_step: Callable[[int, float], None]) -> None:
        self.trainer.train(steps, on_step)

    def payload(self) -> dict[str, Any]:
        return self.trainer.state_payload()

    def validate(self, data: ValidationSet) -> Validation:
        """Denoise the validation sinograms with the EMA model, FBP, and score against `fbp_nd`."""
        model = self.trainer.model()
        denoised = [spdiff.denoise_volume(model, x, data.incident_count, seed=run.start, device=self.device)
                    for run, x in zip(data.runs, data.transmission_ld)]
        output = np.concatenate([fbp_hu(transmission_to_line_integrals(x), data.geometry, data.physics) for x in denoised])
        return score(output, data.fbp_ld_hu, data)


class CheckpointingTraining:
    """What the train flow reads of DGDiff's and RED-CNN's trainers, which share step / checkpoint_settings() /
    checkpoint_payload()."""

    trainer: Any

    @property
    def step(self) -> int:
        return self.trainer.step

    @property
    def settings(self) -> dict[str, Any]:
        return self.trainer.checkpoint_settings()

    def payload(self) -> dict[str, Any]:
        return self.trainer.checkpoint_payload()


class DGDiffTraining(CheckpointingTraining):
    """DGDiff training on `fbp_nd` images, behind the interface the train flow uses."""

    kind = "dgdiff"

    def __init__(self, trainer: dgdiff.DGDiffTrainer, images: np.ndarray, device: str) -> None:
        self.trainer, self.images, self.device = trainer, images, device

    @classmethod
    def create(cls, volumes: list[np.ndarray], profile: str, batch_size: int, seed: int, device: str) -> "DGDiffTraining":
        """Random crops (DGDIFF_CROP) and only the steps guided sampling reaches (t < max_reachable_step)."""
        images = np.concatenate(volumes)
        settings = dgdiff.TrainSettings(profile=profile, batch_size=batch_size, seed=seed,
                                        learning_rate=DGDIFF_LEARNING_RATE,
                                        crop_size=dgdiff_crop_size(profile, images.shape[-2:]))
        reachable = dgdiff.max_reachable_step(dgdiff.DiffusionSchedule(settings.schedule), DGDIFF_MAX_SIGMA)
        settings = replace(settings, max_train_step=reachable)
        return cls(dgdiff.DGDiffTrainer(settings, device=device), images, device)

    @classmethod
    def resume(cls, blob: dict[str, Any], volumes: list[np.ndarray], device: str) -> "DGDiffTraining":
        return cls(dgdiff.DGDiffTrainer.from_checkpoint(blob, device=device), np.concatenate(volumes), device)

    def fit(self, steps: int, on_step: Callable[[int, float], None]) -> None:
        self.trainer.fit(self.images, steps, on_step)


    def validate(self, data: ValidationSet) -> Validation:
        """Refine the less noisy FBP guided by the low-dose FBP with the EMA network, and score against `fbp_nd`."""
        blob = {"settings": self.settings, **self.payload()}
        network, schedule = dgdiff.model_from_checkpoint(blob, device=self.device)
        refined = dgdiff.refine(network, data.fbp_ld_hu, data.fbp_init_hu, schedule, seed=0,
                                slice_ids=data.slices, device=self.device)
        return score(refined.images_hu, data.fbp_init_hu, data)


def dgdiff_crop_size(profile: str, image_shape: tuple[int, ...]) -> int | None:
    """DGDiff's training crop: DGDIFF_CROP[profile] (None: full images), shrunk to the images and to a multiple of
    the network's size_multiple."""
    wanted = DGDIFF_CROP[profile]
    if wanted is None:
        return None
    multiple = dgdiff.PROFILES[profile].size_multiple
    crop = min(wanted, *image_shape) // multiple * multiple
    if crop < multiple:
        raise TrainingInputError(f"images {tuple(image_shape)} are too small for DGDiff's {profile!r} profile "
                                 f"(crops must be multiples of {multiple})")
    return crop


class RedCNNTraining(CheckpointingTraining):
    """Supervised RED-CNN training on paired (low-dose FBP, `fbp_nd`) images, behind the interface the train flow
    uses: the one model trained on low-dose data."""

    kind = "redcnn"

    def __init__(self, trainer: redcnn.RedCNNTrainer, data: PairedImages, device: str) -> None:
        self.trainer, self.data, self.device = trainer, data, device

    @classmethod
    def create(cls, data: PairedImages, profile: str, batch_size: int, seed: int, device: str) -> "RedCNNTraining":
        settings = redcnn.TrainSettings(profile=profile, learning_rate=REDCNN_LEARNING_RATE, batch_size=batch_size,
                                        patch_size=min(REDCNN_PATCH, *data.inputs_hu.shape[-2:]),
                                        paired_dose=data.dose, seed=seed)
        return cls(redcnn.RedCNNTrainer(settings, device=device), data, device)

    @classmethod
    def resume(cls, blob: dict[str, Any], data: PairedImages, device: str) -> "RedCNNTraining":
        trainer = redcnn.RedCNNTrainer.from_checkpoint(blob, device=device)
        if trainer.settings.paired_dose is None or abs(trainer.settings.paired_dose - data.dose) > 1e-9:
            raise TrainingInputError(f"the checkpoint was trained at dose {trainer.settings.paired_dose}, "
                                     f"not {data.dose:g}")
        return cls(trainer, data, device)

    def fit(self, steps: int, on_step: Callable[[int, float], None]) -> None:
        self.trainer.fit(self.data.inputs_hu, self.data.targets_hu, steps, on_step)


    def validate(self, data: ValidationSet) -> Validation:
        """Denoise the validation slices' low-dose FBP and score against `fbp_nd`."""
        output = redcnn.denoise_images(self.trainer.model, data.fbp_ld_hu, batch_size=4, device=self.device)
        return score(output, data.fbp_ld_hu, data)


Training = SPDiffTraining | DGDiffTraining | RedCNNTraining
TRAININGS = {"spdiff": SPDiffTraining, "dgdiff": DGDiffTraining, "redcnn": RedCNNTraining}
# archive variables each kind trains on; only RED-CNN reads low-dose scans
TRAINING_DATA = {"spdiff": ("proj_nd",), "dgdiff": ("fbp_nd",), "redcnn": ("fbp_nd", "proj_ld")}


def data_record(archive: Archive, split: TrainingSplit, train_dose: float | None = None) -> dict[str, Any]:
    """What the model was trained on, stored in the checkpoint and checked on resume (with RED-CNN's training dose)."""
    record = {"archive_settings_hash": archive.settings_hash, "train_slices": list(split.train),
              "validation_slices": list(split.validation)}
    return record if train_dose is None else {**record, "train_dose": train_dose}


def start_training(kind: str, profile: str, archive: Archive, split: TrainingSplit, checkpoint: Path, resume: bool,
                   batch_size: int | None, seed: int, device: str,
                   train_dose: float | None = None) -> tuple[Training, str | None]:
    """A new training, or (resume) the one in `checkpoint` continued exactly; returns it and its MLflow run id.

    `train_dose`: RED-CNN's training dose, as `resolve_train_dose` gives it (None for SPDiff and DGDiff).
    `batch_size` None: DEFAULT_BATCH_SIZE of the kind (a resumed training keeps its checkpoint's)."""
    if kind not in TRAININGS:
        raise TrainingInputError(f"unknown model {kind!r}: expected one of {MODEL_KINDS}")
    if profile not in PROFILES:
        raise TrainingInputError(f"unknown profile {profile!r}: expected one of {PROFILES}")
    data = read_training_data(archive, kind, split.train, train_dose)
    if not resume:
        if checkpoint.exists():
            raise TrainingInputError(f"checkpoint {checkpoint} exists: pass --resume to continue it, or choose "
                                     "another --checkpoint")
        batch = DEFAULT_BATCH_SIZE[kind] if batch_size is None else batch_size
        return TRAININGS[kind].create(data, profile, batch, seed, device), None
    blob = load_checkpoint(checkpoint, kind)
    stored, wanted = blob.get("training_data"), data_record(archive, split, train_dose)
    if stored != wanted:
        raise TrainingInputError(f"checkpoint {checkpoint} was trained on other data ({stored}); this run would use "
                                 f"{wanted}")
    return TRAININGS[kind].resume(blob, data, device), blob.get("tracking_run_id") or None


def save_training(training: Training, checkpoint: Path, record: dict[str, Any],
                  run_id: str | None) -> Path:
    """Write the resumable checkpoint (atomic), with what it was trained on and its MLflow run."""
    extra = {"training_data": record, "tracking_run_id": run_id or ""}
    return save_checkpoint(checkpoint, training.kind, training.settings, **training.payload(), **extra)

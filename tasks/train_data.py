"""What a training reads: which studies and slices of a catalog train and validate a model, and their data.

A catalog with a patient-level split (`need split`) trains on every "train" study and validates on the "val"
studies, all of the one shape the model needs (SPDiff: sinogram; DGDiff, RED-CNN: image). A single study without a
split (the bundled head CT) is split by slices instead (`training_split`).

SPDiff (`proj_nd`) and DGDiff (`fbp_nd`) read normal-dose data only, never `proj_ld`. RED-CNN is the supervised
exception: it learns the mapping from the FBP of the training slices' low-dose scans (`proj_ld` at one training
dose) to their normal-dose FBP (`fbp_nd`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from need_core import redcnn
from need_core.physics import transmission_to_line_integrals
from storage.archive import Archive, UnknownDoseError
from storage.catalog import Catalog, StudyRow
from storage.splits import HEAD_CT_SPLIT
from tasks.baselines import RAMP, low_dose_fbp
from tasks.chunking import SliceChunk, contiguous_chunks

MODEL_KINDS = ("spdiff", "dgdiff", "redcnn")
HEAD_CT_SLICES = 108
N_VALIDATION_SLICES = 3
SPDIFF_MIN_SLICES = 2  # SPDiff trains on slice triplets, a run's edge slice mirrored: one slice is not enough
REDCNN_TRAIN_DOSE = 0.25
SPLIT_ADVICE = (
    "assign a patient-level split with `need split CATALOG --test 0.2 --val 0.1`, or name one study with --studies"
)


class TrainingInputError(ValueError):
    """Training was asked for something the catalog or checkpoint cannot give (bad slices, mismatched resume)."""


@dataclass(frozen=True)
class TrainingSplit:
    """Slices that train the model and the few that validate it (`heldout`: disjoint from the training slices)."""

    train: tuple[int, ...]
    validation: tuple[int, ...]
    heldout: bool


@dataclass(frozen=True)
class StudyPart:
    """One study's share of a training: its table row, its archive and the slices it gives."""

    row: StudyRow
    archive: Archive
    slices: tuple[int, ...]


@dataclass(frozen=True)
class TrainingPlan:
    """The studies (and slices) that train and that validate, whether the split is by patient, and the studies left
    out (one line each, for a warning)."""

    train: tuple[StudyPart, ...]
    validation: tuple[StudyPart, ...]
    patient_level: bool
    heldout: bool
    skipped: tuple[str, ...] = ()

    @property
    def train_rows(self) -> list[StudyRow]:
        return [part.row for part in self.train]

    @property
    def validation_rows(self) -> list[StudyRow]:
        return [part.row for part in self.validation]


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
    n_validation: int = N_VALIDATION_SLICES,
) -> TrainingSplit:
    """The bundled head CT uses HEAD_CT_SPLIT (its validation slices lie outside the evaluation slices); other archives
    train on every slice unless told otherwise and validate on `validation_slices` or the middle slices."""
    everything = list(range(archive.n_slices))
    if train_slices is None and validation_slices is None and is_bundled_head_ct(archive):
        return TrainingSplit(HEAD_CT_SPLIT.train, HEAD_CT_SPLIT.validation, True)
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


def plan_training(
    catalog: Catalog,
    kind: str,
    studies: Sequence[str] | None = None,
    train_slices: list[int] | None = None,
    validation_slices: list[int] | None = None,
) -> TrainingPlan:
    """Which studies train and validate `kind`: the "train" and "val" studies of the catalog (or of the named
    `studies`), or the slice-level split of one study (one study named, or a catalog of one study and no split)."""
    if kind not in MODEL_KINDS:
        raise TrainingInputError(f"unknown model {kind!r}: expected one of {MODEL_KINDS}")
    rows = catalog.select(studies=studies)
    if not rows:
        raise TrainingInputError(f"no ingested study in {catalog.path}: run `need ingest` first")
    if (studies is not None and len(rows) == 1) or not any(row.split == "train" for row in rows):
        if len(rows) != 1:
            raise TrainingInputError(
                f"{len(rows)} studies of {catalog.path} and none in the train split: {SPLIT_ADVICE}"
            )
        return single_study_plan(catalog, rows[0], train_slices, validation_slices)
    if train_slices is not None or validation_slices is not None:
        raise TrainingInputError(
            f"{catalog.path} has a patient-level split: training uses every slice of its train studies; "
            "--train-slices / --validation-slices split one study, named with --studies"
        )
    unused = [
        f"study {row.study}: in the {row.split or 'unassigned'} split, neither train nor val"
        for row in rows
        if studies is not None and row.split not in ("train", "val")
    ]
    train = [row for row in rows if row.split == "train"]
    return patient_plan(catalog, kind, train, [row for row in rows if row.split == "val"], unused)


def single_study_plan(
    catalog: Catalog, row: StudyRow, train_slices: list[int] | None, validation_slices: list[int] | None
) -> TrainingPlan:
    """Today's single-scan training: a slice-level split inside the one study."""
    archive = catalog.study(row.study, "r")
    split = training_split(archive, train_slices, validation_slices)
    return TrainingPlan(
        train=(StudyPart(row, archive, split.train),),
        validation=(StudyPart(row, archive, split.validation),),
        patient_level=False,
        heldout=split.heldout,
    )


def patient_plan(
    catalog: Catalog, kind: str, train: list[StudyRow], validation: list[StudyRow], unused: list[str]
) -> TrainingPlan:
    """Every slice of the train studies of the most common shape and the middle slices of the val studies of that
    shape; the studies left out are listed in `skipped` after `unused`."""
    skipped = list(unused)
    if not validation:
        raise TrainingInputError(
            f"no ingested study of {catalog.path} chosen for training is in the val split: assign validation "
            "subjects with `need split CATALOG --val 0.1` (add --reassign to redo an existing split)"
        )
    usable = [row for row in train if kind != "spdiff" or row.slices >= SPDIFF_MIN_SLICES]
    if not usable:
        raise TrainingInputError(
            f"no train study of {catalog.path} has the {SPDIFF_MIN_SLICES} slices SPDiff needs: "
            f"{', '.join(row.study for row in train)}"
        )
    shape = most_common_shape(kind, usable)
    what = "sinogram" if kind == "spdiff" else "image"
    for row in train + validation:
        if model_shape(kind, row) != shape:
            found = shape_text(model_shape(kind, row))
            skipped.append(f"study {row.study} ({row.split}): {what} {found}, not {shape_text(shape)}")
        elif row.split == "train" and row not in usable:
            skipped.append(f"study {row.study} (train): {row.slices} slice, SPDiff needs {SPDIFF_MIN_SLICES}")
    # by key, so the data (and an exactly resumed training) never depends on the table's row order
    train = sorted((row for row in usable if model_shape(kind, row) == shape), key=lambda row: row.study)
    validation = sorted((row for row in validation if model_shape(kind, row) == shape), key=lambda row: row.study)
    if not validation:
        raise TrainingInputError(
            f"no val study of {catalog.path} has the {what} shape {shape_text(shape)} of the training studies: "
            "assign one of that shape with `need split`"
        )
    middle = [tuple(middle_run(list(range(row.slices)), N_VALIDATION_SLICES)) for row in validation]
    return TrainingPlan(
        train=tuple(StudyPart(row, catalog.study(row.study, "r"), tuple(range(row.slices))) for row in train),
        validation=tuple(
            StudyPart(row, catalog.study(row.study, "r"), slices)
            for row, slices in zip(validation, middle, strict=True)
        ),
        patient_level=True,
        heldout=True,
        skipped=tuple(skipped),
    )


def model_shape(kind: str, row: StudyRow) -> tuple[int, int]:
    """The shape `kind` is built for: SPDiff the sinogram (views, detectors), DGDiff and RED-CNN the image."""
    return row.sinogram_shape if kind == "spdiff" else row.image_shape


def most_common_shape(kind: str, rows: list[StudyRow]) -> tuple[int, int]:
    """The model shape shared by most studies (ties: by their slices, then the larger shape)."""
    groups: dict[tuple[int, int], list[StudyRow]] = {}
    for row in rows:
        groups.setdefault(model_shape(kind, row), []).append(row)
    return max(groups, key=lambda shape: (len(groups[shape]), sum(row.slices for row in groups[shape]), shape))


def shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


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
            raise TrainingInputError(
                f"{var} of slices {run.label} of {archive.path} holds NaN/inf (not ingested?): run `need ingest`"
            )
    return runs


def resolve_train_dose(kind: str, train_dose: float | None, plan: TrainingPlan) -> float | None:
    """RED-CNN's training dose (REDCNN_TRAIN_DOSE unless given), which every training study must hold; None for
    SPDiff and DGDiff, which train on normal-dose data only and refuse a training dose."""
    if kind not in MODEL_KINDS:
        raise TrainingInputError(f"unknown model {kind!r}: expected one of {MODEL_KINDS}")
    if kind != "redcnn":
        if train_dose is not None:
            raise TrainingInputError(f"a training dose applies to redcnn only: {kind} trains on normal-dose data")
        return None
    dose = REDCNN_TRAIN_DOSE if train_dose is None else float(train_dose)
    for part in plan.train:
        try:
            part.archive.dose_index(dose)
        except UnknownDoseError:
            raise TrainingInputError(
                f"training dose {dose:g} is not a dose of the archive {part.archive.path}: it holds "
                f"low-dose scans at {', '.join(f'{d:g}' for d in part.archive.doses) or 'no dose'}; "
                "choose one of them with --train-dose (or add it with `need ingest --doses`)"
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
                f"proj_ld of slices {run.label} of {archive.path} at dose {dose:g} holds NaN/inf (not ingested?): "
                "run `need ingest`"
            )
        images.append(low_dose_fbp(archive, transmission_to_line_integrals(transmission), RAMP))
    return images


TrainingData = list[np.ndarray] | np.ndarray | redcnn.PairedImages


def read_training_data(plan: TrainingPlan, kind: str, train_dose: float | None) -> TrainingData:
    """The data `kind`'s trainer is built on, from every training study (so samples come from each in proportion to
    its slices): SPDiff the `proj_nd` runs, DGDiff the `fbp_nd` images, RED-CNN the FBP of `proj_ld` at
    `train_dose` paired with `fbp_nd`."""
    if kind == "spdiff":
        return [run for part in plan.train for run in read_normal_dose(part.archive, "proj_nd", part.slices)]
    targets = np.concatenate(
        [image for part in plan.train for image in read_normal_dose(part.archive, "fbp_nd", part.slices)]
    )
    if kind == "dgdiff":
        return targets
    if train_dose is None:
        raise TrainingInputError("redcnn needs a training dose")
    inputs = [image for part in plan.train for image in read_low_dose_fbp(part.archive, train_dose, part.slices)]
    return redcnn.PairedImages(inputs_hu=np.concatenate(inputs), targets_hu=targets)

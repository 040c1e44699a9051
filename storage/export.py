"""Export results out of the catalog: a derived DICOM CT series (or a NIfTI file) per study x method x dose.

    export_results("outputs/cohort.zarr", "exports", method="need", dose=0.25, split="test")
    # exports/<study>/need_0.25/IM0001.dcm ...   (nifti: exports/<study>/need_0.25.nii.gz)
    # exports/manifest.json: every series exported into exports/, with its study, method, dose, UIDs and slices

Only slices whose result is done in the ledger are exported, each at its own position. Every user error (unknown
method or dose, nothing reconstructed yet, an output that exists) is found before anything is written. Each series
is built in a hidden sibling and renamed into place once complete; --overwrite swaps the old one out only then.

The exported patient is the study key (PatientID and PatientName); the catalog holds no source identifier, date or
UID, so none can leak. The Study Instance UID and Frame of Reference UID derive from the study key, so every
method and dose exported from one study lands in one study on a PACS, on one frame of reference; series and
instance UIDs are new on each export. Geometry comes from the study's source attrs (`orientation`, `origin_mm`,
recorded by the DICOM reader); other sources are exported as axial slices centred on the z axis, at z_mm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from storage.archive import Archive
from storage.catalog import open_catalog
from storage.dicom_series_writer import DerivedSeries, Rescale, SliceGrid, derived_ct_header, write_ct_slices
from storage.errors import ArchiveError, UnknownDoseError
from storage.export_methods import (
    METHODS,
    ExportMethod,
    derivation_description,
    series_description,
    series_number,
)
from storage.ledger import DONE
from storage.nifti_writer import write_nifti
from storage.placement import place_built

FORMATS = ("dicom", "nifti")
MANIFEST = "manifest.json"


class ExportError(ValueError):
    """A user error of an export: unknown method or dose, nothing reconstructed yet, an output that exists."""


@dataclass(frozen=True)
class ExportedSeries:
    """One exported series: where it is, what it holds."""

    study: str  # the study key
    method: str
    dose: float | None
    path: Path  # the series folder (dicom) or the .nii.gz file (nifti)
    files: list[Path]  # the DICOM files (or [path] for nifti)
    series_uid: str | None
    slices: int  # exported slices
    total_slices: int  # slices of the study


@dataclass(frozen=True)
class _Plan:
    """One series to write: the study, its done slices, the target path."""

    study: str
    archive: Archive
    slices: list[int]
    target: Path


def export_results(
    catalog: str | os.PathLike,
    out_dir: str | os.PathLike,
    method: str,
    dose: float | None,
    studies: Sequence[str] | None = None,
    split: str | None = None,
    fmt: str = "dicom",
    overwrite: bool = False,
) -> list[ExportedSeries]:
    """Write `method` (at `dose` for a per-dose result) of the chosen studies (`studies`, or the `split`, or every
    ingested study) under out_dir/<study>/<method>_<dose>/ (DICOM) or out_dir/<study>/<method>_<dose>.nii.gz."""
    spec = _check_request(method, dose, fmt, studies, split)
    out = Path(out_dir)
    try:
        store = open_catalog(catalog)
        keys = [row.study for row in store.select(split=split, studies=studies)]
        if not keys:
            raise ExportError(f"{catalog} holds no ingested study: run `need ingest` first")
        plans = [_plan(store.study(key, "r"), key, spec, dose, out, fmt, catalog) for key in keys]
    except (ArchiveError, FileNotFoundError) as err:
        raise ExportError(str(err)) from None
    existing = [str(plan.target) for plan in plans if plan.target.exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{', '.join(existing)} already exist(s): pass --overwrite to replace, or choose another OUTDIR"
        )
    created = datetime.now(UTC).replace(microsecond=0)
    exported = []
    for plan in plans:
        try:
            write = _write_dicom if fmt == "dicom" else _write_nifti
            exported.append(write(plan, spec, dose, created, overwrite))
        except FileExistsError as err:
            raise ExportError(str(err)) from None
        _update_manifest(out, exported[-1], fmt, created)
    return exported


def _check_request(
    method: str, dose: float | None, fmt: str, studies: Sequence[str] | None, split: str | None
) -> ExportMethod:
    """The method's spec, once the arguments that need no catalog are checked."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if method not in METHODS:
        raise ExportError(f"unknown method {method!r}: a catalog holds {', '.join(METHODS)}")
    if studies is not None and split is not None:
        raise ExportError("give --studies or --split, not both")
    spec = METHODS[method]
    if not spec.per_dose and dose is not None:
        raise ExportError(f"`{method}` ({spec.what}) has no dose: leave out --dose")
    return spec


def _plan(
    archive: Archive, key: str, spec: ExportMethod, dose: float | None, out: Path, fmt: str, catalog: str | os.PathLike
) -> _Plan:
    """What to export of one study; ExportError when it holds no such dose or nothing done at it."""
    if spec.per_dose:
        if dose is None:
            raise ExportError(f"`{spec.name}` is stored per dose: pass --dose, one of {_doses(archive)}")
        try:
            archive.dose_index(dose)
        except UnknownDoseError:
            raise ExportError(f"study {key} holds no dose {dose:g}: its doses are {_doses(archive)}") from None
    if spec.ledger is None:
        slices = list(range(archive.n_slices))
    else:
        states = archive.ledger(spec.ledger, dose=dose if spec.per_dose else None)
        slices = [int(s) for s in np.flatnonzero(states == DONE)]
    if not slices:
        at = f" at dose {dose:g}" if dose is not None else ""
        run = f"need reconstruct {catalog} --doses {dose:g} ..." if spec.per_dose else f"need ingest ... {catalog}"
        raise ExportError(f"no `{spec.name}` results{at} yet in study {key}: run `{run}`")
    name = f"{spec.name}_{dose:g}" if dose is not None else spec.name
    return _Plan(key, archive, slices, out / key / (name + (".nii.gz" if fmt == "nifti" else "")))


def _doses(archive: Archive) -> str:
    return ", ".join(f"{held:g}" for held in archive.doses) or "none (ingest with --doses)"


def _write_dicom(
    plan: _Plan, spec: ExportMethod, dose: float | None, created: datetime, overwrite: bool
) -> ExportedSeries:
    """The plan's done slices as one derived CT series folder."""
    hu = _read_checked(plan, spec, dose, plan.slices)
    producers = _producers(plan, spec, dose)
    header = derived_ct_header(
        DerivedSeries(
            patient=plan.study,
            study_uid=generate_uid(entropy_srcs=["need-export", "study", plan.study]),
            frame_of_reference_uid=generate_uid(entropy_srcs=["need-export", "frame-of-reference", plan.study]),
            series_number=series_number(spec, dose),
            series_description=series_description(spec, dose, producers),
            derivation_description=derivation_description(spec, dose, plan.archive.settings["physics"], producers),
            convolution_kernel=spec.kernel,
            created=created,
            software_version=_version(),
        )
    )
    names = [f"IM{s + 1:04d}.dcm" for s in plan.slices]
    grid = study_grid(plan.archive, plan.slices)
    place_built(
        plan.target,
        lambda staging: write_ct_slices(
            staging, hu, grid, header, Rescale.fit(hu), file_names=names, instance_numbers=[s + 1 for s in plan.slices]
        ),
        overwrite,
    )
    return ExportedSeries(
        plan.study,
        spec.name,
        dose,
        plan.target,
        [plan.target / name for name in names],
        str(header.SeriesInstanceUID),
        len(plan.slices),
        plan.archive.n_slices,
    )


def _write_nifti(
    plan: _Plan, spec: ExportMethod, dose: float | None, created: datetime, overwrite: bool
) -> ExportedSeries:
    """The span of the plan's done slices as one NIfTI volume (slices not done inside it are NaN)."""
    span = list(range(plan.slices[0], plan.slices[-1] + 1))
    hu = np.full((len(span), *plan.archive.settings["image_shape"][1:]), np.nan, dtype=np.float32)
    hu[[s - span[0] for s in plan.slices]] = _read_checked(plan, spec, dose, plan.slices)
    description = series_description(spec, dose, _producers(plan, spec, dose))
    grid = study_grid(plan.archive, span)
    place_built(plan.target, lambda staging: write_nifti(staging, hu, grid, description), overwrite)
    return ExportedSeries(
        plan.study, spec.name, dose, plan.target, [plan.target], None, len(plan.slices), plan.archive.n_slices
    )


def _read_checked(plan: _Plan, spec: ExportMethod, dose: float | None, slices: list[int]) -> np.ndarray:
    """The HU of `slices` (one read of their span); a done slice without data is an error naming it."""
    lo, hi = slices[0], slices[-1] + 1
    block = plan.archive.read(spec.name, lo, hi, dose=dose if spec.per_dose else None)
    hu = block if len(slices) == hi - lo else block[[s - lo for s in slices]]
    empty = [s for s, image in zip(slices, hu, strict=True) if not np.isfinite(image).all()]
    if empty:
        raise ExportError(
            f"study {plan.study}: slices {empty} of `{spec.name}` are marked done but hold no data (NaN): the "
            "catalog is damaged; mark them pending in the ledger, rerun `need reconstruct`, then export again"
        )
    return hu


def _producers(plan: _Plan, spec: ExportMethod, dose: float | None) -> list[str]:
    """What produced the plan's slices (the reconstruct ledger's produced_by); [] for ingest data."""
    if spec.ledger != "reconstruct":
        return []
    produced = plan.archive.produced_by("reconstruct", dose=dose)
    return [produced[s] for s in plan.slices]


def study_grid(archive: Archive, slices: Sequence[int]) -> SliceGrid:
    """Where `slices` of a study lie: the source's orientation and origin (DICOM), else axial slices centred on the
    z axis; ImagePositionPatient · normal is the slice's z_mm either way."""
    z_mm = np.asarray(archive.dataset["z_mm"].values, dtype=np.float64)[list(slices)]
    dz, dy, dx = archive.spacing_mm
    source = archive.attrs.get("source") or {}
    orientation, origin = _floats(source.get("orientation"), 6), _floats(source.get("origin_mm"), 3)
    if orientation is not None and origin is not None:
        return SliceGrid.along_normal(z_mm, origin, orientation, (dy, dx), dz)
    ny, nx = archive.settings["image_shape"][1:]
    return SliceGrid.centred_axial(z_mm, (int(ny), int(nx)), (dy, dx), dz)


def _floats(value: object, count: int) -> list[float] | None:
    """`value` as `count` finite floats, or None when it is anything else (absent, wrong length, not numbers)."""
    if not isinstance(value, list | tuple) or len(value) != count:
        return None
    try:
        floats = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return floats if all(np.isfinite(floats)) else None


def _version() -> str:
    try:
        return f"need-pipeline {metadata.version('need-pipeline')}"
    except metadata.PackageNotFoundError:
        return ""


def _update_manifest(out: Path, series: ExportedSeries, fmt: str, created: datetime) -> None:
    """Add (or replace) the series' entry in out/manifest.json, written atomically."""
    path = out / MANIFEST
    try:
        entries = json.loads(path.read_text()).get("series", [])
    except (OSError, ValueError, AttributeError):
        entries = []
    relative = str(series.path.relative_to(out))
    entry = {
        "path": relative,
        "study": series.study,
        "method": series.method,
        "dose": series.dose,
        "format": fmt,
        "series_uid": series.series_uid,
        "slices": series.slices,
        "total_slices": series.total_slices,
        "exported": created.isoformat().replace("+00:00", "Z"),
    }
    entries = [old for old in entries if isinstance(old, dict) and old.get("path") != relative] + [entry]
    staging = out / f".{MANIFEST}.{os.getpid()}"
    staging.write_text(json.dumps({"series": entries}, indent=1) + "\n")
    os.replace(staging, path)

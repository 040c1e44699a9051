"""Source discovery for cohort ingest: every CT study in the given files and folders, one study per axial CT series.

DICOM files are grouped by SeriesInstanceUID from their headers alone (pixels are decoded only by read_series);
.inv3, .nii/.nii.gz and .npy files are one study each. Non-CT, scout/localizer and non-axial series, and copies of
a series already found, are skipped with a reason. Studies and patients are known by salted keys (storage.deid).
Labels, for messages only, are paths relative to the SRC in which every folder or file name holding a patient's
ID, name or a date from the headers, or a UID, is replaced by the subject key (or "[redacted]").

    found = discover_series(["/data/cohort", "/data/extra/ct.nii.gz"])
    volumes = [read_series(series) for series in found.series]
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from storage import readers
from storage.deid import study_key, subject_key
from storage.dicom_series_writer import MANUFACTURER
from storage.readers.base import ReaderError
from storage.readers.dicom import patient_subject_key, read_dicom_files
from storage.source_files import volume_format
from storage.volume import Volume

LOGGER = logging.getLogger(__name__)
AXIAL_TOLERANCE_DEG = 10.0
SCOUT_IMAGE_TYPES = frozenset({"LOCALIZER", "SCOUT"})
# Header values scrubbed out of labels (folder names often carry them); UIDs are caught by UID_PATTERN instead.
LABEL_IDENTIFIERS = ("PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "AccessionNumber", "StudyID")
UID_PATTERN = re.compile(r"\d+(\.\d+){3,}")
MIN_SUBSTRING_TOKEN = 3  # shorter identifiers are redacted only where a whole name equals them
REDACTED = "[redacted]"


@dataclass(frozen=True)
class SeriesSource:
    """One study found by discover_series: its salted `key`, a de-identified `label` for messages (never stored),
    `format` ("dicom", "inv3", "nifti", "npy"), its `files` and the patient's `subject_key`."""

    key: str
    label: str
    format: str
    files: tuple[Path, ...]
    subject_key: str


@dataclass
class Discovery:
    """What discover_series found: the `series` (unique by key, sorted by label), and one de-identified line per
    series `skipped` (with why) and per file `unreadable` (DICOM whose header cannot be parsed)."""

    series: list[SeriesSource] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


class _Found(NamedTuple):
    """A file found under a SRC: its path, its path parts relative to the SRC, and the SRC's own name."""

    path: Path
    parts: tuple[str, ...]
    src_name: str

    @property
    def folder(self) -> tuple[str, ...]:
        """The label parts of the folder holding the file: relative to the SRC, or the SRC's name at its top."""
        return self.parts[:-1] or (self.src_name,)


class _Header(NamedTuple):
    """The facts of one DICOM header that discovery needs; raw identifiers are kept only to be scrubbed."""

    found: _Found
    series_uid: str
    sop_uid: str
    modality: str
    is_image: bool
    image_type: frozenset[str]
    orientation: tuple[float, ...] | None
    series_number: str
    subject: str
    identifiers: tuple[str, ...]
    made_by_need: bool  # a series `need export` / `need push` wrote (Manufacturer): a result, not an acquisition


def discover_series(sources: Sequence[str | os.PathLike]) -> Discovery:
    """Find every CT study in the given files and folders (walked recursively), reading DICOM headers only.

    A SRC that does not exist, or a SRC file that is neither DICOM nor a volume file, raises ReaderError.
    """
    volumes: list[tuple[_Found, str]] = []
    headers: list[_Header] = []
    unreadable: list[tuple[_Found, str]] = []
    ignored = 0
    for found, explicit in _walk(sources):
        fmt = volume_format(found.path)
        if fmt is not None:
            volumes.append((found, fmt))
            continue
        try:
            dataset = _read_header(found.path)
        except ReaderError as err:
            unreadable.append((found, str(err)))
            continue
        if dataset is None and explicit:
            raise ReaderError(f"{found.path.name}: not a DICOM file; expected {readers.SUPPORTED}")
        if dataset is None:
            ignored += 1
        else:
            headers.append(_header(found, dataset))
    if ignored:
        LOGGER.info("ignored %d files that are neither DICOM nor volume files", ignored)
    vocabulary = _vocabulary(headers)
    discovery = Discovery()
    _add_dicom_series(headers, vocabulary, discovery)
    _add_volume_files(volumes, vocabulary, discovery)
    discovery.unreadable = sorted(f"{_label(found.parts, vocabulary)}: {why}" for found, why in unreadable)
    for line in discovery.unreadable:
        LOGGER.warning("unreadable: %s", line)
    discovery.series.sort(key=lambda series: (series.label, series.key))
    discovery.skipped.sort()
    LOGGER.info(
        "found %d studies (%d series skipped, %d files unreadable)",
        len(discovery.series),
        len(discovery.skipped),
        len(discovery.unreadable),
    )
    return discovery


def read_series(series: SeriesSource, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
    """Read one discovered study (pixels decoded here) as a Volume carrying the series' subject key.

    `spacing_mm` is as for read_volume (required for .npy). Any failure, corrupt or truncated data included,
    raises ReaderError naming the series label.
    """
    try:
        if series.format == "dicom":
            volume = read_dicom_files(series.files, series.label)
            if spacing_mm is not None:
                volume = readers.with_spacing(volume, spacing_mm)
        else:
            volume = readers.read_volume(series.files[0], spacing_mm)
    except ReaderError as err:
        message = str(err)
        raise ReaderError(message if message.startswith(series.label) else f"{series.label}: {message}") from None
    except Exception as err:  # decoders and header parsers raise many types; the caller needs one
        raise ReaderError(f"{series.label}: cannot be read ({type(err).__name__})") from None
    if volume.subject_key == series.subject_key:
        return volume
    return dataclasses.replace(volume, subject_key=series.subject_key)


def _walk(sources: Sequence[str | os.PathLike]) -> Iterable[tuple[_Found, bool]]:
    """Every file of the SRCs once (by resolved path, first SRC wins), with whether it was given as a SRC itself."""
    seen: set[Path] = set()
    for source in sources:
        root = Path(source)
        if not root.exists():
            raise ReaderError(f"{root} does not exist; expected a folder or a file ({readers.SUPPORTED})")
        if root.is_dir():
            files = sorted(path for path in root.rglob("*") if path.is_file())
            found = [(_Found(path, path.relative_to(root).parts, root.name), False) for path in files]
        else:
            found = [(_Found(root, (root.name,), root.name), True)]
        for item in found:
            resolved = item[0].path.resolve()
            if resolved not in seen:
                seen.add(resolved)
                yield item


def _read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file (pixels not read), None for a non-DICOM file or one without a series (DICOMDIR);
    ReaderError (without any header value) when a DICOM file's header cannot be parsed."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return _read_without_preamble(path)
    except Exception as err:  # pydicom raises many types on truncated or malformed headers
        raise ReaderError(f"DICOM header cannot be parsed ({type(err).__name__})") from None
    meta = getattr(dataset, "file_meta", None)
    sop_class = dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    if sop_class is not None and "Image Storage" in sop_class.name:
        missing = [keyword for keyword in ("SeriesInstanceUID", "Rows") if keyword not in dataset]
        if missing:
            raise ReaderError(f"DICOM image header is incomplete (truncated?): no {' or '.join(missing)}")
    return dataset if "SeriesInstanceUID" in dataset else None


def _read_without_preamble(path: Path) -> Dataset | None:
    """Some scanners write DICOM without the 128-byte preamble: accept such a file only if it reads as an image."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        looks_like_image = all(keyword in dataset for keyword in ("Modality", "Rows", "SeriesInstanceUID"))
    except Exception:  # an arbitrary non-DICOM file may fail in any way under force=True
        return None
    return dataset if looks_like_image else None


def _header(found: _Found, dataset: Dataset) -> _Header:
    """The facts discovery needs from one parsed header."""
    try:
        orientation: tuple[float, ...] | None = tuple(float(v) for v in dataset.get("ImageOrientationPatient") or ())
    except (TypeError, ValueError):
        orientation = None
    name = str(dataset.get("PatientName") or "")
    image_type = dataset.get("ImageType") or []
    return _Header(
        found=found,
        series_uid=str(dataset.SeriesInstanceUID),
        sop_uid=str(dataset.get("SOPInstanceUID") or found.path),
        modality=str(dataset.get("Modality") or "missing"),
        is_image="Rows" in dataset,
        image_type=frozenset(str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)),
        orientation=orientation if orientation and len(orientation) == 6 else None,
        series_number=str(dataset.get("SeriesNumber") or ""),
        subject=patient_subject_key(dataset, str(dataset.SeriesInstanceUID)),
        identifiers=(name, *re.split(r"[\^= ]+", name), *(str(dataset.get(kw) or "") for kw in LABEL_IDENTIFIERS)),
        made_by_need=str(dataset.get("Manufacturer") or "") == MANUFACTURER,
    )


def _add_dicom_series(headers: list[_Header], vocabulary: dict[str, set[str]], discovery: Discovery) -> None:
    """Group headers by series, drop folder copies and repeated instances, and keep the axial CT image series."""
    by_series: dict[str, dict[Path, list[_Header]]] = defaultdict(lambda: defaultdict(list))
    for header in headers:
        by_series[header.series_uid][header.found.path.parent].append(header)
    for uid, folders in by_series.items():
        subject = min((unit[0] for unit in folders.values()), key=_path).subject
        units = sorted(
            ((_series_label(unit[0], vocabulary, subject), sorted(unit, key=_path)) for unit in folders.values()),
            key=lambda item: (item[0], str(_path(item[1][0]))),
        )
        label = units[0][0]
        kept: dict[str, _Header] = {}
        for unit_label, unit in units:
            new: dict[str, _Header] = {}
            for header in unit:
                if header.sop_uid not in kept:
                    new.setdefault(header.sop_uid, header)
            if not new:
                _skip(discovery, f"{unit_label}: duplicate of {label}")
                continue
            if len(new) < len(unit):
                LOGGER.warning(
                    "%s: %d file(s) repeat an instance already found; kept one of each", label, len(unit) - len(new)
                )
            kept.update(new)
        images = sorted((header for header in kept.values() if header.is_image), key=_path)
        why = _why_not_axial_ct(images)
        if why:
            _skip(discovery, f"{label}: {why}")
            continue
        key = study_key("dicom-series", uid)
        files = tuple(header.found.path for header in images)
        discovery.series.append(SeriesSource(key, label, "dicom", files, subject))


def _path(header: _Header) -> Path:
    return header.found.path


def _why_not_axial_ct(images: list[_Header]) -> str:
    """Why a series is not an axial CT image series ("" when it is)."""
    if not images:
        return "non-image DICOM (no pixel rows); only CT images are ingested"
    modalities = sorted({image.modality for image in images})
    if modalities != ["CT"]:
        return f"modality {', '.join(modalities)}; only CT is ingested"
    if any(image.image_type & SCOUT_IMAGE_TYPES for image in images):
        return "localizer/scout series (ImageType)"
    if any(image.made_by_need for image in images):
        return "a NEED reconstruction written by `need export`/`need push` (Manufacturer); only scans are ingested"
    orientation = images[0].orientation
    if orientation is None:
        return "no ImageOrientationPatient; cannot tell whether it is axial"
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / norm)))) if norm > 1e-6 else 90.0
    if angle > AXIAL_TOLERANCE_DEG:
        return f"not axial: slice normal {angle:.0f} degrees from the patient z axis"
    return ""


def _add_volume_files(volumes: list[tuple[_Found, str]], vocabulary: dict[str, set[str]], discovery: Discovery) -> None:
    """One study per volume file, keyed by a salted hash of its bytes; a byte copy of one already found is skipped."""
    first_label: dict[str, str] = {}
    for label, found, fmt, digest in sorted(
        (_label(found.parts, vocabulary), found, fmt, _sha256(found.path)) for found, fmt in volumes
    ):
        key = study_key("file", digest)
        if key in first_label:
            _skip(discovery, f"{label}: duplicate of {first_label[key]}")
            continue
        first_label[key] = label
        discovery.series.append(SeriesSource(key, label, fmt, (found.path,), subject_key("file", digest)))


def _sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _skip(discovery: Discovery, line: str) -> None:
    discovery.skipped.append(line)
    LOGGER.warning("skipped %s", line)


def _vocabulary(headers: list[_Header]) -> dict[str, set[str]]:
    """Normalised identifying values of every header (IDs, name parts, dates) -> the subject keys they belong to."""
    vocabulary: dict[str, set[str]] = defaultdict(set)
    for header in headers:
        for value in header.identifiers:
            token = _normalise(value)
            if token:
                vocabulary[token].add(header.subject)
    return vocabulary


def _normalise(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _series_label(header: _Header, vocabulary: dict[str, set[str]], subject: str) -> str:
    """The label of a DICOM series: its folder (de-identified), with the series number if any."""
    label = _label(header.found.folder, vocabulary, subject)
    return f"{label} (series {header.series_number})" if header.series_number else label


def _label(parts: tuple[str, ...], vocabulary: dict[str, set[str]], subject: str | None = None) -> str:
    """The path parts joined by "/", each de-identified by _scrub."""
    return "/".join(_scrub(part, vocabulary, subject) for part in parts)


def _scrub(part: str, vocabulary: dict[str, set[str]], subject: str | None) -> str:
    """A folder or file name as it is, or "[uid]" if it holds a UID, or `subject` (when the identifier is that
    subject's) or "[redacted]" if it holds an identifier of the vocabulary (whole, or any piece of 3+ characters)."""
    if UID_PATTERN.search(part):
        return "[uid]"
    token = _normalise(part)
    pieces = {token} | {token[i:j] for i in range(len(token)) for j in range(i + MIN_SUBSTRING_TOKEN, len(token) + 1)}
    owners = set().union(*(vocabulary.get(piece, set()) for piece in pieces))
    if not owners:
        return part
    return subject if subject is not None and subject in owners else REDACTED

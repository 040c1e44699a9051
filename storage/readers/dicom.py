"""DICOM CT series: files in any order, sorted by position along the slice normal, rescaled to HU, de-identified.

A folder is searched recursively. Files that are not DICOM images (other files, DICOMDIR, reports without
pixels) are skipped with one logged warning giving their count, recorded as source["n_skipped"]. Everything
else must form one CT series of equal-sized, equally spaced, single-frame slices, or a ReaderError says what
differs. Pixels are decoded in every transfer syntax common in CT exports (storage.readers.dicom_pixels); a slice
that cannot be decoded raises one ReaderError naming the file, the transfer syntax and, where one helps, the
package to install.

No identifying tag value (see storage.deid.IDENTIFYING_KEYWORDS) is copied out of a file or put into a message:
the subject is the patient's pseudonym, a salted hash of PatientID (of StudyInstanceUID, then SeriesInstanceUID,
when PatientID is empty), so every study of one patient has the same subject key. The source dict holds only
format facts and the series geometry the exporter needs: "orientation" (ImageOrientationPatient, 6 floats) and
"origin_mm" (ImagePositionPatient of the first slice in sorted order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError

from storage.deid import subject_key
from storage.readers.base import ReaderError, checked_volume
from storage.readers.dicom_pixels import slice_hu, transfer_syntax_name
from storage.volume import Volume

LOGGER = logging.getLogger(__name__)
ORIENTATION_TOLERANCE = 1e-4
DUPLICATE_TOLERANCE_MM = 1e-3
SPACING_TOLERANCE_MM = 1e-3


def read_dicom_folder(folder: Path) -> Volume:
    """Read the single CT series stored (recursively) under `folder`."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if not files:
        raise ReaderError(f"{folder.name}: the folder holds no files; expected one DICOM CT series")
    return read_dicom_files(files, folder.name)


def read_dicom_files(files: Sequence[Path], label: str) -> Volume:
    """Read the given files as one CT series (`label` names it in messages); non-DICOM files are skipped."""
    images = [image for image in (_read_image(path) for path in files) if image is not None]
    skipped = len(files) - len(images)
    if skipped:
        LOGGER.warning("%s: skipped %d of %d files that are not DICOM images", label, skipped, len(files))
    if not images:
        raise ReaderError(f"{label}: none of its {len(files)} files is a DICOM image; expected one CT series")
    _check_same_series(images, label)
    ordered, positions = _sort_along_normal(images, label)
    rows, columns, pixel_spacing = _check_same_grid(ordered, label)
    dz = _slice_spacing(ordered, positions, label)
    hu = np.stack([slice_hu(image) for image in ordered])
    source = {
        "format": "dicom",
        "modality": "CT",
        "n_files": len(images),
        "n_skipped": skipped,
        "transfer_syntaxes": sorted({transfer_syntax_name(image) for image in images}),
        "orientation": [float(v) for v in ordered[0].ImageOrientationPatient],
        "origin_mm": [float(v) for v in ordered[0].ImagePositionPatient],
    }
    spacing = (dz, pixel_spacing[0], pixel_spacing[1])
    return checked_volume(Path(label), hu, spacing, positions, patient_subject_key(ordered[0], label), source)


def patient_subject_key(dataset: Dataset, fallback: str) -> str:
    """The patient pseudonym of a DICOM file: subject_key of PatientID, else of StudyInstanceUID, else of
    SeriesInstanceUID, else of `fallback` (e.g. the series label)."""
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(dataset.get(keyword) or "")
        if value:
            return subject_key(value)
    return subject_key(fallback)


def _read_image(path: Path) -> FileDataset | None:
    """The dataset of a DICOM image file, or None for a file that is not a DICOM image; corrupt DICOM raises."""
    try:
        dataset: FileDataset | None = pydicom.dcmread(path)
    except InvalidDicomError:
        dataset = _read_without_preamble(path)
    except Exception as err:  # pydicom raises many types on truncated headers
        raise ReaderError(f"{path.name}: DICOM file is corrupt or truncated: {type(err).__name__}: {err}") from None
    if dataset is None:
        return None
    if "PixelData" not in dataset:
        if _claims_to_be_an_image(dataset):
            raise ReaderError(f"{path.name}: DICOM image without pixel data (truncated file?)")
        return None
    return dataset


def _claims_to_be_an_image(dataset: FileDataset) -> bool:
    """True for a dataset whose SOP class is an image storage class or that describes pixel rows."""
    meta = getattr(dataset, "file_meta", None)
    sop_class = dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return "Rows" in dataset or (sop_class is not None and "Image Storage" in sop_class.name)


def _read_without_preamble(path: Path) -> FileDataset | None:
    """Some scanners write DICOM without the 128-byte preamble: accept such a file only if it reads as an image."""
    try:
        dataset = pydicom.dcmread(path, force=True)
        looks_like_image = "PixelData" in dataset and "Modality" in dataset and "Rows" in dataset
    except Exception:  # an arbitrary non-DICOM file may fail in any way under force=True
        return None
    return dataset if looks_like_image else None


def _check_same_series(images: list[FileDataset], label: str) -> None:
    """One series, of CT, single-frame: other modalities, mixed series or multi-frame files are refused."""
    modalities = sorted({str(image.get("Modality", "missing")) for image in images})
    if modalities != ["CT"]:
        raise ReaderError(f"{label}: modality {', '.join(modalities)}; expected CT only")
    for key, what in (("SeriesInstanceUID", "series"), ("PatientID", "patients"), ("StudyInstanceUID", "studies")):
        if len({str(image.get(key, "")) for image in images}) > 1:
            raise ReaderError(f"{label}: the files belong to more than one {what} ({key} differs); give one series")
    if any(int(image.get("NumberOfFrames", 1) or 1) > 1 for image in images):
        raise ReaderError(f"{label}: multi-frame DICOM is not supported; expected one slice per file")


def _sort_along_normal(images: list[FileDataset], label: str) -> tuple[list[FileDataset], np.ndarray]:
    """Images sorted by ImagePositionPatient projected on the slice normal, with those positions (mm)."""
    try:
        orientations = np.array([[float(v) for v in image.ImageOrientationPatient] for image in images])
        origins = np.array([[float(v) for v in image.ImagePositionPatient] for image in images])
    except (AttributeError, TypeError, ValueError):
        raise ReaderError(f"{label}: every slice needs ImageOrientationPatient and ImagePositionPatient") from None
    if orientations.shape[1:] != (6,) or origins.shape[1:] != (3,):
        raise ReaderError(f"{label}: ImageOrientationPatient needs 6 values and ImagePositionPatient 3")
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        raise ReaderError(f"{label}: slices have different ImageOrientationPatient; expected one orientation")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise ReaderError(f"{label}: ImageOrientationPatient rows and columns are not orthonormal")
    positions = origins @ normal
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    gaps = np.diff(positions)
    if (gaps < DUPLICATE_TOLERANCE_MM).any():
        where = float(positions[1:][gaps < DUPLICATE_TOLERANCE_MM][0])
        raise ReaderError(f"{label}: two slices share the position {where:.3f} mm along the normal (duplicates)")
    return [images[i] for i in order], positions


def _check_same_grid(images: list[FileDataset], label: str) -> tuple[int, int, tuple[float, float]]:
    """Rows, Columns and PixelSpacing (dy, dx) shared by every slice."""
    sizes = {(int(image.Rows), int(image.Columns)) for image in images}
    if len(sizes) > 1:
        raise ReaderError(f"{label}: slices have different sizes {sorted(sizes)}; expected one (Rows, Columns)")
    try:
        spacings = np.array([[float(v) for v in image.PixelSpacing] for image in images])
    except (AttributeError, TypeError, ValueError):
        raise ReaderError(f"{label}: every slice needs PixelSpacing") from None
    if np.abs(spacings - spacings[0]).max() > SPACING_TOLERANCE_MM:
        raise ReaderError(f"{label}: slices have different PixelSpacing; expected one spacing")
    rows, columns = sizes.pop()
    return rows, columns, (float(spacings[0, 0]), float(spacings[0, 1]))


def _slice_spacing(images: list[FileDataset], positions: np.ndarray, label: str) -> float:
    """Distance between slices: the (uniform) gap of the positions, or the header's spacing for one slice."""
    if len(images) == 1:
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            if images[0].get(key) not in (None, ""):
                return float(images[0].get(key))
        raise ReaderError(f"{label}: a single slice without SpacingBetweenSlices or SliceThickness has no dz")
    gaps = np.diff(positions)
    if gaps.max() - gaps.min() > max(SPACING_TOLERANCE_MM * 10, 0.01 * float(np.median(gaps))):
        raise ReaderError(
            f"{label}: slice gaps vary from {gaps.min():.3f} to {gaps.max():.3f} mm; expected uniform spacing"
            " (a slice missing?)"
        )
    return float(gaps.mean())

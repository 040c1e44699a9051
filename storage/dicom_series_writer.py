"""Writing CT series as DICOM: one single-frame CT Image Storage file per slice, the geometry per slice, HU stored as
int16 with a rescale. Used for original-looking series (storage.examples) and for derived ones (storage.export).

    grid = SliceGrid.along_normal(z_mm, origin_mm, orientation, (dy, dx), dz)   # or SliceGrid.centred_axial
    header = derived_ct_header(DerivedSeries(patient="study-...", study_uid=..., ...))
    write_ct_slices(folder, hu, grid, header, Rescale.fit(hu))

The series-level tags come in `header` (a pydicom Dataset); this module adds what differs per slice (SOP Instance
UID, InstanceNumber, ImagePositionPatient, SliceLocation, pixels) and what the grid says (orientation, spacing,
matrix). Inputs are checked before the first file is written, but a failure while writing (a full disk) leaves a
partial folder: write into a staging folder and rename it into place (storage.placement).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
INT16 = (-32768, 32767)
FINEST_SLOPE = 1 / 16  # the finest rescale Rescale.fit picks (HU within 1/32 after the round trip)
SOFT_TISSUE_WINDOW = (40.0, 400.0)  # WindowCenter, WindowWidth (HU)
MANUFACTURER = "NEED low-dose CT pipeline"


@dataclass(frozen=True)
class SliceGrid:
    """Where each slice of a series lies in patient space (DICOM LPS, mm).

    `orientation` is ImageOrientationPatient (row direction, then column direction: the directions in which the
    column and the row index grow), `positions_mm` (n, 3) the ImagePositionPatient (centre of the first pixel) of
    each slice, `pixel_spacing_mm` (dy, dx) PixelSpacing (between rows, between columns)."""

    orientation: tuple[float, ...]
    positions_mm: np.ndarray
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float

    def __post_init__(self) -> None:
        orientation = tuple(float(v) for v in self.orientation)
        rows, columns = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        if len(orientation) != 6 or not np.allclose(
            [rows @ rows, columns @ columns, rows @ columns], [1, 1, 0], atol=1e-4
        ):
            raise ValueError(f"orientation must be two orthonormal direction cosines (6 values), got {orientation}")
        positions = np.asarray(self.positions_mm, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 3 or not np.isfinite(positions).all():
            raise ValueError(f"positions_mm must be finite (n, 3), got shape {positions.shape}")
        object.__setattr__(self, "orientation", orientation)
        object.__setattr__(self, "positions_mm", positions)

    @classmethod
    def along_normal(
        cls,
        locations_mm: Sequence[float] | np.ndarray,
        origin_mm: Sequence[float],
        orientation: Sequence[float],
        pixel_spacing_mm: Sequence[float],
        slice_thickness_mm: float,
    ) -> SliceGrid:
        """Slices at `locations_mm` along the slice normal (ImagePositionPatient · normal == location), through
        `origin_mm` shifted along the normal."""
        normal = slice_normal(orientation)
        origin = np.asarray(origin_mm, dtype=np.float64)
        offsets = np.asarray(locations_mm, dtype=np.float64) - origin @ normal
        dy, dx = (float(v) for v in pixel_spacing_mm)
        return cls(tuple(orientation), origin + offsets[:, None] * normal, (dy, dx), float(slice_thickness_mm))

    @classmethod
    def centred_axial(
        cls, z_mm: Sequence[float] | np.ndarray, shape: tuple[int, int], pixel_spacing_mm: Sequence[float], dz: float
    ) -> SliceGrid:
        """Axial slices at `z_mm`, the image (ny, nx) centred on the patient z axis: for sources that recorded no
        orientation or origin."""
        dy, dx = (float(v) for v in pixel_spacing_mm)
        origin = (-(shape[1] - 1) / 2 * dx, -(shape[0] - 1) / 2 * dy, 0.0)
        return cls.along_normal(z_mm, origin, AXIAL, (dy, dx), dz)

    @property
    def normal(self) -> np.ndarray:
        """The slice normal (row direction × column direction)."""
        return slice_normal(self.orientation)

    @property
    def locations_mm(self) -> np.ndarray:
        """Each slice's position along the normal (what a reader sorts by; SliceLocation)."""
        return self.positions_mm @ self.normal


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """The unit normal of slices with ImageOrientationPatient `orientation`."""
    values = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(values[:3], values[3:])
    return normal / np.linalg.norm(normal)


@dataclass(frozen=True)
class Rescale:
    """HU = stored · slope + intercept, stored as signed int16 (RescaleSlope, RescaleIntercept)."""

    slope: float = 1.0
    intercept: float = 0.0

    @classmethod
    def fit(cls, hu: np.ndarray) -> Rescale:
        """Intercept 0 and the finest power-of-two slope, from 1/16 up, whose int16 range holds every value of `hu`
        (±2048 HU at 1/16, ±4096 at 1/8, ...): re-read HU are within slope/2, at most 0.5 HU below ±32768 HU."""
        values = np.asarray(hu)
        peak = max(abs(float(values.min(initial=0.0))), abs(float(values.max(initial=0.0))))
        slope = FINEST_SLOPE
        while peak / slope > INT16[1]:
            slope *= 2
        return cls(slope=slope, intercept=0.0)

    def check(self, hu: np.ndarray) -> None:
        """Raise ValueError unless every value of `hu` is finite and fits (never clipped silently)."""
        values = np.asarray(hu)
        if values.size and not np.isfinite(values).all():
            raise ValueError("HU must be finite (NaN or inf found)")
        extremes = np.array([values.min(initial=0.0), values.max(initial=0.0)], dtype=np.float64)
        lowest, highest = np.rint((extremes - self.intercept) / self.slope)
        if lowest < INT16[0] or highest > INT16[1]:
            raise ValueError(f"HU outside what int16 with slope {self.slope:g}, intercept {self.intercept:g} holds")

    def encode(self, hu: np.ndarray) -> np.ndarray:
        """`hu` as the stored int16 pixels (checked first)."""
        self.check(hu)
        return np.rint((np.asarray(hu, dtype=np.float64) - self.intercept) / self.slope).astype(np.int16)


def ct_template() -> pydicom.Dataset:
    """A minimal CT image dataset (file meta, SOP class, pixel module) that write_ct_slices fills per slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.Modality = "CT"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 1
    dataset.RescaleType = "HU"
    return dataset


@dataclass(frozen=True)
class DerivedSeries:
    """What a derived (secondary) CT series says about itself; the patient is a pseudonym only."""

    patient: str  # PatientID and PatientName: a pseudonym (a study key), never a source identifier
    study_uid: str
    frame_of_reference_uid: str
    series_number: int
    series_description: str  # at most 64 characters
    derivation_description: str  # at most 1024 characters
    convolution_kernel: str = ""  # at most 16 characters; "" leaves it out
    created: datetime | None = None  # SeriesDate/Time, ContentDate/Time (default now, UTC)
    software_version: str = ""


def derived_ct_header(series: DerivedSeries) -> pydicom.Dataset:
    """The series-level tags of a derived CT series (DERIVED\\SECONDARY\\AXIAL) that passes dciodvfy: every type-1
    and type-2 attribute of the CT Image IOD present, unknown acquisition facts (KVP, dates of the source, ...)
    present but empty, a soft-tissue window, a fresh Series Instance UID."""
    if len(series.series_description) > 64 or len(series.convolution_kernel) > 16:
        raise ValueError("series_description is at most 64 characters, convolution_kernel at most 16")
    created = series.created or datetime.now().astimezone()
    header = ct_template()
    header.SpecificCharacterSet = "ISO_IR 100"
    header.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    # The pseudonym as a one-component name: viewers and PACS show it as it is (dciodvfy warns that a name without ^
    # is a "retired form"; "KEY^" would show the caret in Orthanc and most viewers).
    header.PatientID = header.PatientName = series.patient
    header.PatientBirthDate = header.PatientSex = ""
    header.PatientIdentityRemoved = "YES"
    header.DeidentificationMethod = "NEED export: pseudonym only; no source ID, date or UID"
    header.StudyInstanceUID = series.study_uid
    header.StudyID = series.patient.rsplit("-", 1)[-1][:16]  # the pseudonym's hash part (SH: 16 characters)
    header.StudyDate = header.StudyTime = header.AccessionNumber = ""  # no source date is kept, none invented
    header.ReferringPhysicianName = ""
    header.SeriesInstanceUID = generate_uid()
    header.SeriesNumber = series.series_number
    header.SeriesDescription = series.series_description
    # Unknown: the catalog keeps neither body part nor patient position. dciodvfy warns about an empty Laterality
    # (it cannot tell whether the body part is paired) and calls a missing one an error, so it stays, empty.
    header.Laterality = header.PatientPosition = ""
    header.SeriesDate = header.ContentDate = header.InstanceCreationDate = created.strftime("%Y%m%d")
    header.SeriesTime = header.ContentTime = header.InstanceCreationTime = created.strftime("%H%M%S")
    offset = created.strftime("%z")
    if offset:
        header.TimezoneOffsetFromUTC = offset
    header.FrameOfReferenceUID = series.frame_of_reference_uid
    header.PositionReferenceIndicator = ""
    header.Manufacturer = MANUFACTURER
    if series.software_version:
        header.SoftwareVersions = series.software_version
    header.KVP = header.AcquisitionNumber = ""
    header.DerivationDescription = series.derivation_description
    if series.convolution_kernel:
        header.ConvolutionKernel = series.convolution_kernel
    header.BurnedInAnnotation = "NO"
    header.WindowCenter, header.WindowWidth = SOFT_TISSUE_WINDOW
    header.WindowCenterWidthExplanation = "SOFT TISSUE"
    return header


def write_ct_slices(
    folder: str | os.PathLike,
    hu: np.ndarray,
    grid: SliceGrid,
    header: pydicom.Dataset,
    rescale: Rescale,
    *,
    file_names: Sequence[str] | None = None,
    instance_numbers: Sequence[int] | None = None,
) -> list[Path]:
    """Write `hu` (n, rows, columns) as single-frame CT files in a new `folder` (which must not exist); return them.

    `header` holds the series-level tags (patient, study, series, equipment; a deep copy is taken); every file gets
    a new SOP Instance UID. Files default to IM0001.dcm...; InstanceNumber defaults to 1..n."""
    folder = Path(folder)
    hu = np.asarray(hu)
    n_slices = hu.shape[0]
    names = list(file_names) if file_names is not None else [f"IM{k + 1:04d}.dcm" for k in range(n_slices)]
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n_slices + 1))
    if hu.ndim != 3 or not (len(names) == len(numbers) == len(grid.positions_mm) == n_slices):
        raise ValueError(
            f"{hu.shape} HU, {len(names)} file names, {len(numbers)} instance numbers and "
            f"{len(grid.positions_mm)} positions: expected (n, rows, columns) and n of each"
        )
    rescale.check(hu)  # before anything is written
    folder.mkdir(parents=True, exist_ok=False)
    series = copy.deepcopy(header)
    series.ImageOrientationPatient = [_ds(v) for v in grid.orientation]
    series.Rows, series.Columns = int(hu.shape[1]), int(hu.shape[2])
    series.PixelSpacing = [_ds(v) for v in grid.pixel_spacing_mm]
    series.SliceThickness = _ds(grid.slice_thickness_mm)
    series.RescaleSlope, series.RescaleIntercept = _ds(rescale.slope), _ds(rescale.intercept)
    paths = []
    for k in range(n_slices):
        image = copy.deepcopy(series)
        image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        image.InstanceNumber = int(numbers[k])
        image.ImagePositionPatient = [_ds(v) for v in grid.positions_mm[k]]
        image.SliceLocation = _ds(grid.locations_mm[k])
        image.PixelData = rescale.encode(hu[k]).tobytes()
        path = folder / names[k]
        image.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(value: float) -> DSfloat:
    """`value` as a DS (decimal string, at most 16 characters), rounded to fit."""
    return DSfloat(float(value), auto_format=True)

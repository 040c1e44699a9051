"""Volume readers: DICOM series folders, InVesalius .inv3, NIfTI and .npy, all returning a de-identified Volume;
and discovery of every CT study in a cohort's files and folders.

volume = read_volume("/data/series_folder")          # DICOM series (any file names, any order)
volume = read_volume(BUNDLED_HEAD_CT)                 # the real head CT of Debian's invesalius-examples
volume = read_volume("ct.npy", spacing_mm=(1.5, 0.9, 0.9))
found = discover_series(["/data/cohort"])             # one SeriesSource per axial CT series / volume file
volume = read_series(found.series[0])
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from storage.readers.base import ReaderError
from storage.readers.dicom import read_dicom_files, read_dicom_folder
from storage.readers.inv3 import read_inv3
from storage.readers.nifti import read_nifti
from storage.readers.npy import read_npy
from storage.readers.series import Discovery, SeriesSource, discover_series, read_series
from storage.validation import check_spacing_mm
from storage.volume import Volume

__all__ = [
    "BUNDLED_HEAD_CT",
    "Discovery",
    "ReaderError",
    "SeriesSource",
    "Volume",
    "discover_series",
    "read_series",
    "read_volume",
]

BUNDLED_HEAD_CT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
LOGGER = logging.getLogger(__name__)
SUPPORTED = "a DICOM series folder, a .dcm file, .inv3, .nii, .nii.gz or .npy"


def read_volume(path: str | os.PathLike, spacing_mm: tuple[float, float, float] | None = None) -> Volume:
    """Read a CT volume, choosing the reader by path: folder -> DICOM, .dcm, .inv3, .nii/.nii.gz, .npy.

    `spacing_mm` (dz, dy, dx) is required for .npy; for other formats it replaces the stored spacing (a warning
    is logged when they differ), for data whose headers are known to be wrong.
    """
    path = Path(path)
    if not path.exists():
        raise ReaderError(f"{path} does not exist; expected {SUPPORTED}")
    name = path.name.lower()
    if path.is_dir():
        volume = read_dicom_folder(path)
    elif name.endswith(".dcm"):
        volume = read_dicom_files([path], path.name)
    elif name.endswith(".inv3"):
        volume = read_inv3(path)
    elif name.endswith((".nii", ".nii.gz")):
        volume = read_nifti(path)
    elif name.endswith(".npy"):
        return read_npy(path, spacing_mm)
    else:
        raise ReaderError(f"{path.name}: unknown volume format; expected {SUPPORTED}")
    return volume if spacing_mm is None else with_spacing(volume, spacing_mm)


def with_spacing(volume: Volume, spacing_mm: tuple[float, float, float]) -> Volume:
    """The volume with the given spacing; slice positions are rescaled to the new dz."""
    spacing = check_spacing_mm(spacing_mm, ReaderError)
    if spacing == volume.spacing_mm:
        return volume
    LOGGER.warning("replacing the stored voxel spacing %s mm by the given %s mm", volume.spacing_mm, spacing)
    z_mm = volume.z_mm[0] + (volume.z_mm - volume.z_mm[0]) * (spacing[0] / volume.spacing_mm[0])
    return Volume(
        hu=volume.hu,
        spacing_mm=spacing,
        z_mm=z_mm,
        subject_key=volume.subject_key,
        source={**volume.source, "spacing_overridden": True},
    )

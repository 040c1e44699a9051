"""Writing a CT volume as NIfTI-1 (.nii.gz) with the affine research tools expect.

DICOM places voxels in LPS (x to the patient's left, y posterior, z superior); NIfTI's world space is RAS, so the
affine is the DICOM one with x and y negated. Voxel (i, j, k) is column i, row j of slice k:

    RAS = diag(-1, -1, 1) · (P0 + i·dx·X + j·dy·Y + k·dz·N)

with X, Y the row and column directions of ImageOrientationPatient, N their cross product and P0 the
ImagePositionPatient of the first slice. qform and sform both hold it (code 1, scanner). Voxels are float32 HU;
NaN marks a slice without data.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from storage.dicom_series_writer import SliceGrid

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SCANNER_CODE = 1  # NIFTI_XFORM_SCANNER_ANAT
REGULAR_TOLERANCE_MM = 1e-3


def nifti_affine(grid: SliceGrid) -> np.ndarray:
    """The RAS voxel-to-world affine of slices on `grid`, which must be evenly spaced along its normal."""
    positions = grid.positions_mm
    if len(positions) > 1:
        steps = np.diff(positions, axis=0)
        if np.abs(steps - steps[0]).max() > REGULAR_TOLERANCE_MM:
            raise ValueError("NIfTI needs evenly spaced slices; the grid's slice positions are not")
        slice_step = steps[0]
    else:
        slice_step = grid.normal * grid.slice_thickness_mm
    dy, dx = grid.pixel_spacing_mm
    orientation = np.asarray(grid.orientation)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * dx
    lps[:3, 1] = orientation[3:] * dy
    lps[:3, 2] = slice_step
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


def write_nifti(path: str | os.PathLike, hu: np.ndarray, grid: SliceGrid, description: str = "") -> Path:
    """Write `hu` (n, rows, columns) on `grid` as a float32 NIfTI-1 file (a .nii.gz path is gzipped)."""
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3 or hu.shape[0] != len(grid.positions_mm):
        raise ValueError(
            f"expected (n, rows, columns) HU for the grid's {len(grid.positions_mm)} slices, got {hu.shape}"
        )
    affine = nifti_affine(grid)
    image = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), affine)
    image.header.set_qform(affine, code=SCANNER_CODE)
    image.header.set_sform(affine, code=SCANNER_CODE)
    image.header.set_xyzt_units(xyz="mm")
    image.header["descrip"] = description.encode("ascii", "replace")[:79]
    finite = hu[np.isfinite(hu)]
    if finite.size:
        image.header["cal_min"], image.header["cal_max"] = float(finite.min()), float(finite.max())
    path = Path(path)
    nib.save(image, path)
    return path

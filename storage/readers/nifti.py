"""NIfTI volumes (.nii, .nii.gz) via nibabel, reoriented so slices (the superior axis) come first.

Voxels are taken as stored after scl_slope/scl_inter, assumed to be HU (NIfTI records no modality).
In-plane, rows run anterior to posterior and columns patient right to left, as in a DICOM axial image.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from storage.deid import subject_key
from storage.readers.base import ReaderError, checked_volume
from storage.volume import Volume


def read_nifti(path: Path) -> Volume:
    """Read a 3-D NIfTI image as (slice, y, x) HU with spacing from the header and z from the affine."""
    try:
        image = nib.load(path)
        canonical = nib.as_closest_canonical(image)
        ras = np.asarray(canonical.get_fdata(dtype=np.float32))
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as err:
        raise ReaderError(f"{path.name}: not a readable NIfTI file (corrupt or truncated?): {err}") from None
    if ras.ndim == 4 and ras.shape[3] == 1:
        ras = ras[..., 0]
    if ras.ndim != 3:
        raise ReaderError(f"{path.name}: expected a 3-D image, got shape {ras.shape}")
    hu = ras.transpose(2, 1, 0)[:, ::-1, ::-1]
    zooms = [float(size) for size in canonical.header.get_zooms()[:3]]
    spacing = (zooms[2], zooms[1], zooms[0])
    affine = canonical.affine
    slice_axis = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    origin = float(affine[:3, 3] @ slice_axis)
    z_mm = origin + np.arange(hu.shape[0], dtype=np.float64) * zooms[2]
    source = {"format": "nifti", "modality": "unknown", "n_files": 1, "n_skipped": 0}
    return checked_volume(path, np.ascontiguousarray(hu), spacing, z_mm, subject_key(path.name), source)

"""An example cohort to try the cohort commands on without patient data: pseudo-patients cut from the bundled real
head CT, written as axial DICOM CT series (one folder per patient), the way a scanner export looks.

    need example-cohort data/incoming --patients 5 --slices 8

Each pseudo-patient is a slab of consecutive head-CT slices at full resolution (256 x 256, 0.957 mm), so the shipped
cpu weights fit. They are slabs of one person, not independent patients: use them to learn the workflow, never to
judge generalisation.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from storage.dicom_series_writer import AXIAL, Rescale, SliceGrid, ct_template, write_ct_slices
from storage.readers import BUNDLED_HEAD_CT, read_volume

__all__ = ["AXIAL", "ct_template", "write_ct_series", "write_example_cohort"]

HU_RANGE = (-1024, 3071)  # int16 pixels with RescaleIntercept -1024
GAP_SLICES = 4  # slices left out between two pseudo-patients' slabs


def write_ct_series(
    folder: str | os.PathLike,
    hu: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    patient_id: str,
    patient_name: str,
    image_type: str = "AXIAL",
    orientation: Sequence[float] = AXIAL,
    template: pydicom.Dataset | None = None,
    file_names: Sequence[str] | None = None,
) -> Path:
    """Write `hu` (n, rows, columns) as one original CT series, the way a scanner export looks, in a new `folder`
    (single-frame files `file_names`, default IM0000.dcm...; new UIDs; positions k·dz along the slice normal from
    the origin); `template` supplies extra tags (default ct_template())."""
    dz, dy, dx = (float(v) for v in spacing_mm)
    series = copy.deepcopy(template) if template is not None else ct_template()
    series.PatientID, series.PatientName = patient_id, patient_name
    series.StudyInstanceUID, series.SeriesInstanceUID = generate_uid(), generate_uid()
    series.FrameOfReferenceUID = generate_uid()
    series.StudyDate = series.SeriesDate = date.today().strftime("%Y%m%d")
    series.ImageType = ["ORIGINAL", "PRIMARY", image_type]
    series.SpacingBetweenSlices = dz
    grid = SliceGrid.along_normal(np.arange(len(hu)) * dz, (0.0, 0.0, 0.0), orientation, (dy, dx), dz)
    write_ct_slices(
        folder,
        np.clip(np.rint(np.asarray(hu, dtype=np.float32)), *HU_RANGE),
        grid,
        series,
        Rescale(slope=1.0, intercept=HU_RANGE[0]),
        file_names=file_names if file_names is not None else [f"IM{k:04d}.dcm" for k in range(len(hu))],
    )
    return Path(folder)


def write_example_cohort(
    out: str | os.PathLike, patients: int = 5, slices: int = 8, head_ct: str | os.PathLike = BUNDLED_HEAD_CT
) -> list[Path]:
    """Write `patients` pseudo-patients of `slices` consecutive head-CT slices each (GAP_SLICES apart) under
    out/PATIENT-NN/CT/; return their folders. The empty bottom slices of the head CT are never used."""
    volume = read_volume(head_ct)
    usable = volume.hu.shape[0] - 2  # the bundled head CT's last two slices are empty
    needed = patients * slices + (patients - 1) * GAP_SLICES
    if patients < 1 or slices < 1 or needed > usable:
        raise ValueError(
            f"{patients} patients x {slices} slices (+{GAP_SLICES} between them) need {needed} slices; the head CT "
            f"has {usable}: ask for fewer"
        )
    folders = []
    for index in range(patients):
        first = index * (slices + GAP_SLICES)
        folders.append(
            write_ct_series(
                Path(out) / f"PATIENT-{index + 1:02d}" / "CT",
                volume.hu[first : first + slices],
                volume.spacing_mm,
                patient_id=f"EXAMPLE-{index + 1:02d}",
                patient_name=f"Example^Patient{index + 1:02d}",
            )
        )
    return folders

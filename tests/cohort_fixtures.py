"""A small DICOM cohort written from the real head CT: three pseudo-patients' axial series (64x64, downsampled like
pipeline_fixtures.write_small_head_npy, so tasks.quick_models fit), and the series discovery must skip or refuse.

Layout: root/<PatientName>/<series name>/IM*[.dcm] (shuffled names, some without extension), plus root/README.txt.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from storage.examples import AXIAL, write_ct_series
from storage.readers import read_volume
from tests.pipeline_fixtures import SMALL_SPACING

# Distinctive identifiers, so a test can assert that none of them leaves discovery.
PATIENT_NAMES = {
    "PHI-COHORT-1": "Doe^One",
    "PHI-COHORT-2": "Doe^Two",
    "PHI-COHORT-3": "Doe^Three",
    "PHI-COHORT-4": "Doe^Four",
    "PHI-COHORT-5": "Doe^Five",
}
BIRTH_DATE = "19510731"
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@dataclass
class CohortLayout:
    """Where write_cohort put things: `patients` PatientID -> its series names, `series_dirs` name -> folder."""

    root: Path
    patients: dict[str, list[str]] = field(default_factory=dict)
    series_dirs: dict[str, Path] = field(default_factory=dict)


def write_cohort(head_ct_path: Path, root: Path, slices_per_series: int = 4) -> CohortLayout:
    """Write the cohort: studies p1_s1, p2_s1, p3_s1, p3_s2 (P3: two studies of one subject), ct_small (pydicom's
    128x128 CT_small.dcm) and corrupt (one slice's PixelData cut to half); and the series discovery must skip:
    localizer, sagittal and duplicate (a byte copy of p1_s1)."""
    layout = CohortLayout(root)

    def put(name: str, folder: Path, patient_id: str) -> None:
        layout.series_dirs[name] = folder
        layout.patients.setdefault(patient_id, []).append(name)

    for name, patient_id, first in (
        ("p1_s1", "PHI-COHORT-1", 0),
        ("p2_s1", "PHI-COHORT-2", 20),
        ("p3_s1", "PHI-COHORT-3", 70),
        ("p3_s2", "PHI-COHORT-3", 84),
        ("corrupt", "PHI-COHORT-5", 30),
    ):
        put(name, add_series(head_ct_path, root, name, patient_id, first, slices_per_series), patient_id)
    _truncate_pixels(min(layout.series_dirs["corrupt"].iterdir()))
    localizer = add_series(head_ct_path, root, "localizer", "PHI-COHORT-1", 40, 1, image_type="LOCALIZER")
    put("localizer", localizer, "PHI-COHORT-1")
    sagittal = add_series(head_ct_path, root, "sagittal", "PHI-COHORT-2", 10, 3, orientation=SAGITTAL)
    put("sagittal", sagittal, "PHI-COHORT-2")
    put("ct_small", _write_ct_small(root / PATIENT_NAMES["PHI-COHORT-4"] / "ct_small", "PHI-COHORT-4"), "PHI-COHORT-4")
    duplicate = root / PATIENT_NAMES["PHI-COHORT-1"] / "p1_s1_copy"  # its label sorts after p1_s1's: the copy
    shutil.copytree(layout.series_dirs["p1_s1"], duplicate)
    put("duplicate", duplicate, "PHI-COHORT-1")
    (root / "README.txt").write_text("pseudo-patient cohort for the series discovery tests\n")
    return layout


def add_series(
    head_ct_path: Path,
    root: Path,
    name: str,
    patient_id: str,
    first_slice: int,
    n_slices: int = 4,
    *,
    image_type: str = "AXIAL",
    orientation: tuple[float, ...] = AXIAL,
) -> Path:
    """Write one pseudo-patient series (a new study) into root/<PatientName>/<name>/: head-CT slices first_slice,
    first_slice + 2, ... at 64x64 and 3.8 mm pixels, 3.0 mm apart; returns its folder. `image_type` (the third
    ImageType value) and `orientation` (ImageOrientationPatient) make scouts and non-axial series."""
    patient_name = PATIENT_NAMES.get(patient_id, f"Doe^{patient_id}")
    return write_ct_series(
        root / patient_name / name,
        _small_slices(head_ct_path, first_slice, n_slices),
        SMALL_SPACING,
        patient_id=patient_id,
        patient_name=patient_name,
        image_type=image_type,
        orientation=orientation,
        template=_template(patient_id),
        file_names=_file_names(n_slices, seed=name),
    )


@lru_cache(maxsize=1)
def _head_hu(head_ct_path: Path) -> np.ndarray:
    return read_volume(head_ct_path).hu


def _small_slices(head_ct_path: Path, first_slice: int, n_slices: int) -> np.ndarray:
    """Every other head-CT slice from first_slice, 4x4 block means (64x64): as write_small_head_npy does."""
    hu = _head_hu(head_ct_path)[first_slice : first_slice + 2 * n_slices : 2]
    if hu.shape[0] != n_slices:
        raise ValueError(f"the head CT has no {n_slices} slices every other one from {first_slice}")
    return hu.reshape(n_slices, 64, 4, 64, 4).mean(axis=(2, 4)).astype(np.float32)


def _template(patient_id: str) -> pydicom.Dataset:
    """CT_small.dcm with this pseudo-patient's identity and a new series number; its pixels still CT_small's."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    template.PatientID = template.StudyID = patient_id
    template.PatientName = PATIENT_NAMES.get(patient_id, f"Doe^{patient_id}")
    template.PatientBirthDate = BIRTH_DATE
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue"):
        template.pop(keyword, None)
    return template


def _file_names(n_files: int, seed: str) -> list[str]:
    """IM0000.dcm, IM0001, IM0002.dcm, ... in a shuffled order (files named unlike their slice order)."""
    names = [f"IM{index:04d}" + (".dcm" if index % 2 == 0 else "") for index in range(n_files)]
    random.Random(seed).shuffle(names)
    return names


def _write_ct_small(folder: Path, patient_id: str) -> Path:
    """pydicom's CT_small.dcm (128x128, one slice, its own UIDs) alone in a folder, as this pseudo-patient."""
    folder.mkdir(parents=True)
    image = _template(patient_id)
    image.save_as(folder / "IM0000.dcm", enforce_file_format=True)
    return folder


def _truncate_pixels(path: Path) -> None:
    """Cut a file's PixelData to half its bytes: the header still reads, decoding the pixels fails."""
    image = pydicom.dcmread(path)
    image.PixelData = image.PixelData[: len(image.PixelData) // 2]
    image.save_as(path, enforce_file_format=True)

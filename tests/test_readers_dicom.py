"""DICOM series reading on real CT files from pydicom's test data: ordering, HU, compression, bad input,
de-identification."""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless, generate_uid

from storage.archive import create_archive
from storage.deid import subject_key
from storage.readers import ReaderError, read_volume

PHI_NAME, PHI_ID, PHI_BIRTH = "Doe^Jane", "PHI-12345", "19700101"
PHI_VALUES = ("Doe", "Jane", PHI_ID, PHI_BIRTH, "JFK IMAGING")
SLICE_GAP_MM = 2.5


def ct_small() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def write_series(
    folder: Path, n_slices: int = 5, seed: int = 0, rle_slice: int | None = None, gap_mm: float = SLICE_GAP_MM
) -> np.ndarray:
    """Write a CT series built from CT_small.dcm under shuffled names; slice k's pixels are the original + 10 k.

    Returns the expected HU volume in patient-axis order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    template = ct_small()
    template.PatientName, template.PatientID, template.PatientBirthDate = PHI_NAME, PHI_ID, PHI_BIRTH
    base = template.pixel_array.astype(np.int16)
    names = [f"IM{index:04d}" for index in range(n_slices)]
    random.Random(seed).shuffle(names)
    expected = []
    for k in range(n_slices):
        image = copy.deepcopy(template)
        image.SOPInstanceUID = generate_uid()
        image.file_meta.MediaStorageSOPInstanceUID = image.SOPInstanceUID
        x, y, z = (float(v) for v in template.ImagePositionPatient)
        image.ImagePositionPatient = [x, y, z + k * gap_mm]
        pixels = (base + 10 * k).astype(np.int16)
        if k == rle_slice:
            image.compress(RLELossless, pixels)
        else:
            image.PixelData = pixels.tobytes()
        image.save_as(folder / names[k])
        expected.append(pixels * float(template.RescaleSlope) + float(template.RescaleIntercept))
    return np.stack(expected).astype(np.float32)


def test_series_is_sorted_by_position_and_rescaled(tmp_path):
    expected = write_series(tmp_path / "series", rle_slice=2)
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.hu, expected)
    assert volume.spacing_mm == pytest.approx((SLICE_GAP_MM, 0.661468, 0.661468))
    assert np.diff(volume.z_mm) == pytest.approx([SLICE_GAP_MM] * 4)
    assert volume.source["n_files"] == 5 and volume.source["n_skipped"] == 0
    assert "RLE Lossless" in volume.source["transfer_syntaxes"]


def test_source_records_the_series_geometry(tmp_path):
    """An oblique, shifted series: source["orientation"] is its ImageOrientationPatient and source["origin_mm"] the
    ImagePositionPatient of the first slice along the normal, whichever file holds it."""
    tilt = np.radians(15.0)
    orientation = [1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(np.sin(tilt))]  # columns tilted about x
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([-120.5, 33.25, 410.0])
    expected = write_series(tmp_path / "series", n_slices=4)
    z0 = float(ct_small().ImagePositionPatient[2])
    for path in (tmp_path / "series").iterdir():
        image = pydicom.dcmread(path)
        k = round((float(image.ImagePositionPatient[2]) - z0) / SLICE_GAP_MM)
        image.ImageOrientationPatient = orientation
        image.ImagePositionPatient = [float(v) for v in origin + (3 - k) * SLICE_GAP_MM * normal]  # k = 3 first
        image.save_as(path)
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.hu, expected[::-1])
    assert volume.source["orientation"] == pytest.approx(orientation)
    assert volume.source["origin_mm"] == pytest.approx(origin.tolist())
    assert volume.spacing_mm[0] == pytest.approx(SLICE_GAP_MM)


def test_no_identifying_value_leaves_the_reader(tmp_path):
    write_series(tmp_path / "series")
    volume = read_volume(tmp_path / "series")
    template = ct_small()
    assert volume.subject_key == subject_key(PHI_ID)  # the patient's pseudonym, shared by all its studies
    archive = create_archive(
        tmp_path / "a.zarr",
        image_hu=volume.hu,
        spacing_mm=volume.spacing_mm,
        z_mm=volume.z_mm,
        doses=[0.25],
        geometry={},
        physics={"I0": 1e5, "sigma_e2": 10.0, "mu_water": 0.0192},
        seed=0,
        source={**volume.source, "subject_key": volume.subject_key},
        sinogram_shape=(4, 4),
    )
    stored_text = (archive.path / "zarr.json").read_text() + repr(archive.dataset.attrs)
    for text in (repr(volume), repr(volume.source), volume.subject_key, stored_text):
        for value in (*PHI_VALUES, str(template.StudyInstanceUID), str(template.SeriesInstanceUID)):
            assert value not in text


def test_subject_key_depends_on_the_salt(tmp_path, monkeypatch):
    write_series(tmp_path / "series", n_slices=2)
    default_key = read_volume(tmp_path / "series").subject_key
    monkeypatch.setenv("NEED_DEID_SALT", "site-secret")
    assert read_volume(tmp_path / "series").subject_key != default_key


def test_non_dicom_files_are_skipped_with_a_warning(tmp_path, caplog):
    expected = write_series(tmp_path / "series", n_slices=3)
    (tmp_path / "series" / "README.txt").write_text("scanner notes")
    (tmp_path / "series" / "thumbs.db").write_bytes(bytes(range(256)) * 4)
    with caplog.at_level(logging.WARNING):
        volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.hu, expected)
    assert volume.source["n_skipped"] == 2
    assert "skipped 2 of 5 files" in caplog.text
    assert PHI_ID not in caplog.text


def test_jpeg2000_slice_decodes():
    volume = read_volume(get_testdata_file("693_J2KI.dcm"))
    assert volume.hu.shape == (1, 512, 512)
    assert volume.source["transfer_syntaxes"] == ["JPEG 2000 Image Compression"]
    assert volume.hu.max() > 500 and volume.hu.std() > 100


def test_empty_folder_and_only_foreign_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no files"):
        read_volume(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("not dicom")
    with pytest.raises(ReaderError, match="none of its 1 files"):
        read_volume(tmp_path / "text")


def test_non_ct_modality_is_refused(tmp_path):
    write_series(tmp_path / "series", n_slices=2)
    path = next((tmp_path / "series").iterdir())
    image = pydicom.dcmread(path)
    image.Modality = "MR"
    image.save_as(path)
    with pytest.raises(ReaderError, match="modality CT, MR; expected CT"):
        read_volume(tmp_path / "series")


def test_duplicate_positions_are_refused(tmp_path):
    write_series(tmp_path / "series", n_slices=3)
    first, second = sorted((tmp_path / "series").iterdir())[:2]
    image = pydicom.dcmread(first)
    other = pydicom.dcmread(second)
    image.ImagePositionPatient = other.ImagePositionPatient
    image.save_as(first)
    with pytest.raises(ReaderError, match="duplicates"):
        read_volume(tmp_path / "series")


def test_mixed_sizes_spacing_and_gaps_are_refused(tmp_path):
    write_series(tmp_path / "sizes", n_slices=3)
    path = sorted((tmp_path / "sizes").iterdir())[0]
    image = pydicom.dcmread(path)
    pixels = image.pixel_array[:64]
    image.Rows = 64
    image.PixelData = pixels.tobytes()
    image.save_as(path)
    with pytest.raises(ReaderError, match="different sizes"):
        read_volume(tmp_path / "sizes")

    write_series(tmp_path / "spacing", n_slices=3)
    path = sorted((tmp_path / "spacing").iterdir())[0]
    image = pydicom.dcmread(path)
    image.PixelSpacing = [0.8, 0.8]
    image.save_as(path)
    with pytest.raises(ReaderError, match="different PixelSpacing"):
        read_volume(tmp_path / "spacing")

    write_series(tmp_path / "gap", n_slices=4)
    path = max((tmp_path / "gap").iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    image = pydicom.dcmread(path)
    image.ImagePositionPatient = [*image.ImagePositionPatient[:2], float(image.ImagePositionPatient[2]) + 5.0]
    image.save_as(path)
    with pytest.raises(ReaderError, match="slice gaps vary"):
        read_volume(tmp_path / "gap")


def test_truncated_files_are_reported(tmp_path):
    write_series(tmp_path / "pixels", n_slices=2)
    path = sorted((tmp_path / "pixels").iterdir())[0]
    path.write_bytes(path.read_bytes()[:-5000])
    with pytest.raises(ReaderError, match=path.name):
        read_volume(tmp_path / "pixels")

    write_series(tmp_path / "header", n_slices=2)
    path = sorted((tmp_path / "header").iterdir())[0]
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ReaderError, match=path.name):
        read_volume(tmp_path / "header")

"""Source discovery on a small DICOM cohort written from the real head CT: one study per axial CT series, scouts,
non-axial series and copies skipped, salted keys, patients grouped, nothing identifying in what it returns."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from storage.deid import study_key, subject_key
from storage.dicom_series_writer import MANUFACTURER, ct_template
from storage.examples import write_ct_series
from storage.readers import ReaderError, discover_series, read_series, read_volume
from tests.cohort_fixtures import BIRTH_DATE, PATIENT_NAMES, CohortLayout, add_series, write_cohort
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

STUDIES = {"p1_s1", "p2_s1", "p3_s1", "p3_s2", "ct_small", "corrupt"}
CT_SMALL_PHI = ("CompressedSamples", "1CT1", "ABCD1234", "JFK IMAGING", "20040119", "19970430")


@pytest.fixture(scope="module")
def cohort(head_ct_path, tmp_path_factory) -> CohortLayout:
    """The fixture cohort, written once; tests that change it work on a copy."""
    return write_cohort(head_ct_path, tmp_path_factory.mktemp("cohort") / "cohort")


def by_folder(series) -> dict:
    return {source.files[0].parent.name: source for source in series}


def dicom_uids(root: Path) -> set[str]:
    """Every Study/Series/SOP Instance UID in the cohort's DICOM files."""
    uids = set()
    for path in root.rglob("IM*"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        uids |= {str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)}
    return uids


def test_cohort_gives_one_study_per_axial_ct_series(cohort):
    found = discover_series([cohort.root])
    studies = by_folder(found.series)
    assert set(studies) == STUDIES and len(found.series) == 6
    assert {name: len(source.files) for name, source in studies.items()} == {
        **dict.fromkeys(STUDIES, 4),
        "ct_small": 1,
    }
    assert {source.format for source in found.series} == {"dicom"}
    assert [source.label for source in found.series] == sorted(source.label for source in found.series)
    assert found.unreadable == []
    assert len(found.skipped) == 3
    localizer, sagittal, duplicate = (
        next(line for line in found.skipped if word in line) for word in ("localizer", "sagittal", "_copy")
    )
    assert "scout" in localizer and "not axial" in sagittal
    assert f"{cohort.series_dirs['duplicate'].name} (series 1): duplicate of" in duplicate
    assert duplicate.endswith(studies["p1_s1"].label)


def test_keys_are_stable_salted_and_hide_the_uids(cohort, monkeypatch):
    first, again = discover_series([cohort.root]), discover_series([cohort.root])
    assert first.series == again.series
    p1 = by_folder(first.series)["p1_s1"]
    uid = str(pydicom.dcmread(p1.files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert p1.key == study_key("dicom-series", uid)
    uids = dicom_uids(cohort.root)
    for source in first.series:
        assert source.key.startswith("study-") and source.subject_key.startswith("subj-")
        assert not any(uid in text for uid in uids for text in (source.key, source.label, source.subject_key))

    monkeypatch.setenv("NEED_DEID_SALT", "site-secret")
    salted = discover_series([cohort.root])
    assert {source.key for source in salted.series}.isdisjoint(source.key for source in first.series)
    assert {source.subject_key for source in salted.series}.isdisjoint(source.subject_key for source in first.series)


def test_subject_key_is_the_patient(cohort):
    studies = by_folder(discover_series([cohort.root]).series)
    assert studies["p3_s1"].subject_key == studies["p3_s2"].subject_key == subject_key("PHI-COHORT-3")
    assert studies["p3_s1"].key != studies["p3_s2"].key
    assert len({studies[name].subject_key for name in ("p1_s1", "p2_s1", "p3_s1", "ct_small", "corrupt")}) == 5


def test_read_series_decodes_the_slices_or_raises_reader_error(cohort, head_ct_path):
    studies = by_folder(discover_series([cohort.root]).series)
    with pytest.raises(ReaderError, match=r"corrupt \(series 1\).*pixel data cannot be decoded"):
        read_series(studies.pop("corrupt"))
    volumes = {name: read_series(source) for name, source in studies.items()}
    assert {name: volume.shape for name, volume in volumes.items()} == {
        **dict.fromkeys(("p1_s1", "p2_s1", "p3_s1", "p3_s2"), (4, 64, 64)),
        "ct_small": (1, 128, 128),
    }
    assert all(volume.subject_key == studies[name].subject_key for name, volume in volumes.items())
    # slices 0, 2, 4, 6 of the head CT, 4x4 block means, in position order despite the shuffled file names
    expected = read_volume(head_ct_path).hu[0:8:2].reshape(4, 64, 4, 64, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(volumes["p1_s1"].hu, np.clip(expected, -1024, 3071), atol=0.5)
    assert volumes["p1_s1"].spacing_mm == pytest.approx(tuple(SMALL_SPACING))


def test_volume_files_are_one_study_each(head_ct_path, tmp_path):
    npy = Path(write_small_head_npy(head_ct_path, tmp_path))
    (tmp_path / "copies").mkdir()
    shutil.copy(npy, tmp_path / "copies" / "renamed.npy")
    found = discover_series([npy, head_ct_path, tmp_path / "copies"])
    assert [source.format for source in found.series] == ["inv3", "npy"]
    assert found.skipped == ["renamed.npy: duplicate of head_small.npy"]  # labels are relative to their SRC
    digest = hashlib.sha256(npy.read_bytes()).hexdigest()
    source = found.series[1]
    assert (source.key, source.subject_key, source.files) == (
        study_key("file", digest),
        subject_key("file", digest),
        (npy,),
    )
    volume = read_series(source, spacing_mm=tuple(SMALL_SPACING))
    assert volume.shape == (6, 64, 64) and volume.subject_key == source.subject_key
    with pytest.raises(ReaderError, match="spacing_mm"):
        read_series(source)


def test_missing_source_and_foreign_file_raise(cohort, tmp_path):
    with pytest.raises(ReaderError, match="nowhere does not exist"):
        discover_series([cohort.root, tmp_path / "nowhere"])
    with pytest.raises(ReaderError, match="README.txt: not a DICOM file"):
        discover_series([cohort.root / "README.txt"])


def test_overlapping_sources_are_deduplicated(cohort):
    whole = discover_series([cohort.root])
    patient = cohort.root / PATIENT_NAMES["PHI-COHORT-3"]
    overlapping = discover_series([patient, cohort.root, patient / "p3_s1" / "IM0000.dcm"])
    assert sorted(source.key for source in overlapping.series) == sorted(source.key for source in whole.series)
    assert len(overlapping.skipped) == len(whole.skipped)
    assert len(by_folder(overlapping.series)["p3_s1"].files) == 4


def test_new_series_repeated_instances_and_other_modalities(cohort, head_ct_path, tmp_path, caplog):
    root = tmp_path / "cohort"
    shutil.copytree(cohort.root, root)
    before = {source.key for source in discover_series([root]).series}
    add_series(head_ct_path, root, "p6_s1", "PHI-COHORT-6", 90)
    p2 = root / PATIENT_NAMES["PHI-COHORT-2"] / "p2_s1"
    shutil.copy(p2 / "IM0000.dcm", p2 / "IM0000.bak")  # the same instance twice in one series
    ct_small = root / PATIENT_NAMES["PHI-COHORT-4"] / "ct_small" / "IM0000.dcm"
    image = pydicom.dcmread(ct_small)
    image.Modality = "MR"
    image.save_as(ct_small)
    with caplog.at_level(logging.WARNING):
        found = discover_series([root])
    studies = by_folder(found.series)
    assert set(studies) == STUDIES - {"ct_small"} | {"p6_s1"}
    assert before - {source.key for source in found.series} == {study_key("dicom-series", str(image.SeriesInstanceUID))}
    assert len(studies["p2_s1"].files) == 4 and "1 file(s) repeat an instance" in caplog.text
    assert any("ct_small (series 1): modality MR" in line for line in found.skipped)


def test_nothing_identifying_leaves_discovery(cohort, tmp_path, caplog):
    root = tmp_path / "cohort"
    shutil.copytree(cohort.root, root)
    broken = root / PATIENT_NAMES["PHI-COHORT-2"] / "p2_s1" / "IM0009.dcm"
    broken.write_bytes((root / PATIENT_NAMES["PHI-COHORT-2"] / "p2_s1" / "IM0000.dcm").read_bytes()[:1000])
    ct_small = root / PATIENT_NAMES["PHI-COHORT-4"] / "ct_small"
    ct_small.rename(ct_small.with_name(str(pydicom.dcmread(ct_small / "IM0000.dcm").SeriesInstanceUID)))
    with caplog.at_level(logging.INFO):
        found = discover_series([root])
    assert len(found.unreadable) == 1
    assert found.unreadable[0].startswith("[redacted]/p2_s1/IM0009.dcm: DICOM image header is incomplete")
    assert len(found.series) == 6 and any("/[uid] (series 1)" in source.label for source in found.series)
    fields = [(source.key, source.label, source.format, source.subject_key) for source in found.series]
    text = "\n".join([repr(fields), *found.skipped, *found.unreadable, caplog.text])
    identifying = (*PATIENT_NAMES, *PATIENT_NAMES.values(), "Doe", "PHI-COHORT", BIRTH_DATE, *CT_SMALL_PHI)
    assert [value for value in (*identifying, *dicom_uids(cohort.root)) if value in text] == []


def test_series_written_by_need_export_are_not_ingested_again(tmp_path):
    """A PACS or drop folder that also holds NEED's own results (pushed back by `need push`) gives no new study."""
    template = ct_template()
    template.Manufacturer = MANUFACTURER
    hu = np.zeros((3, 16, 16), dtype=np.float32)
    write_ct_series(tmp_path / "scan", hu, (2.0, 1.0, 1.0), patient_id="P-SCAN", patient_name="Scan^P")
    write_ct_series(
        tmp_path / "result", hu, (2.0, 1.0, 1.0), patient_id="study-x", patient_name="study-x", template=template
    )
    found = discover_series([tmp_path])
    assert [source.files[0].parent.name for source in found.series] == ["scan"]
    (skipped,) = found.skipped
    assert "a NEED reconstruction written by `need export`" in skipped

"""The catalog: study groups, the study table, opening through xarray, locks outside the hierarchy, schema-1
archives as one-study catalogs and their migration, patient-level splits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from storage.archive import ArchiveError, ArchiveExistsError, ArchiveInputError, open_archive
from storage.catalog import StudyRow, create_catalog, migrate_archive, open_catalog, row_for_archive
from storage.catalog_paths import lock_root
from storage.errors import ArchiveLockedError, ArchiveSchemaError
from storage.splits import SplitError, explicit_splits, patient_splits
from tests.test_archive import GEOMETRY, PHYSICS, make_volume, new_archive


def add_study(catalog, key: str, n_slices: int = 4, ny: int = 6, nx: int = 5, subject: str = "subj-1"):
    """A small study group plus its table row (ingest done)."""
    image = make_volume(n_slices, ny, nx)
    archive = catalog.create_study(
        key,
        image_hu=image,
        spacing_mm=(1.5, 0.9, 0.9),
        z_mm=np.arange(n_slices) * 1.5,
        doses=[0.25],
        geometry=GEOMETRY,
        physics=PHYSICS,
        seed=7,
        source={"format": "npy", "subject_key": subject},
        sinogram_shape=(6, 8),
    )
    catalog.upsert([row_for_archive(key, archive, ingest="done")])
    return archive


def test_studies_live_in_groups_and_the_table_opens_with_xarray(tmp_path):
    catalog = create_catalog(tmp_path / "c.zarr")
    add_study(catalog, "study-a", n_slices=4)
    add_study(catalog, "study-b", n_slices=3, ny=8, nx=8, subject="subj-2")
    with catalog.study("study-a", "r+").lock("reconstruct"):  # a held lock must not show up in the tree
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tree = xr.open_datatree(tmp_path / "c.zarr", engine="zarr", consolidated=False, zarr_format=3)
    assert sorted(tree["studies"].children) == ["study-a", "study-b"]
    assert tree["studies/study-b"].dataset.sizes["y"] == 8
    table = tree.to_dataset()
    assert list(table["study"].values) == ["study-a", "study-b"]
    assert list(table["slices"].values) == [4, 3] and list(table["ingest"].values) == ["done", "done"]
    assert (lock_root(tmp_path / "c.zarr") / "studies" / "study-a" / "reconstruct.lock").is_file()
    rows = open_catalog(tmp_path / "c.zarr").rows()
    assert [(r.study, r.subject, r.ny, r.views) for r in rows] == [
        ("study-a", "subj-1", 6, 6),
        ("study-b", "subj-2", 8, 6),
    ]


def test_one_study_catalog_opens_as_its_archive_and_several_need_a_name(tmp_path):
    catalog = create_catalog(tmp_path / "c.zarr")
    add_study(catalog, "study-a")
    assert open_archive(tmp_path / "c.zarr").path == tmp_path / "c.zarr" / "studies" / "study-a"
    add_study(catalog, "study-b")
    with pytest.raises(ArchiveInputError, match="catalog of 2 studies .*study-a, study-b"):
        open_archive(tmp_path / "c.zarr")


def test_upsert_keeps_splits_and_select_checks_its_arguments(tmp_path):
    catalog = create_catalog(tmp_path / "c.zarr")
    add_study(catalog, "study-a")
    catalog.upsert([StudyRow(study="study-x", subject="subj-9", format="dicom", ingest="failed", ingest_error="bad")])
    catalog.assign_splits({"study-a": "test"})
    catalog.upsert([catalog.row("study-a").with_changes(slices=4)])
    assert catalog.row("study-a").split == "test"
    assert [r.study for r in catalog.select()] == ["study-a"]  # failed ingests are never processed
    assert [r.study for r in catalog.select(split="test")] == ["study-a"]
    with pytest.raises(ArchiveInputError, match="not ingested"):
        catalog.select(studies=["study-x"])
    with pytest.raises(ArchiveInputError, match="no studies \\['nope'\\]"):
        catalog.select(studies=["nope"])
    with pytest.raises(ArchiveInputError, match="'train' split"):
        catalog.select(split="train")
    with pytest.raises(ArchiveInputError, match="splits must be one of"):
        catalog.assign_splits({"study-a": "holdout"})
    before = catalog.digest()
    catalog.assign_splits({"study-a": "train"})
    assert catalog.digest() != before


def test_a_table_held_by_another_writer_is_refused_and_nothing_changes(tmp_path):
    catalog = create_catalog(tmp_path / "c.zarr")
    add_study(catalog, "study-a")
    with catalog.lock("table"), pytest.raises(ArchiveLockedError):
        open_catalog(tmp_path / "c.zarr", mode="r+").assign_splits({"study-a": "test"})
    assert catalog.row("study-a").split == ""
    with pytest.raises(ArchiveExistsError, match="not empty"):
        create_catalog(tmp_path / "c.zarr")
    with pytest.raises(ArchiveError, match="read-only"):
        open_catalog(tmp_path / "c.zarr").assign_splits({"study-a": "test"})


def test_damaged_table_is_reported(tmp_path):
    catalog = create_catalog(tmp_path / "c.zarr")
    add_study(catalog, "study-a")
    zarr.open_array(tmp_path / "c.zarr" / "split", mode="r+").resize((3,))
    with pytest.raises(ArchiveSchemaError, match="differ in length"):
        open_catalog(tmp_path / "c.zarr")


def test_schema1_archive_opens_as_one_study_catalog_and_migrates_in_place(tmp_path):
    path = tmp_path / "old.zarr"
    archive = new_archive(path)
    archive.write("fbp_nd", 0, np.ones((1, 6, 5), np.float32))
    group = zarr.open_group(path, mode="r+")
    group.attrs["schema_version"] = 1  # as written before catalogs
    (path / "locks").mkdir(exist_ok=True)
    legacy = open_catalog(path)
    (legacy_row,) = legacy.rows()
    assert legacy.legacy and legacy.study_path(legacy_row.study) == path and legacy_row.ingest == "pending"
    with pytest.raises(ArchiveError, match="need migrate"):
        open_catalog(path, mode="r+").assign_splits({legacy_row.study: "test"})

    catalog = migrate_archive(path)
    (row,) = catalog.rows()
    assert not catalog.legacy and row.study == legacy_row.study and row.slices == 4
    study = catalog.study(row.study)
    assert study.attrs["schema_version"] == 2 and not (study.path / "locks").exists()
    np.testing.assert_array_equal(study.read("fbp_nd", 0, 1), np.ones((1, 6, 5)))
    assert open_archive(path).path == study.path
    with pytest.raises(ArchiveInputError, match="already a catalog"):
        migrate_archive(path)


SUBJECTS = [("s1", "alice", ""), ("s2", "bob", ""), ("s3", "carol", ""), ("s4", "carol", ""), ("s5", "dave", "")]


def test_patient_splits_keep_a_subject_together_and_are_stable():
    splits = patient_splits(SUBJECTS, test=0.25, val=0.25, seed=0)
    assert splits["s3"] == splits["s4"]
    assert sorted(set(splits.values())) == ["test", "train", "val"]
    assert patient_splits(SUBJECTS, test=0.25, val=0.25, seed=0) == splits
    others = [patient_splits(SUBJECTS, test=0.25, val=0.25, seed=seed) for seed in range(1, 6)]
    assert any(other != splits for other in others)
    # a new series of a known subject joins its subject's set; existing assignments never move
    grown = [(k, s, splits[k]) for k, s, _ in SUBJECTS] + [("s6", "carol", ""), ("s7", "erin", "")]
    regrown = patient_splits(grown, test=0.25, val=0.25, seed=0)
    assert regrown["s6"] == splits["s3"] and all(regrown[k] == v for k, v in splits.items())


def test_splits_that_would_leave_a_set_empty_or_straddle_subjects_are_refused():
    with pytest.raises(SplitError, match="val.* empty"):
        patient_splits(SUBJECTS[:2], test=0.2, val=0.1)
    with pytest.raises(SplitError, match="fractions"):
        patient_splits(SUBJECTS, test=0.6, val=0.5)
    pairs = [(k, s) for k, s, _ in SUBJECTS]
    with pytest.raises(SplitError, match="carol would straddle"):
        explicit_splits(pairs, {"train": ["s1", "s3"], "test": ["s4"]})
    with pytest.raises(SplitError, match="train set would be empty"):
        explicit_splits(pairs, {"test": ["s1"]})
    assert explicit_splits(pairs, {"train": ["s1", "s3", "s4"], "test": ["s2"]})["s4"] == "train"


def test_example_cohort_writes_one_axial_series_per_pseudo_patient(tmp_path, head_ct_path, capsys):
    from flows.cli import main
    from storage.readers.series import discover_series, read_series

    assert main(["example-cohort", str(tmp_path / "in"), "--patients", "2", "--slices", "3"]) == 0
    found = discover_series([tmp_path / "in"])
    assert len(found.series) == 2 and not found.skipped
    assert len({series.subject_key for series in found.series}) == 2
    assert read_series(found.series[0]).hu.shape == (3, 256, 256)
    assert main(["example-cohort", str(tmp_path / "more"), "--patients", "30"]) == 1
    assert "ask for fewer" in capsys.readouterr().err

"""The Zarr v3 archive: round trip through xarray, schema checks, doses, region writes, ledger, atomic creation."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import storage.skeleton
from storage.archive import (
    SCHEMA_VERSION,
    ArchiveError,
    ArchiveExistsError,
    ArchiveInputError,
    ArchiveLockedError,
    ArchiveNotFoundError,
    ArchiveSchemaError,
    UnknownDoseError,
    create_archive,
    make_settings,
    open_archive,
    settings_hash,
)

PHYSICS = {"I0": 2.5e5, "sigma_e2": 10.0, "mu_water": 0.0192}
GEOMETRY = {"kind": "fanflat", "n_views": 6, "det_spacing_mm": np.float32(1.5)}


def make_volume(n_slices: int = 4, ny: int = 6, nx: int = 5) -> np.ndarray:
    """A small deterministic HU volume."""
    rng = np.random.default_rng(0)
    return rng.uniform(-1024, 2000, size=(n_slices, ny, nx)).astype(np.float32)


def new_archive(path: Path, image: np.ndarray | None = None, **overrides):
    """create_archive with small defaults; keyword overrides replace any argument."""
    image = make_volume() if image is None else image
    arguments = dict(
        image_hu=image,
        spacing_mm=(1.5, 0.9, 0.9),
        z_mm=np.arange(image.shape[0]) * 1.5 + 10.0,
        doses=[0.25, 0.5],
        geometry=GEOMETRY,
        physics=PHYSICS,
        seed=7,
        source={"format": "npy", "n_files": 1, "subject_key": "subj-1"},
        sinogram_shape=(6, 8),
    )
    arguments.update(overrides)
    return create_archive(path, **arguments)


def chunk_file_digests(store: Path) -> dict[str, str]:
    """sha256 of every chunk file (under */c/) of a store."""
    digests = {}
    for path in store.rglob("*"):
        parts = path.relative_to(store).parts
        if path.is_file() and len(parts) > 2 and parts[1] == "c":
            digests["/".join(parts)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_round_trip_volume_to_xarray(tmp_path):
    image = make_volume()
    archive = new_archive(tmp_path / "a.zarr", image)
    ds = archive.dataset
    np.testing.assert_array_equal(ds.image_hu.values, image)
    np.testing.assert_allclose(ds.z_mm.values, np.arange(4) * 1.5 + 10.0)
    assert list(ds.dose.values) == [0.25, 0.5]
    assert ds.sel(dose=0.25).proj_ld.dims == ("slice", "view", "det")
    assert ds.sel(dose=0.25).proj_ld.shape == (4, 6, 8)
    assert np.isnan(ds.fbp_ld.values).all(), "unwritten chunks must read as NaN"
    assert ds.attrs["schema_version"] == SCHEMA_VERSION
    assert ds.attrs["physics"] == PHYSICS
    assert ds.attrs["spacing_mm"] == [1.5, 0.9, 0.9]
    assert archive.n_slices == 4 and archive.doses == [0.25, 0.5]


def test_settings_compare_with_make_settings(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    expected = make_settings(
        geometry=GEOMETRY, physics=PHYSICS, seed=7, sinogram_shape=(6, 8), image_shape=(4, 6, 5), subject_key="subj-1"
    )
    assert archive.settings == expected
    assert archive.settings_hash == settings_hash(expected)
    other = dict(expected, physics={**PHYSICS, "I0": 1e5})
    assert settings_hash(other) != archive.settings_hash


def test_unwritten_chunks_cost_nothing(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    assert not (archive.path / "proj_ld" / "c").exists()
    assert not (archive.path / "status_reconstruct" / "c").exists()


def test_write_then_read_region(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    data = np.full((2, 6, 8), 0.5, dtype=np.float32)
    archive.write("proj_ld", 1, data, dose=0.5)
    got = archive.read("proj_ld", 0, 4, dose=0.5)
    assert np.isnan(got[0]).all() and np.isnan(got[3]).all()
    np.testing.assert_array_equal(got[1:3], data)
    assert np.isnan(archive.read("proj_ld", 0, 4, dose=0.25)).all()
    np.testing.assert_array_equal(archive.dataset.sel(dose=0.5).proj_ld.values[1:3], data)


def test_write_refuses_wrong_shape_range_and_nonfinite(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    with pytest.raises(ArchiveInputError, match=r"shape \(n_slices, 6, 8\)"):
        archive.write("proj_nd", 0, np.zeros((1, 8, 6)))
    with pytest.raises(ArchiveInputError, match="outside"):
        archive.write("proj_nd", 3, np.zeros((2, 6, 8)))
    with pytest.raises(ArchiveInputError, match="non-finite"):
        archive.write("fbp_nd", 0, np.full((1, 6, 5), np.nan))
    with pytest.raises(ArchiveInputError, match="per dose"):
        archive.write("fbp_ld", 0, np.zeros((1, 6, 5)))
    with pytest.raises(ArchiveInputError, match="no dose dim"):
        archive.write("fbp_nd", 0, np.zeros((1, 6, 5)), dose=0.25)
    with pytest.raises(ArchiveInputError, match="unknown variable"):
        archive.write("nope", 0, np.zeros((1, 6, 5)))
    assert np.isnan(archive.read("proj_nd", 0, 4)).all(), "a refused write must leave nothing behind"


def test_unknown_dose_lists_the_doses(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    assert archive.dose_index(0.5 + 1e-12) == 1
    with pytest.raises(UnknownDoseError, match=r"\[0.25, 0.5\]"):
        archive.dose_index(0.1)
    with pytest.raises(ValueError):
        archive.read("need", 0, 1, dose=0.1)


def test_add_doses_keeps_existing_bytes(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    archive.write("proj_ld", 0, np.full((4, 6, 8), 0.3), dose=0.25)
    archive.mark("ingest_ld", range(4), "done", dose=0.25, produced_by="k1")
    before = chunk_file_digests(archive.path)
    assert len(before) > 8

    assert archive.add_doses([0.25, 0.1, 0.05]) == [0.1, 0.05]
    after = chunk_file_digests(archive.path)
    assert {key: after[key] for key in before} == before
    assert archive.doses == [0.25, 0.5, 0.1, 0.05]
    reopened = open_archive(archive.path)
    np.testing.assert_array_equal(reopened.read("proj_ld", 0, 4, dose=0.25), np.full((4, 6, 8), 0.3, np.float32))
    assert np.isnan(reopened.read("proj_ld", 0, 4, dose=0.05)).all()
    assert reopened.produced_by("ingest_ld", 0.25) == ["k1"] * 4
    assert reopened.dataset.sel(dose=0.05).status_ingest_ld.values.tolist() == [0] * 4
    assert archive.add_doses([0.1]) == []


@pytest.mark.parametrize("doses", [[0.0], [1.5], [float("nan")], [0.25, 0.25]])
def test_bad_doses_are_refused(tmp_path, doses):
    archive = new_archive(tmp_path / "a.zarr")
    with pytest.raises(ArchiveInputError):
        archive.add_doses(doses)
    assert archive.doses == [0.25, 0.5]


def test_ledger_marks_producers_and_errors(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    archive.mark("reconstruct", [0, 2], "done", dose=0.5, produced_by="model-v3")
    archive.mark("reconstruct", 3, "failed", dose=0.5, error="CUDA out of memory")
    archive.mark("ingest", range(4), "done", produced_by="abc")
    assert archive.ledger("reconstruct").tolist() == [[0, 0, 0, 0], [1, 0, 1, 2]]
    assert archive.ledger("ingest").tolist() == [1, 1, 1, 1]
    assert archive.produced_by("reconstruct", 0.5) == ["model-v3", "", "model-v3", ""]
    assert archive.errors("reconstruct", 0.5) == {3: "CUDA out of memory"}
    assert archive.todo("reconstruct", 0.5) == [1, 3]
    assert archive.todo("reconstruct", 0.5, produced_by="model-v4") == [0, 1, 2, 3]
    archive.mark("reconstruct", 3, "pending", dose=0.5)
    assert archive.errors("reconstruct", 0.5) == {}
    ds = archive.dataset.sel(dose=0.5)
    assert ds.status_reconstruct.values.tolist() == [1, 0, 1, 0]
    assert ds.status_reconstruct_produced_by.values.tolist() == ["model-v3", "", "model-v3", ""]
    summary = archive.describe()
    assert "reconstruct dose 0.5: 2 / 0 / 2" in summary and "ingest: 4 / 0 / 0" in summary


def test_ledger_refuses_bad_arguments(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    with pytest.raises(ArchiveInputError, match="unknown ledger state"):
        archive.mark("ingest", [0], "finished")
    with pytest.raises(ArchiveInputError, match="unknown ledger"):
        archive.mark("train", [0], "done")
    with pytest.raises(ArchiveInputError, match=r"\[0, 4\)"):
        archive.mark("ingest", [4], "done")
    with pytest.raises(ArchiveInputError, match="no dose dim"):
        archive.mark("ingest", [0], "done", dose=0.25)
    with pytest.raises(ArchiveInputError, match="per dose"):
        archive.mark("reconstruct", [0], "done")
    with pytest.raises(ArchiveInputError, match="one-line"):
        archive.mark("ingest", [0], "done", produced_by="a\nb")


def test_read_only_archive_refuses_writes(tmp_path):
    new_archive(tmp_path / "a.zarr")
    archive = open_archive(tmp_path / "a.zarr")
    with pytest.raises(ArchiveError, match="read-only"):
        archive.write("proj_nd", 0, np.zeros((1, 6, 8)))
    with pytest.raises(ArchiveError, match="read-only"):
        archive.mark("ingest", [0], "done")
    with pytest.raises(ArchiveError, match="read-only"):
        archive.add_doses([0.1])


def test_schema_errors_name_the_problem(tmp_path):
    with pytest.raises(ArchiveNotFoundError):
        open_archive(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(ArchiveSchemaError, match="not a readable Zarr v3 group"):
        open_archive(tmp_path / "plain")

    archive = new_archive(tmp_path / "a.zarr")
    group = zarr.open_group(archive.path, mode="r+")
    group.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ArchiveSchemaError, match="schema_version"):
        open_archive(archive.path)
    group.attrs["schema_version"] = SCHEMA_VERSION
    open_archive(archive.path)
    shutil.rmtree(archive.path / "fbp_nd")
    with pytest.raises(ArchiveSchemaError, match="fbp_nd"):
        open_archive(archive.path)


def test_schema_error_on_inconsistent_dose_lengths(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    zarr.open_array(archive.path / "need", mode="r+").resize((3, 4, 6, 5))
    with pytest.raises(ArchiveSchemaError, match="'dose'"):
        open_archive(archive.path)


def test_create_refuses_bad_inputs(tmp_path):
    image = make_volume()
    image[1, 2, 3] = np.inf
    with pytest.raises(ArchiveInputError, match="non-finite"):
        new_archive(tmp_path / "a.zarr", image)
    with pytest.raises(ArchiveInputError, match="physics must be a non-empty dict"):
        new_archive(tmp_path / "a.zarr", physics={})
    with pytest.raises(ArchiveInputError, match="no NaN/inf"):
        new_archive(tmp_path / "a.zarr", physics={**PHYSICS, "I0": float("nan")})
    with pytest.raises(ArchiveInputError, match="must be numbers"):
        new_archive(tmp_path / "a.zarr", physics={**PHYSICS, "I0": "high"})
    with pytest.raises(ArchiveInputError, match="strictly increasing"):
        new_archive(tmp_path / "a.zarr", z_mm=[0.0, 1.0, 1.0, 2.0])
    with pytest.raises(ArchiveInputError, match="spacing_mm"):
        new_archive(tmp_path / "a.zarr", spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ArchiveInputError, match="JSON-able"):
        new_archive(tmp_path / "a.zarr", source={"scanner": object()})
    assert not (tmp_path / "a.zarr").exists()


def test_create_over_foreign_path_is_refused(tmp_path):
    a_file = tmp_path / "file.zarr"
    a_file.write_text("precious")
    foreign_dir = tmp_path / "dir.zarr"
    foreign_dir.mkdir()
    (foreign_dir / "data.bin").write_bytes(b"precious")
    for path in (a_file, foreign_dir):
        for overwrite in (False, True):
            with pytest.raises(ArchiveExistsError, match="not a NEED archive"):
                new_archive(path, overwrite=overwrite)
    assert a_file.read_text() == "precious"
    assert (foreign_dir / "data.bin").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.zarr", "file.zarr"]


def test_create_in_empty_directory(tmp_path):
    (tmp_path / "a.zarr").mkdir()
    assert new_archive(tmp_path / "a.zarr").n_slices == 4


def test_existing_archive_needs_overwrite(tmp_path):
    path = tmp_path / "a.zarr"
    new_archive(path)
    with pytest.raises(ArchiveExistsError, match="overwrite=True"):
        new_archive(path, seed=8)
    assert open_archive(path).settings["seed"] == 7
    replaced = new_archive(path, seed=8, image=make_volume(n_slices=3), z_mm=[0.0, 1.5, 3.0], overwrite=True)
    assert replaced.settings["seed"] == 8 and replaced.n_slices == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"], "no staging or aside directory may remain"


def test_failed_create_leaves_nothing(tmp_path, monkeypatch):
    real_allocate = storage.skeleton._allocate
    calls = []

    def allocate_then_crash(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 6:
            raise RuntimeError("simulated crash during creation")
        return real_allocate(*args, **kwargs)

    monkeypatch.setattr(storage.skeleton, "_allocate", allocate_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        new_archive(tmp_path / "a.zarr")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_archive(tmp_path, monkeypatch):
    path = tmp_path / "a.zarr"
    new_archive(path)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(storage.skeleton, "_allocate", crash)
    with pytest.raises(RuntimeError):
        new_archive(path, seed=9, overwrite=True)
    assert open_archive(path).settings["seed"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["a.zarr"]


def test_lock_name_is_checked(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    with pytest.raises(ArchiveInputError, match="lock name"):
        with archive.lock("../escape"):
            pass
    with archive.lock("reconstruct"):
        assert (archive.path / "locks" / "reconstruct.lock").is_file()
    with archive.lock("reconstruct"):
        pass


def test_overwrite_refused_while_locked_in_this_process(tmp_path):
    path = tmp_path / "a.zarr"
    archive = new_archive(path)
    with archive.lock("reconstruct"):
        with pytest.raises(ArchiveLockedError, match="reconstruct"):
            new_archive(path, overwrite=True)
    assert open_archive(path).n_slices == 4


def test_store_attrs_are_plain_json(tmp_path):
    archive = new_archive(tmp_path / "a.zarr")
    meta = json.loads((archive.path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["attributes"]["geometry"]["det_spacing_mm"] == 1.5
    assert meta["attributes"]["settings_hash"] == archive.settings_hash

"""The ingest flow end to end on a small real volume: archive contents, reruns, new doses, refusals, reproducibility."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from flows.cli import main
from flows.ingest import IngestSettingsMismatch, run_ingest
from storage.archive import ArchiveError, open_archive
from storage.catalog import open_catalog
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy


@pytest.fixture(scope="module")
def small_head_npy(tmp_path_factory, head_ct_path):
    """Six real head-CT slices at 64x64, saved as .npy (the reader needs the spacing given)."""
    return write_small_head_npy(head_ct_path, tmp_path_factory.mktemp("src"))


@pytest.fixture
def ingest(prefect_harness, dask_address):
    """Run the ingest flow on the session's Dask cluster with small-test defaults."""

    def run(source, archive, **overrides):
        params = dict(
            sources=source,
            catalog=str(archive),
            doses=[0.5, 0.1],
            seed=3,
            chunk_slices=2,
            spacing_mm=SMALL_SPACING,
            dask_address=dask_address,
        )
        params.update(overrides)
        return run_ingest(**params)

    return run


def test_ingest_writes_every_slice_and_dose(ingest, small_head_npy, tmp_path):
    summary = ingest(small_head_npy, tmp_path / "a.zarr")
    assert summary["processed"] == 6
    archive = open_archive(tmp_path / "a.zarr")
    ds = archive.dataset
    assert np.all(archive.ledger("ingest") == archive.DONE)
    assert np.all(archive.ledger("ingest_ld") == archive.DONE)
    np.testing.assert_array_equal(ds.image_hu.values, np.load(small_head_npy))
    proj_nd = ds.proj_nd.values
    assert np.isfinite(proj_nd).all() and proj_nd.shape[0] == 6
    # fbp_nd is the normal-dose image: close to the source volume (within the noise of a 64^2 FBP)
    assert np.median(np.abs(ds.fbp_nd.values - ds.image_hu.values)) < 60
    # lower dose -> noisier transmission around the same mean
    noise = {d: float(np.std(ds.proj_ld.sel(dose=d).values - proj_nd)) for d in (0.5, 0.1)}
    assert noise[0.1] > 1.8 * noise[0.5]


def test_rerun_and_new_dose_compute_only_what_is_missing(ingest, small_head_npy, tmp_path):
    path = tmp_path / "b.zarr"
    ingest(small_head_npy, path)
    before = open_archive(path).dataset
    nd, ld = before.proj_nd.values.copy(), before.proj_ld.sel(dose=0.1).values.copy()

    assert ingest(small_head_npy, path)["processed"] == 0
    summary = ingest(small_head_npy, path, doses=[0.5, 0.1, 0.25])
    after = open_archive(path)
    assert sorted(after.doses) == [0.1, 0.25, 0.5] and summary["processed"] == 6
    np.testing.assert_array_equal(after.dataset.proj_nd.values, nd)
    np.testing.assert_array_equal(after.dataset.proj_ld.sel(dose=0.1).values, ld)
    assert np.isfinite(after.dataset.proj_ld.sel(dose=0.25).values).all()


def test_other_settings_are_refused_unless_overwrite(ingest, small_head_npy, tmp_path):
    path = tmp_path / "c.zarr"
    ingest(small_head_npy, path)
    nd = open_archive(path).dataset.proj_nd.values.copy()
    with pytest.raises(IngestSettingsMismatch, match="seed"):
        ingest(small_head_npy, path, seed=4)
    np.testing.assert_array_equal(open_archive(path).dataset.proj_nd.values, nd)
    ingest(small_head_npy, path, seed=4, overwrite=True)
    replaced = open_archive(path)
    assert replaced.settings["seed"] == 4
    assert not np.array_equal(replaced.dataset.proj_nd.values, nd)


def test_an_archive_simulated_by_older_rules_is_refused(ingest, small_head_npy, tmp_path):
    path = tmp_path / "old.zarr"
    ingest(small_head_npy, path)
    group = zarr.open_group(open_archive(path).path, mode="r+")
    del group.attrs["simulator"]  # as written before the simulator version was recorded
    with pytest.raises(IngestSettingsMismatch, match="simulator"):
        ingest(small_head_npy, path)


def test_noise_depends_on_seed_not_on_chunking(ingest, small_head_npy, tmp_path):
    ingest(small_head_npy, tmp_path / "d.zarr", chunk_slices=4)
    ingest(small_head_npy, tmp_path / "e.zarr", chunk_slices=1)
    a, b = open_archive(tmp_path / "d.zarr").dataset, open_archive(tmp_path / "e.zarr").dataset
    np.testing.assert_array_equal(a.proj_ld.values, b.proj_ld.values)
    np.testing.assert_array_equal(a.fbp_nd.values, b.fbp_nd.values)


def test_bad_dose_is_refused_before_anything_is_written(ingest, small_head_npy, tmp_path):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ingest(small_head_npy, tmp_path / "f.zarr", doses=[0.5, 1.5])
    assert not (tmp_path / "f.zarr").exists()


def test_an_archive_from_before_catalogs_migrates_and_is_found_by_the_next_ingest(ingest, small_head_npy, tmp_path):
    ingest(small_head_npy, tmp_path / "new.zarr")
    study = open_archive(tmp_path / "new.zarr").path
    old = tmp_path / "old.zarr"
    shutil.move(study, old)  # a lone schema-1 archive, as written before catalogs
    zarr.open_group(old, mode="r+").attrs["schema_version"] = 1
    before = open_archive(old).dataset.proj_ld.values.copy()
    with pytest.raises(ArchiveError, match="need migrate"):
        ingest(small_head_npy, old)
    assert main(["migrate", str(old), "--source", small_head_npy]) == 0
    assert ingest(small_head_npy, old)["processed"] == 0
    (row,) = open_catalog(old).rows()
    assert row.study == study.name and row.ingest == "done"
    np.testing.assert_array_equal(open_archive(old).dataset.proj_ld.values, before)

"""A study's source is known by its content: a changed source under the same study key is refused (naming the study,
the source and what changed) unless --overwrite, an unchanged rerun reads nothing, and a study ingested before
content digests gets one on its next ingest."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr

from flows.ingest import SourceChanged, run_ingest, sources_to_check
from storage.catalog import open_catalog
from storage.readers.series import discover_series, read_series
from storage.source_identity import content_changes, stored_identity, study_digest, volume_digest
from tests.cohort_fixtures import add_series
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy


@pytest.fixture
def ingest(prefect_harness, dask_address):
    """Run the ingest flow on the session's Dask cluster: one dose, small chunks."""

    def run(sources, catalog, **overrides):
        params = dict(sources=sources, catalog=str(catalog), doses=[0.5], seed=1, chunk_slices=4)
        params.update(overrides)
        return run_ingest(dask_address=dask_address, **params)

    return run


def only_key(source: Path) -> str:
    (series,) = discover_series([source]).series
    return series.key


def stored_hu(catalog: Path, key: str) -> np.ndarray:
    archive = open_catalog(catalog).study(key)
    return archive.read("image_hu", 0, archive.n_slices)


def brighten(files: list[Path], offset: int = 40) -> None:
    """Change the pixels of `files` in place, keeping every UID (a re-export of a series with other pixels)."""
    for path in files:
        image = pydicom.dcmread(path)
        image.PixelData = (image.pixel_array + offset).astype(image.pixel_array.dtype).tobytes()
        image.save_as(path)


def test_two_volumes_of_the_same_name_are_two_studies(ingest, head_ct_path, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    hu = np.load(write_small_head_npy(head_ct_path, tmp_path, n_slices=4))
    np.save(first / "ct.npy", hu)
    np.save(second / "ct.npy", hu[::-1] + 10)
    catalog = tmp_path / "cat.zarr"
    ingest(str(first / "ct.npy"), catalog, spacing_mm=SMALL_SPACING)
    summary = ingest(str(second / "ct.npy"), catalog, spacing_mm=SMALL_SPACING)
    assert summary["processed"] == 4 and len(summary["new"]) == 1
    assert len(open_catalog(catalog).rows()) == 2
    np.testing.assert_array_equal(stored_hu(catalog, only_key(first / "ct.npy")), hu)
    np.testing.assert_array_equal(stored_hu(catalog, only_key(second / "ct.npy")), hu[::-1] + 10)


def test_changed_dicom_pixels_are_refused_then_rebuilt_with_overwrite(ingest, head_ct_path, tmp_path):
    folder = add_series(head_ct_path, tmp_path / "in", "p1_s1", "PHI-ID-1", 0)
    catalog = tmp_path / "cat.zarr"
    ingest(str(folder), catalog)
    key = only_key(folder)
    before = stored_hu(catalog, key)
    identity = stored_identity(open_catalog(catalog).study(key))
    assert identity is not None and identity["content"] and identity["files"]

    assert ingest(str(folder), catalog)["processed"] == 0  # unchanged: a no-op
    brighten(sorted(folder.iterdir())[:3])
    assert only_key(folder) == key  # same SeriesInstanceUID: the same study
    with pytest.raises(SourceChanged) as refused:
        ingest(str(folder), catalog)
    message = str(refused.value)
    assert key in message and "p1_s1" in message and "pixels of 3 of 4 slices differ" in message
    assert "--overwrite" in message and "another catalog" in message
    np.testing.assert_array_equal(stored_hu(catalog, key), before)  # nothing was changed

    summary = ingest(str(folder), catalog, overwrite=True)
    assert summary["processed"] == 4
    (series,) = discover_series([folder]).series
    now = read_series(series)
    np.testing.assert_array_equal(stored_hu(catalog, key), now.hu)
    assert stored_identity(open_catalog(catalog).study(key))["content"] == volume_digest(now)
    assert ingest(str(folder), catalog)["processed"] == 0


def test_changed_spacing_is_refused(ingest, head_ct_path, tmp_path):
    source = write_small_head_npy(head_ct_path, tmp_path, n_slices=4)
    catalog = tmp_path / "cat.zarr"
    ingest(source, catalog, spacing_mm=SMALL_SPACING)
    with pytest.raises(SourceChanged, match="slice spacing 3→2 mm"):
        ingest(source, catalog, spacing_mm=[2.0, *SMALL_SPACING[1:]])


def test_unchanged_rerun_reads_nothing_and_old_studies_get_a_digest(ingest, head_ct_path, tmp_path):
    folder = add_series(head_ct_path, tmp_path / "in", "p2_s1", "PHI-ID-2", 20)
    catalog = tmp_path / "cat.zarr"
    ingest(str(folder), catalog)
    series = discover_series([folder]).series
    store = open_catalog(catalog)
    assert sources_to_check(store, series, [], None) == []  # files untouched: not decoded again
    for path in folder.iterdir():  # touched, same content: checked, then its new fingerprint is recorded
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert sources_to_check(store, series, [], None) == series
    assert ingest(str(folder), catalog)["processed"] == 0
    assert sources_to_check(store, series, [], None) == []

    key = series[0].key
    group = zarr.open_group(store.study_path(key), mode="r+", zarr_format=3)
    group.attrs["source"] = {k: v for k, v in dict(group.attrs["source"]).items() if k != "identity"}  # pre-digest
    assert stored_identity(store.study(key)) is None
    assert ingest(str(folder), catalog)["processed"] == 0  # not refused
    assert stored_identity(store.study(key))["content"] == volume_digest(read_series(series[0]))


def test_an_old_study_whose_source_changed_is_refused_from_its_next_ingest(ingest, head_ct_path, tmp_path):
    folder = add_series(head_ct_path, tmp_path / "in", "p4_s1", "PHI-ID-4", 40)
    catalog = tmp_path / "cat.zarr"
    ingest(str(folder), catalog)
    key = only_key(folder)
    group = zarr.open_group(open_catalog(catalog).study_path(key), mode="r+", zarr_format=3)
    group.attrs["source"] = {k: v for k, v in dict(group.attrs["source"]).items() if k != "identity"}  # pre-digest
    brighten(sorted(folder.iterdir())[:1])
    assert ingest(str(folder), catalog)["processed"] == 0  # not refused: it had no digest; the digest of what it holds
    assert stored_identity(open_catalog(catalog).study(key)) == {
        "version": 1,
        "content": study_digest(open_catalog(catalog).study(key)),
        "files": "",
    }
    with pytest.raises(SourceChanged, match="pixels of 1 of 4 slices differ"):
        ingest(str(folder), catalog)
    assert ingest(str(folder), catalog, overwrite=True)["processed"] == 4


def test_content_changes_name_what_differs(ingest, head_ct_path, tmp_path):
    folder = add_series(head_ct_path, tmp_path / "in", "p3_s1", "PHI-ID-3", 70, n_slices=3)
    catalog = tmp_path / "cat.zarr"
    ingest(str(folder), catalog)
    (series,) = discover_series([folder]).series
    archive = open_catalog(catalog).study(series.key)
    volume = read_series(series)
    assert content_changes(archive, volume) == []
    more = dataclasses.replace(
        volume, hu=np.concatenate([volume.hu, volume.hu[:2]]), z_mm=np.arange(5) * 3.0 + volume.z_mm[0]
    )
    assert content_changes(archive, more) == ["slices 3→5"]
    tilted = dataclasses.replace(volume, source={**volume.source, "orientation": [1, 0, 0, 0, 0.98, 0.2]})
    assert content_changes(archive, tilted) == ["orientation 1,0,0,0,1,0→1,0,0,0,0.98,0.2"]
    moved = dataclasses.replace(volume, z_mm=volume.z_mm + 5.0)
    assert content_changes(archive, moved) == [
        f"slice positions moved (first {volume.z_mm[0]:g}→{volume.z_mm[0] + 5:g} mm)"
    ]
    assert volume_digest(moved) != volume_digest(volume)

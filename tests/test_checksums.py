"""Corruption is caught by checksums: a flipped bit in a stored chunk is found by `need verify`, fails only its own
slice in a reconstruct (no retry), and after `need verify --repair` the ordinary reruns (ingest, then reconstruct)
recompute exactly what an uninterrupted run wrote."""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from zarr.codecs import ZstdCodec

import storage.skeleton
from flows.cli import run_verify
from flows.ingest import run_ingest
from flows.reconstruct import ReconstructFailed, run_reconstruct
from storage.archive import CorruptChunkError, open_archive
from storage.verify import verify_catalog
from tasks.quick_models import write_tiny_models
from tasks.reconstruct import WITHOUT_CONTEXT
from tests.pipeline_fixtures import SMALL_SPACING, only_study, write_small_head_npy
from tests.test_archive import new_archive

OUTPUTS = ("fbp_ld", "spdiff_fbp", "need")


def chunk_file(study: Path, var: str, *coords: int) -> Path:
    """The stored chunk of `var` at chunk coords (zarr v3 default key encoding c/<i>/<j>/...)."""
    return study.joinpath(var, "c", *map(str, coords))


def flip_a_bit(path: Path) -> bytes:
    """Flip one bit in the middle of a stored chunk (inside the compressed payload); return the original bytes."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x08
    path.write_bytes(bytes(damaged))
    return original


def written_archive(path: Path):
    """A 4-slice archive with proj_ld written at both doses and marked ingested."""
    archive = new_archive(path)
    rng = np.random.default_rng(3)
    for dose in archive.doses:
        archive.write("proj_ld", 0, rng.uniform(0.1, 1.0, size=(4, 6, 8)).astype(np.float32), dose=dose)
        archive.mark("ingest_ld", range(4), "done", dose=dose)
    return archive


# --- the archive ---------------------------------------------------------------------------------------------------


def test_a_flipped_bit_is_a_corrupt_chunk_error_naming_the_slice_and_dose(tmp_path):
    archive = written_archive(tmp_path / "a.zarr")
    intact = archive.read("proj_ld", 0, 4, dose=0.5)
    flip_a_bit(chunk_file(archive.path, "proj_ld", 1, 2, 0, 0))  # dose index 1 = 0.5, slice 2

    with pytest.raises(CorruptChunkError) as caught:
        archive.read("proj_ld", 0, 4, dose=0.5)
    error = caught.value
    assert (error.variable, sorted(error.slices), error.dose) == ("proj_ld", [2], 0.5)
    assert f"{archive.path}: proj_ld slice 2 at dose 0.5 is corrupt (checksum mismatch" in str(error)
    assert "need verify CATALOG --repair" in str(error)
    assert pickle.loads(pickle.dumps(error)).slices == error.slices  # crosses Dask process boundaries intact

    values, corrupt = archive.read_intact("proj_ld", 0, 4, dose=0.5)
    assert corrupt is not None and sorted(corrupt.slices) == [2]
    assert np.isnan(values[2]).all()
    np.testing.assert_array_equal(values[[0, 1, 3]], intact[[0, 1, 3]])
    np.testing.assert_array_equal(archive.read("proj_ld", 0, 2, dose=0.5), intact[:2])  # other slices still read
    assert np.isfinite(archive.read("proj_ld", 0, 4, dose=0.25)).all()  # the other dose is untouched


def test_verify_lists_corrupt_and_missing_chunks_and_stays_quiet_on_a_sound_store(tmp_path):
    archive = written_archive(tmp_path / "a.zarr")
    sound = verify_catalog(archive.path, progress=False)
    assert sound.ok and sound.chunks > 0 and not sound.notes, sound.format()
    assert "checksums: crc32c on every chunk" in archive.describe()

    flip_a_bit(chunk_file(archive.path, "proj_ld", 0, 1, 0, 0))
    chunk_file(archive.path, "proj_ld", 1, 3, 0, 0).unlink()  # ingest_ld says done
    flip_a_bit(chunk_file(archive.path, "status_ingest_ld", 0, 0))
    report = verify_catalog(archive.path, progress=False)
    assert not report.ok
    lines = report.format().splitlines()
    assert any("proj_ld slice 1 at dose 0.25 is corrupt (checksum mismatch" in line for line in lines), lines
    assert any("proj_ld slice 3 at dose 0.5 is missing (no chunk proj_ld/c/1/3/0/0" in line for line in lines)
    assert any("status_ingest_ld slice 0 at dose 0.25 is corrupt" in line for line in lines)
    assert lines[-1] == f"3 bad chunks of {sound.chunks - 1} in 1 study"


def test_a_store_made_before_checksums_opens_works_and_verifies_decodability_only(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.skeleton, "COMPRESSORS", (ZstdCodec(level=3),))
    archive = written_archive(tmp_path / "old.zarr")
    monkeypatch.undo()
    archive = open_archive(archive.path, mode="r+")
    assert not archive.checksummed and "checksums: none" in archive.describe()
    archive.write("fbp_ld", 1, np.zeros((1, 6, 5), dtype=np.float32), dose=0.25)
    report = verify_catalog(archive.path, progress=False)
    assert report.ok and any("no checksums" in note for note in report.notes), report.format()

    chunk_file(archive.path, "proj_ld", 0, 2, 0, 0).write_bytes(b"garbage, not zstd")
    report = verify_catalog(archive.path, progress=False)
    assert [line for line in report.problems if "proj_ld slice 2 at dose 0.25 is corrupt" in line], report.format()
    assert "does not decode: RuntimeError" in report.problems[0]


# --- the pipeline --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, head_ct_path, prefect_harness, dask_address):
    """An ingested 6-slice catalog at dose 0.1, tiny models, and an uninterrupted reconstruction of it."""
    root = tmp_path_factory.mktemp("checksums")
    pristine = root / "pristine.zarr"
    source = write_small_head_npy(head_ct_path, root)
    run_ingest(**ingest_params(source, pristine, dask_address))
    models = write_tiny_models(pristine, root)
    clean = root / "clean.zarr"
    shutil.copytree(pristine, clean)
    summary = run_reconstruct(**reconstruct_params(clean, models, dask_address))
    return pristine, models, only_study(summary)["result_key"], stored_outputs(clean), source


def ingest_params(source: str, catalog: Path, dask_address: str) -> dict:
    return dict(
        sources=source,
        catalog=str(catalog),
        doses=[0.1],
        seed=1,
        chunk_slices=3,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )


def reconstruct_params(catalog: Path, models: tuple[str, str], dask_address: str) -> dict:
    return dict(
        catalog=str(catalog),
        doses=[0.1],
        spdiff=models[0],
        dgdiff=models[1],
        chunk_slices=2,
        device="cpu",
        dask_address=dask_address,
        tracking=False,
    )


def stored_outputs(catalog: Path) -> dict[str, np.ndarray]:
    ds = open_archive(catalog).dataset
    return {name: ds[name].values.copy() for name in OUTPUTS}


def latest_task_run_counts() -> list[int]:
    """How many times each task of the latest reconstruct flow run ran (1 = no retry)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["reconstruct"])), sort=FlowRunSort.START_TIME_DESC, limit=1
        )
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    return [task_run.run_count for task_run in task_runs]


def test_a_flipped_bit_fails_only_its_slice_once_and_the_reruns_after_repair_match_an_uninterrupted_run(
    prepared, dask_address, tmp_path, capsys
):
    pristine, models, key, uninterrupted, source = prepared
    catalog = tmp_path / "catalog.zarr"
    shutil.copytree(pristine, catalog)
    study = open_archive(catalog).path
    chunk = chunk_file(study, "proj_ld", 0, 3, 0, 0)
    original = flip_a_bit(chunk)

    with pytest.raises(RuntimeError, match="1 bad chunks of .*--repair"):
        run_verify(argparse.Namespace(catalog=str(catalog), repair=False))
    printed = capsys.readouterr().out
    assert f"{study.name}: proj_ld slice 3 at dose 0.1 is corrupt (checksum mismatch" in printed, printed

    params = reconstruct_params(catalog, models, dask_address)
    with pytest.raises(ReconstructFailed, match=r"dose 0.1: 1 slice\(s\)"):
        run_reconstruct(**params)
    assert latest_task_run_counts() == [1, 1, 1]  # three cells, none retried
    archive = open_archive(catalog)
    errors = archive.errors("reconstruct", dose=0.1)
    assert list(errors) == [3]
    assert errors[3].startswith(f"{study.name}: proj_ld slice 3 at dose 0.1 is corrupt (checksum mismatch")
    assert "need ingest" in errors[3]
    # slice 2 (its cell) and 4-5 (the next cell, which reads slice 3 as context) are done as at a volume edge
    produced = archive.produced_by("reconstruct", dose=0.1)
    assert produced[:2] == [key, key]
    assert [produced[s] for s in (2, 4, 5)] == [key + WITHOUT_CONTEXT] * 3
    assert archive.stale_slices("reconstruct", 0.1, key).tolist() == [2, 3, 4, 5]
    before = stored_outputs(catalog)

    run_verify(argparse.Namespace(catalog=str(catalog), repair=True))
    assert f"{study.name}: ingest_ld slices [3] at dose 0.1 set to pending" in capsys.readouterr().out
    assert not chunk.exists() and open_archive(catalog).todo("ingest_ld", dose=0.1) == [3]
    run_ingest(**ingest_params(source, catalog, dask_address))  # the same command as the first ingest
    assert chunk.read_bytes() == original and verify_catalog(catalog, progress=False).ok
    redone = only_study(run_reconstruct(**params))["doses"][0.1]
    assert redone["chunks"] == 2 and sorted(redone["done"]) == [2, 3, 4, 5]
    after = stored_outputs(catalog)
    for name in OUTPUTS:
        np.testing.assert_array_equal(after[name][:, :2], before[name][:, :2])
        np.testing.assert_array_equal(after[name], uninterrupted[name])

"""The archive under several processes: concurrent region writes of different slices, and locks across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from storage.archive import ArchiveLockedError, create_archive, open_archive

N_SLICES, SINOGRAM = 40, (5, 7)
SPAWN = multiprocessing.get_context("spawn")


def slice_values(index: int) -> np.ndarray:
    """The sinogram a worker writes for slice `index` (distinct per slice)."""
    return np.full((1, *SINOGRAM), index + 0.5, dtype=np.float32)


def write_slices(path: str, slices: list[int], producer: str, start_together) -> None:
    """Worker: write data then mark done, one slice at a time, for the given slices at dose 0.25."""
    archive = open_archive(path, mode="r+")
    start_together.wait(60)
    for index in slices:
        archive.write("proj_ld", index, slice_values(index), dose=0.25)
        archive.mark("ingest_ld", [index], "done", dose=0.25, produced_by=producer)


def hold_lock(path: str, name: str, acquired, release) -> None:
    """Worker: hold lock `name` of the archive until told to release it."""
    with open_archive(path).lock(name):
        acquired.set()
        release.wait(60)


@pytest.fixture()
def archive_path(tmp_path: Path) -> Path:
    path = tmp_path / "a.zarr"
    create_archive(
        path,
        image_hu=np.zeros((N_SLICES, 4, 4), np.float32),
        spacing_mm=(1.0, 1.0, 1.0),
        z_mm=np.arange(N_SLICES, dtype=float),
        doses=[0.25],
        geometry={"kind": "test"},
        physics={"I0": 1e5, "sigma_e2": 10.0, "mu_water": 0.0192},
        seed=0,
        source={"format": "npy"},
        sinogram_shape=SINOGRAM,
    )
    return path


def test_two_processes_write_different_slices_at_once(archive_path):
    even, odd = list(range(0, N_SLICES, 2)), list(range(1, N_SLICES, 2))
    start_together = SPAWN.Barrier(2)
    workers = [
        SPAWN.Process(target=write_slices, args=(str(archive_path), even, "worker-even", start_together)),
        SPAWN.Process(target=write_slices, args=(str(archive_path), odd, "worker-odd", start_together)),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    archive = open_archive(archive_path)
    data = archive.read("proj_ld", 0, N_SLICES, dose=0.25)
    for index in range(N_SLICES):
        np.testing.assert_array_equal(data[index : index + 1], slice_values(index))
    assert archive.ledger("ingest_ld", dose=0.25).tolist() == [1] * N_SLICES
    assert archive.produced_by("ingest_ld", 0.25) == ["worker-even", "worker-odd"] * (N_SLICES // 2)


def test_lock_held_by_another_process_is_refused(archive_path):
    acquired, release = SPAWN.Event(), SPAWN.Event()
    holder = SPAWN.Process(target=hold_lock, args=(str(archive_path), "reconstruct", acquired, release))
    holder.start()
    try:
        assert acquired.wait(60), "the holder process never took the lock"
        archive = open_archive(archive_path, mode="r+")
        with pytest.raises(ArchiveLockedError, match="reconstruct"):
            with archive.lock("reconstruct"):
                pass
        with archive.lock("ingest"):
            pass
        with pytest.raises(ArchiveLockedError):
            create_archive(
                archive_path,
                image_hu=np.zeros((2, 4, 4)),
                spacing_mm=(1, 1, 1),
                z_mm=[0, 1],
                doses=[0.5],
                geometry={},
                physics={"I0": 1e5, "sigma_e2": 0, "mu_water": 0.02},
                seed=0,
                source={},
                sinogram_shape=(2, 2),
                overwrite=True,
            )
        assert open_archive(archive_path).n_slices == N_SLICES
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    with open_archive(archive_path).lock("reconstruct"):
        pass

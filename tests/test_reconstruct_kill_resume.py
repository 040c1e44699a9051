"""SIGKILL the reconstruct flow mid-run: no slice is marked done without its data, and the rerun redoes none."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from flows.ingest import run_ingest
from storage.archive import open_archive
from tasks.quick_models import write_tiny_models
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

pytestmark = pytest.mark.slow
N_SLICES = 12


def output_mtimes(archive, dose_index: int, slices: list[int]) -> dict[str, int]:
    """Modification times of the stored `need` chunk files of the given slices at one dose."""
    return {
        str(f): f.stat().st_mtime_ns
        for s in slices
        for f in (archive / "need" / "c" / str(dose_index) / str(s)).rglob("*")
        if f.is_file()
    }


def done_slices(archive, dose: float) -> list[int]:
    store = open_archive(archive)
    return sorted(set(range(store.n_slices)) - set(store.todo("reconstruct", dose=dose)))


def test_killed_reconstruct_resumes_without_recomputing_done_slices(head_ct_path, tmp_path, dask_address):
    source = write_small_head_npy(head_ct_path, tmp_path, n_slices=N_SLICES)
    archive = tmp_path / "archive.zarr"
    run_ingest(
        sources=source,
        catalog=str(archive),
        doses=[0.1],
        seed=2,
        chunk_slices=4,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )
    spdiff_path, dgdiff_path = write_tiny_models(archive, tmp_path)
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "reconstruct",
        str(archive),
        "--doses",
        "0.1",
        "--spdiff",
        spdiff_path,
        "--dgdiff",
        dgdiff_path,
        "--chunk-slices",
        "1",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]

    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None and len(done_slices(archive, 0.1)) < 3:
        time.sleep(0.2)
    assert run.poll() is None, f"reconstruct ended before it could be killed: {run.stderr.read().decode()[-2000:]}"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    done = done_slices(archive, 0.1)
    assert 3 <= len(done) < N_SLICES
    store = open_archive(archive)
    for s in done:
        for name in ("fbp_ld", "spdiff_fbp", "need"):
            assert np.isfinite(store.read(name, s, s + 1, dose=0.1)).all(), f"slice {s} marked done without {name}"
    stamps = output_mtimes(store.path, store.dose_index(0.1), done)
    assert stamps

    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert done_slices(archive, 0.1) == list(range(N_SLICES))
    assert output_mtimes(store.path, store.dose_index(0.1), done) == stamps
    assert f"{N_SLICES - len(done)} slices reconstructed" in finished.stdout

"""A SIGKILLed ingest leaves a ledger that says exactly what is complete; rerunning finishes only the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from storage.archive import open_archive

pytestmark = pytest.mark.slow


def chunk_mtimes(archive_path: Path, variable: str, slices: list[int]) -> dict[str, int]:
    """Modification times of the stored chunk files of `variable` for the given slices."""
    return {
        str(f): f.stat().st_mtime_ns
        for s in slices
        for f in (archive_path / variable / "c" / str(s)).rglob("*")
        if f.is_file()
    }


def test_killed_ingest_resumes_without_redoing_done_slices(head_ct_path, tmp_path):
    archive_path = tmp_path / "head.zarr"
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "ingest",
        str(head_ct_path),
        str(archive_path),
        "--doses",
        "0.25",
        "--chunk-slices",
        "4",
        "--workers",
        "2",
    ]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    run = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 400
    done_before: list[int] = []
    while time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.5)
        if any((archive_path / "studies").glob("*/zarr.json")):  # the study group is in place
            done_before = [s for s in range(108) if s not in open_archive(archive_path).todo("ingest")]
            if len(done_before) >= 12:
                break
    assert run.poll() is None, f"ingest ended before it could be killed: {run.stderr.read().decode()[-2000:]}"
    os.killpg(run.pid, signal.SIGKILL)  # the flow process, its Prefect server and its Dask workers at once
    run.wait()

    killed = open_archive(archive_path)
    done_nd = [s for s in range(killed.n_slices) if s not in killed.todo("ingest")]
    assert 12 <= len(done_nd) < killed.n_slices
    assert np.isfinite(killed.read("fbp_nd", min(done_nd), min(done_nd) + 1)).all()
    for s in done_nd:  # every slice marked done has its data
        assert (
            np.isfinite(killed.read("proj_nd", s, s + 1)).all() and np.isfinite(killed.read("fbp_nd", s, s + 1)).all()
        )
    stamps = chunk_mtimes(killed.path, "proj_nd", done_nd)

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    resumed = open_archive(archive_path)
    assert resumed.todo("ingest") == [] and resumed.todo("ingest_ld", dose=0.25) == []
    assert chunk_mtimes(resumed.path, "proj_nd", done_nd) == stamps  # done slices were not rewritten
    assert np.isfinite(resumed.dataset.proj_ld.sel(dose=0.25).values).all()

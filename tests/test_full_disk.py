"""A disk that fills up midway: `need ingest` and `need reconstruct` on a small tmpfs end with one clear line (no
space left, naming the catalog), mark no slice done without its data, and a rerun once space is freed completes.
(The failed tasks' own log records, with their tracebacks, come before that line: Prefect logs every failed task.)

Runs as root (here and on CI): it mounts a tmpfs; where mounting is refused the test fails with the reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.faults_kills import need_command
from bench.faults_mounts import MountRefused, tmpfs
from bench.faults_progress import study
from storage.ledger import DONE
from tests.pipeline_fixtures import SMALL_DOSES, SmallCatalog, shared_small_catalog, small_ingest_command

pytestmark = pytest.mark.slow
N_SLICES = 8
DISK_MB = 16
LEDGERS = {
    "ingest": {"ingest": ("proj_nd", "fbp_nd"), "ingest_ld": ("proj_ld",)},
    "reconstruct": {"reconstruct": ("fbp_ld", "spdiff_fbp", "need")},
}


@pytest.fixture(scope="module")
def ingested(head_ct_path, tmp_path_factory, prefect_harness) -> SmallCatalog:
    """The session's small ingested catalog and tiny models (the reference of an ingest). Every command here reports
    to the session's Prefect API (conftest.prefect_harness) instead of starting a server of its own: what a full
    disk does to the catalog does not depend on it."""
    return shared_small_catalog(head_ct_path, tmp_path_factory.getbasetemp(), N_SLICES)


@pytest.fixture
def disk(tmp_path):
    """A DISK_MB MiB tmpfs, unmounted at teardown."""
    try:
        with tmpfs(tmp_path / "disk", DISK_MB) as mount:
            yield mount
    except MountRefused as err:
        pytest.fail(f"this test needs to mount a tmpfs (run as root): {err}")


def fill(disk: Path, leave_mb: float) -> Path:
    """Write a filler file leaving about `leave_mb` MiB free on `disk`; return it (delete it to free the space)."""
    filler = disk / "filler.bin"
    free = subprocess.run(["df", "-k", "--output=avail", str(disk)], capture_output=True, text=True, check=True)
    size = int(free.stdout.split()[-1]) * 1024 - int(leave_mb * 2**20)
    with open(filler, "wb") as out:
        out.truncate(0)
        for _ in range(size // 2**20):
            out.write(b"\0" * 2**20)
    return filler


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def check_clear_failure(done: subprocess.CompletedProcess, command: str, catalog: Path) -> None:
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if line.startswith(f"need {command}: error:")]
    assert done.returncode == 1, output[-3000:]
    assert len(errors) == 1 and done.stderr.rstrip().splitlines()[-1] == errors[0], output[-3000:]
    assert "no space left" in errors[0].lower() and str(catalog) in errors[0], errors[0]


def check_done_means_data(catalog: Path, command: str, reference: Path | None = None) -> int:
    """Every slice-dose done in the ledger holds its data (the reference's, when given); return how many are done."""
    archive, ref = study(catalog), study(reference) if reference else None
    if archive is None:
        return 0
    done_total = 0
    for ledger, variables in LEDGERS[command].items():
        for dose in [None] if ledger == "ingest" else archive.doses:
            done = np.flatnonzero(archive.ledger(ledger, dose=dose) == DONE)
            done_total += len(done)
            for s in done:
                for var in variables:
                    got = archive.read(var, int(s), int(s) + 1, dose=dose)
                    assert np.isfinite(got).all(), (var, s, dose)
                    if ref is not None:
                        assert np.array_equal(got, ref.read(var, int(s), int(s) + 1, dose=dose)), (var, s, dose)
    return done_total


def test_ingest_on_a_full_disk_fails_clearly_and_a_rerun_completes(ingested, disk):
    catalog = disk / "catalog.zarr"
    filler = fill(disk, leave_mb=size_mb(ingested.catalog) / 2)
    command = small_ingest_command(ingested.source, catalog)

    failed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    check_clear_failure(failed, "ingest", catalog)
    check_done_means_data(catalog, "ingest", ingested.catalog)

    filler.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert check_done_means_data(catalog, "ingest", ingested.catalog) == N_SLICES * 3


def test_reconstruct_on_a_full_disk_fails_clearly_and_a_rerun_completes(ingested, disk):
    catalog = disk / "catalog.zarr"
    subprocess.run(["cp", "-r", str(ingested.catalog), str(catalog)], check=True)
    args = ["reconstruct", str(catalog), "--doses", SMALL_DOSES, "--spdiff", ingested.spdiff, "--dgdiff"]
    command = need_command(*args, ingested.dgdiff, "--device", "cpu", "--chunk-slices", "2", "--workers", "1")
    command += ["--no-tracking"]
    filler = fill(disk, leave_mb=0.6)  # the results need ~1.3 MiB

    failed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    check_clear_failure(failed, "reconstruct", catalog)
    check_done_means_data(catalog, "reconstruct")

    filler.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert check_done_means_data(catalog, "reconstruct") == N_SLICES * 2

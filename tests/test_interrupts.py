"""Interrupts and orphans. Fast: flows.runtime's InterruptHandler exits 130 with one line (in time, through its grace
timer when cleanup hangs, at once on a second Ctrl-C, and when the interrupt surfaces as another error), and a child
started with die_with_parent dies with its parent.
Slow, end to end: Ctrl-C ends `need reconstruct` within seconds with one line and status 130 in every phase (server
start-up, planning, compute on the Dask cluster, MLflow logging), leaving no process behind and nothing half-done
marked done; SIGKILL of the main process alone leaves no Prefect server, Dask worker or other child running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench.faults_kills import need_command, send, start, survivors
from bench.faults_progress import marked_processes, study
from storage.ledger import DONE
from tests.pipeline_fixtures import SMALL_DOSES, SmallCatalog, shared_small_catalog

SLICES = (0, 1)
"""The slices reconstructed (first, last): one chunk of 2 per dose, so one chunk is left when the other is done."""
N_SLICES = SLICES[1] - SLICES[0] + 1
MESSAGE = "need reconstruct: interrupted; finished slices are kept, rerun the same command to do the rest"
EXIT_WITHIN_S = 10.0


HANDLER_SCRIPT = """
import sys, time
from flows.runtime import InterruptHandler
with InterruptHandler("need test: interrupted", grace_s=float(sys.argv[1])) as interrupt:
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        if sys.argv[2] == "stubborn":  # cleanup that hangs: the grace timer ends it
            time.sleep(60)
        if sys.argv[2] == "converted":  # as Cython's numpy.import_array does when a Ctrl-C cuts an import short
            raise ImportError("numpy.core.multiarray failed to import") from None
        interrupt.report()
        sys.exit(130)
"""


def run_handler(tmp_path: Path, grace_s: float, behaviour: str, signals: int) -> tuple[int, str, float]:
    """A process using InterruptHandler; SIGINT it `signals` times; its status, output and seconds to exit."""
    log = tmp_path / "handler.log"
    process = start([sys.executable, "-c", HANDLER_SCRIPT, str(grace_s), behaviour], "handler", log)
    deadline = time.monotonic() + 30
    while "ready" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = time.monotonic()
    for _ in range(signals):
        os.kill(process.pid, signal.SIGINT)
        time.sleep(0.2)
    status = process.wait(timeout=30)
    return status, log.read_text(), time.monotonic() - sent


@pytest.mark.parametrize(
    ("behaviour", "signals", "grace_s", "within_s"),
    [("clean", 1, 30.0, 3.0), ("stubborn", 1, 1.0, 4.0), ("stubborn", 2, 30.0, 3.0), ("converted", 1, 30.0, 3.0)],
    ids=["closes-in-time", "grace-timer-ends-a-hung-cleanup", "second-ctrl-c-ends-at-once", "turned-into-an-error"],
)
def test_interrupt_handler_exits_130_with_one_line(tmp_path, behaviour, signals, grace_s, within_s):
    status, output, took = run_handler(tmp_path, grace_s, behaviour, signals)
    assert status == 130, output
    assert output.splitlines() == ["ready", "need test: interrupted"]
    assert took < within_s


def test_a_child_started_with_die_with_parent_dies_with_it(tmp_path):
    script = (
        "import subprocess, sys, time\n"
        "from flows.runtime import die_with_parent\n"
        "child = subprocess.Popen(die_with_parent(['sleep', '120']), start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    log = tmp_path / "parent.log"
    parent = start([sys.executable, "-c", script], "die-with-parent", log)
    deadline = time.monotonic() + 30
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    child = psutil.Process(int(log.read_text().split()[0]))
    # exec'd in place, the same pid; the command line reads empty for an instant while the exec replaces it
    while (child.cmdline() or [""])[0] != "sleep" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.cmdline()[0] == "sleep"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    child.wait(timeout=5)  # raises psutil.TimeoutExpired if it outlives its parent


@pytest.fixture(scope="module")
def ingested(head_ct_path, tmp_path_factory) -> SmallCatalog:
    """The session's small ingested catalog and tiny models for it."""
    return shared_small_catalog(head_ct_path, tmp_path_factory.getbasetemp())


def reconstruct_command(ingested: SmallCatalog, catalog: Path, tracking: bool) -> list[str]:
    args = ["reconstruct", str(catalog), "--doses", SMALL_DOSES, "--spdiff", ingested.spdiff, "--dgdiff"]
    args += [ingested.dgdiff, "--slices", f"{SLICES[0]}-{SLICES[1]}", "--chunk-slices", "2", "--workers", "1"]
    return need_command(*args, "--device", "cpu", *([] if tracking else ["--no-tracking"]))


def done_count(catalog: Path) -> int:
    archive = study(catalog)
    if archive is None:
        return 0
    try:
        return int(sum((archive.ledger("reconstruct", dose=d) == DONE).sum() for d in archive.doses))
    except Exception:
        return 0


def phase_reached(phase: str, marker: str, log: Path, catalog: Path) -> bool:
    if phase == "startup":
        return any("uvicorn" in " ".join(p.cmdline()) for p in marked_processes(marker))
    if phase == "planning":
        return "Beginning flow run" in log.read_text(errors="replace")
    if phase == "compute":
        return done_count(catalog) >= 2
    return done_count(catalog) == 2 * N_SLICES  # then the flow logs to MLflow


def check_done_slices_hold_data(catalog: Path) -> None:
    archive = study(catalog)
    for dose in archive.doses:
        for s in np.flatnonzero(archive.ledger("reconstruct", dose=dose) == DONE):
            for name in ("fbp_ld", "spdiff_fbp", "need"):
                assert np.isfinite(archive.read(name, int(s), int(s) + 1, dose=dose)).all(), (name, s, dose)


def run_until(phase: str, command: list[str], catalog: Path, tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    marker, log = f"interrupts-{phase}-{os.getpid()}", tmp_path / f"{phase}.log"
    env = {"PREFECT_LOGGING_LEVEL": "INFO", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    process = start(command, marker, log, env)
    deadline = time.monotonic() + 300
    while not phase_reached(phase, marker, log, catalog):
        assert process.poll() is None, f"ended before {phase}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{phase} not reached in 300 s"
        time.sleep(0.05)
    return process, marker, log


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["startup", "planning", "compute", "tracking"])
def test_ctrl_c_exits_within_seconds_with_one_line(phase, ingested, tmp_path):
    catalog = tmp_path / "catalog.zarr"
    subprocess.run(["cp", "-r", str(ingested.catalog), str(catalog)], check=True)
    command = reconstruct_command(ingested, catalog, tracking=phase == "tracking")
    process, marker, log = run_until(phase, command, catalog, tmp_path)

    send(process, "sigint")  # what a terminal's Ctrl-C does: SIGINT to the whole foreground process group
    sent = time.monotonic()
    status = process.wait(timeout=60)
    took = time.monotonic() - sent
    output = log.read_text(errors="replace")
    print(f"{phase}: exit {status} after {took:.2f} s")
    assert status == 130, output[-3000:]
    assert took < EXIT_WITHIN_S
    assert output.rstrip().splitlines()[-1] == MESSAGE
    assert output.count(MESSAGE) == 1 and "Traceback" not in output, output[-3000:]
    assert survivors(marker) == []
    check_done_slices_hold_data(catalog)
    if phase == "compute":  # the rerun does the rest
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done_count(catalog) == 2 * N_SLICES


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["planning", "compute"])
def test_sigkill_of_the_main_process_alone_leaves_no_child_running(phase, ingested, tmp_path):
    catalog = tmp_path / "catalog.zarr"
    subprocess.run(["cp", "-r", str(ingested.catalog), str(catalog)], check=True)
    process, marker, _ = run_until(phase, reconstruct_command(ingested, catalog, False), catalog, tmp_path)
    names = sorted({" ".join(p.cmdline()[1:4]) for p in marked_processes(marker) if p.pid != process.pid})
    assert any("uvicorn" in name for name in names), names  # the temporary Prefect server
    assert phase == "planning" or any("spawn" in name for name in names), names  # and, computing, Dask's workers

    os.kill(process.pid, signal.SIGKILL)  # the main process only, not its group
    process.wait()
    left = survivors(marker, wait_s=5.0)
    assert left == [], [p.cmdline() for p in left]
    check_done_slices_hold_data(catalog)

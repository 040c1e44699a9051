"""Kill-and-rerun trials for bench/faults.py: `need ingest` / `need reconstruct` run as subprocesses, killed at a
seeded point of their observed progress (bench/faults_progress: start-up, server, cluster, slices done, closing) by
SIGKILL to the process group, SIGKILL to the main process alone, or SIGINT to the group as a terminal's Ctrl-C does;
checked, rerun to completion and compared with an uninterrupted run of the same seed.

Every process a trial starts carries MARKER=<trial id> in its environment (children inherit it: the Prefect server,
Dask's workers, multiprocessing's resource tracker), so what is left running after a kill is found by walking the
process table, whoever its parent is now.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.faults_progress import MARKER, STAGES, KillPoint, ledger_doses, marked_processes, study, wait_for, watch

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("flows", "tasks", "storage", "need_core")
"""The packages a trial's `need` runs from: a snapshot taken when the benchmark starts (snapshot_code), so edits
made in the checkout while it runs (minutes) do not change the code under test midway."""
_code = {"root": ROOT}
KILL_MODES = ("group_sigkill", "main_sigkill", "sigint")
ORPHAN_WAIT_S = 5.0
"""How long children may take to go after their command's process died before they count as orphans."""


def snapshot_code(target: Path) -> Path:
    """Copy the packages to `target` (with a link to the shipped weights) and run every later command there."""
    shutil.rmtree(target, ignore_errors=True)
    for name in CODE_DIRS:
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "weights").symlink_to(ROOT / "weights")
    _code["root"] = target
    return target


def code_root() -> Path:
    """Where `need` commands run from (their working directory, so `python -m flows.cli` imports that code)."""
    return _code["root"]


def need_command(*args: str) -> list[str]:
    """`need ARGS...` as a subprocess command line (the console script's module, so no PATH is needed)."""
    return [sys.executable, "-m", "flows.cli", *args]


def survivors(marker: str, wait_s: float = ORPHAN_WAIT_S) -> list[psutil.Process]:
    """The processes of `marker` still running after up to `wait_s` seconds (polled: gone as soon as they go)."""
    deadline = time.monotonic() + wait_s
    left = marked_processes(marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(marker)
    return left


def kill_all(processes: list[psutil.Process]) -> None:
    """SIGKILL what a trial left behind, so the next trial starts clean."""
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass


def start(command: list[str], marker: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `command` in its own session (its own process group, like a shell job), marked, output to `log`.

    An inherited PREFECT_API_URL (a test session's shared API) is dropped unless `env` sets it: each command starts
    its own temporary Prefect server, as a user's `need` call does, so its children are its own."""
    inherited = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            cwd=code_root(),
            env={**inherited, **(env or {}), MARKER: marker},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def send(process: subprocess.Popen, mode: str) -> None:
    """Kill `process` the way `mode` says (see KILL_MODES)."""
    if mode == "group_sigkill":
        os.killpg(process.pid, signal.SIGKILL)
    elif mode == "main_sigkill":
        os.kill(process.pid, signal.SIGKILL)
    elif mode == "sigint":
        os.killpg(process.pid, signal.SIGINT)
    else:
        raise ValueError(f"unknown kill mode {mode!r}; expected one of {KILL_MODES}")


def run(command: list[str], log: Path, env: dict[str, str] | None = None, timeout_s: float = 600) -> tuple[int, float]:
    """Run `command` to its end (marked, like a trial's); return its exit status and wall seconds."""
    started = time.perf_counter()
    process = start(command, f"run-{uuid.uuid4().hex}", log, env)
    try:
        status = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        status = process.wait()
    return status, time.perf_counter() - started


def run_watched(command: list[str], log: Path, catalog: Path, name: str) -> tuple[int, dict[str, float | None]]:
    """Run `need NAME` to its end (marked, like a trial's) while watching its progress (faults_progress.watch);
    its exit status and timeline."""
    marker = f"run-{uuid.uuid4().hex}"
    process = start(command, marker, log)
    timeline = watch(process, marker, catalog, name)
    return process.wait(), timeline


def read_or_none(archive: Any, var: str, s: int, dose: float | None) -> np.ndarray | None:
    """One slice of `var`, or None when it cannot be read (missing or corrupt chunk)."""
    try:
        return archive.read(var, s, s + 1, dose=dose)
    except Exception:
        return None


def lost_slices(catalog: Path, reference: Path, command: str) -> int:
    """Slice-doses the ledger calls done whose data is missing or differs from the reference run's."""
    from storage.ledger import DONE

    archive, ref = study(catalog), study(reference)
    if archive is None:
        return 0
    lost = 0
    for ledger, variables in STAGES[command].items():
        for dose in ledger_doses(archive, ledger):
            try:
                done = np.flatnonzero(archive.ledger(ledger, dose=dose) == DONE)
            except Exception:  # no ledger yet: nothing marked done
                continue
            for s in done:
                for var in variables:
                    got = read_or_none(archive, var, int(s), dose)
                    if got is None or not np.array_equal(got, ref.read(var, int(s), int(s) + 1, dose=dose)):
                        lost += 1
                        break
    return lost


def mismatches(catalog: Path, reference: Path, command: str) -> int:
    """Slice-doses of the rerun's final archive that are not done or differ at all from the reference run's."""
    from storage.ledger import DONE

    archive, ref = study(catalog), study(reference)
    if archive is None:
        return ref.n_slices * len(STAGES[command])
    bad = 0
    for ledger, variables in STAGES[command].items():
        for dose in ledger_doses(ref, ledger):
            states = archive.ledger(ledger, dose=dose)
            for s in range(ref.n_slices):
                same = all(
                    (got := read_or_none(archive, var, s, dose)) is not None
                    and np.array_equal(got, ref.read(var, s, s + 1, dose=dose))
                    for var in variables
                )
                bad += int(states[s] != DONE or not same)
    if command == "ingest" and not np.array_equal(
        archive.read("image_hu", 0, ref.n_slices), ref.read("image_hu", 0, ref.n_slices)
    ):
        bad += 1
    return bad


@dataclass
class Trial:
    """One kill-and-rerun: what was killed, at which point of its progress and how, and what was found."""

    index: int
    command: str
    mode: str
    point: KillPoint
    cells: int
    """How many ledger cells the command leaves done when it runs to its end (the reference run's)."""
    killed: bool = False
    kill_at_s: float | None = None
    done_at_kill: int | None = None
    exit_status: int | None = None
    exit_after_s: float | None = None
    orphans: int = 0
    orphan_names: list[str] = field(default_factory=list)
    slices_lost: int = 0
    one_line: bool | None = None
    stale_lock: bool = False
    rerun_status: int | None = None
    rerun_error: str = ""
    mismatches: int = 0

    def row(self) -> dict[str, Any]:
        """The result file's row: the kill point as `phase` and `target`, the findings, reasons only where any."""
        hidden = ("point", "cells", "orphan_names", "rerun_error")
        found = {key: value for key, value in self.__dict__.items() if key not in hidden}
        reasons = {key: value for key in hidden[2:] if (value := getattr(self, key))}
        return {**found, "phase": self.point.phase, "target": self.point.value or None, **reasons}


LOCKED = "locked by another process"


def kill_at_point(trial: Trial, command: list[str], catalog: Path, log: Path) -> str:
    """Start `command`, wait for `trial.point` and kill it the trial's way (not if it ended first); its marker."""
    marker = f"trial-{trial.index}-{uuid.uuid4().hex[:8]}"
    process = start(command, marker, log)
    started = time.perf_counter()
    trial.done_at_kill = wait_for(trial.point, process, marker, catalog, trial.command, trial.cells)
    if trial.done_at_kill is None:
        trial.exit_status = process.returncode  # finished before its point: counted, not killed
        return marker
    send(process, trial.mode)
    sent = time.perf_counter()
    trial.killed, trial.kill_at_s = True, round(sent - started, 2)
    try:
        trial.exit_status = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        trial.exit_status = process.wait()
    trial.exit_after_s = round(time.perf_counter() - sent, 2)
    return marker


def run_trial(trial: Trial, command: list[str], catalog: Path, reference: Path, log: Path) -> Trial:
    """Start `command`, kill it at `trial.point`, look for orphans and lost slices, rerun it to completion and
    compare the result with `reference`."""
    log.unlink(missing_ok=True)
    marker = kill_at_point(trial, command, catalog, log)
    if trial.mode == "sigint" and trial.killed:  # a Ctrl-C: status 130, one line, no traceback
        said = log.read_text(errors="replace")
        trial.one_line = (
            trial.exit_status == 130
            and "Traceback" not in said
            and said.count(f"need {trial.command}: interrupted") == 1
        )
    left = survivors(marker)
    trial.orphans = len(left)
    trial.orphan_names = [" ".join(p.cmdline()[:4])[:120] for p in left if p.is_running()]
    kill_all(left)
    trial.slices_lost = lost_slices(catalog, reference, trial.command)
    before = log.stat().st_size
    trial.rerun_status, _ = run(command, log)
    said = log.read_text(errors="replace")[before:]
    trial.stale_lock = trial.rerun_status != 0 and LOCKED in said
    if trial.rerun_status != 0:  # say why, and still finish it, to compare the data
        trial.rerun_error = [line for line in said.splitlines() if line.strip()][-1][:300] if said.strip() else ""
        trial.rerun_status, _ = run(command, log)
    trial.mismatches = mismatches(catalog, reference, trial.command)
    return trial


def fresh_copy(source: Path, target: Path) -> Path:
    """A copy of catalog `source` at `target` (locks folder included, if any)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return target

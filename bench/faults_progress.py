"""Where a `need ingest` / `need reconstruct` run is, seen from outside while it runs, and the moment a trial of
bench/faults.py kills it: a phase of the run's observed progress, never a wall-clock guess.

Progress is what the run leaves to see: the processes it started (each marked with MARKER=<id> in its environment,
which children inherit: the Prefect server, Dask's workers) and the done cells of its ledgers. An uninterrupted run
is watched once (`watch`: when each phase was first seen); each trial then draws one kill point from the phases that
run went through (`draw_point`), seeded, and waits for it (`wait_for`):
- `startup`: a moment uniform within the start-up before the Prefect server is launched (imports, argument and
  preflight checks);
- `server`: the temporary Prefect server has been launched (the command waits for it to answer);
- `cluster`: a Dask worker process is running (cluster start-up, planning);
- `slices`: a seeded number of ledger cells (slice-doses) is done, from 1 to all but one;
- `closing`: every cell is done and the command is closing its flow run, cluster and server (drawn only where the
  watched run spent at least CLOSING_MIN_S there).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MARKER = "NEED_FAULTS_MARKER"
STAGES: dict[str, dict[str, tuple[str, ...]]] = {
    "ingest": {"ingest": ("proj_nd", "fbp_nd"), "ingest_ld": ("proj_ld",)},
    "reconstruct": {"reconstruct": ("fbp_ld", "spdiff_fbp", "need")},
}
"""Per command: ledger -> the variables a done slice of that ledger must hold."""
PHASES = ("startup", "server", "cluster", "slices", "closing")
PHASE_WEIGHTS = (0.15, 0.15, 0.15, 0.4, 0.15)
"""How often each phase is drawn (renormalised over the phases a command's watched run went through)."""
CLOSING_MIN_S = 2.0
"""The least time the watched run must spend between its last done cell and its exit for `closing` to be drawn."""
STARTUP_FROM_S = 0.5
"""Start-up kill moments begin here: before, the interpreter itself is starting (no program can answer a Ctrl-C)."""
POLL_S = 0.1


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment holds MARKER=marker (zombies, which hold nothing, excluded)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARKER) == marker:
                found.append(process)
        except psutil.Error:
            continue
    return found


def running(marker: str) -> set[str]:
    """Which of the run's helpers are up: 'server' (Prefect's uvicorn), 'cluster' (a Dask worker process)."""
    up = set()
    for process in marked_processes(marker):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "uvicorn" in line:
            up.add("server")
        if "spawn_main" in line:
            up.add("cluster")
    return up


def study(catalog: Path) -> Any:
    """The one study of a trial's catalog (None while ingest has not created it yet)."""
    from storage.catalog import open_catalog

    try:
        rows = open_catalog(catalog).rows()
        return open_catalog(catalog).study(rows[0].study) if rows else None
    except Exception:  # a catalog killed while being created is as good as none
        return None


def ledger_doses(archive: Any, ledger: str) -> list[float | None]:
    return [None] if ledger == "ingest" else list(archive.doses)


def done_cells(catalog: Path, command: str) -> int:
    """How many slice-doses the command's ledgers call done (0 before the catalog or a ledger exists)."""
    from storage.ledger import DONE

    archive = study(catalog)
    if archive is None:
        return 0
    done = 0
    for ledger in STAGES[command]:
        for dose in ledger_doses(archive, ledger):
            try:
                done += int((archive.ledger(ledger, dose=dose) == DONE).sum())
            except Exception:  # no ledger yet, or one being written
                continue
    return done


@dataclass(frozen=True)
class KillPoint:
    """A phase of the run to kill it in; `value` is the start-up moment in seconds (`startup`) or the done cells to
    wait for (`slices`), unused otherwise."""

    phase: str
    value: float = 0.0


def reached(point: KillPoint, elapsed_s: float, up: set[str], done: int, cells: int) -> bool:
    """Whether a run `elapsed_s` into its life, with helpers `up` and `done` of `cells` cells done, is at `point`."""
    if point.phase == "startup":
        return elapsed_s >= point.value
    if point.phase in ("server", "cluster"):
        return point.phase in up
    if point.phase == "slices":
        return done >= point.value
    if point.phase == "closing":
        return done >= cells
    raise ValueError(f"unknown phase {point.phase!r}; expected one of {PHASES}")


def wait_for(
    point: KillPoint, process: subprocess.Popen, marker: str, catalog: Path, command: str, cells: int
) -> int | None:
    """Poll the running `process` until it is at `point`; the done cells seen then, or None if it ended first."""
    started = time.perf_counter()
    while process.poll() is None:
        up = running(marker) if point.phase in ("server", "cluster") else set()
        done = done_cells(catalog, command) if point.phase != "startup" else 0
        if reached(point, time.perf_counter() - started, up, done, cells) and process.poll() is None:
            return done
        time.sleep(POLL_S)
    return None


def watch(process: subprocess.Popen, marker: str, catalog: Path, command: str) -> dict[str, float | None]:
    """Follow an uninterrupted run to its end: seconds after its start at which each phase was first seen
    (`all_done`: when the last cell was seen done; the exit if it was not seen before), its exit and its cells."""
    started = time.perf_counter()
    seen: dict[str, float | None] = {"server": None, "cluster": None, "first_done": None}
    done, changed = 0, None
    while process.poll() is None:
        now = round(time.perf_counter() - started, 2)
        for helper in running(marker):
            seen[helper] = seen[helper] or now
        if (count := done_cells(catalog, command)) != done:
            done, changed = count, now
            seen["first_done"] = seen["first_done"] or now
        time.sleep(POLL_S)
    seen["exit"] = round(time.perf_counter() - started, 2)
    seen["cells"] = done_cells(catalog, command)
    seen["all_done"] = changed if done == seen["cells"] else seen["exit"]
    return seen


def draw_point(rng: np.random.Generator, timeline: dict[str, float | None]) -> KillPoint:
    """One seeded kill point among the phases the watched run (`timeline`, from `watch`) went through."""
    cells = int(timeline["cells"] or 0)
    exit_s, all_done = timeline["exit"] or 0.0, timeline["all_done"]
    possible = {
        "startup": bool(timeline["server"] and timeline["server"] > STARTUP_FROM_S),
        "server": timeline["server"] is not None,
        "cluster": timeline["cluster"] is not None,
        "slices": cells >= 2,
        "closing": all_done is not None and exit_s - all_done >= CLOSING_MIN_S,
    }
    weights = np.array([w if possible[p] else 0.0 for p, w in zip(PHASES, PHASE_WEIGHTS, strict=True)])
    phase = str(rng.choice(PHASES, p=weights / weights.sum()))
    if phase == "startup":
        return KillPoint(phase, round(float(rng.uniform(STARTUP_FROM_S, timeline["server"] or 0.0)), 2))
    if phase == "slices":
        return KillPoint(phase, int(rng.integers(1, cells)))
    return KillPoint(phase)

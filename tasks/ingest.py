"""Ingest tasks: simulate the normal-dose and low-dose scans of a chunk of slices and write them into the archive."""
from __future__ import annotations

import time

import numpy as np
from prefect import task

from need_core.physics import (
    FanBeamGeometry,
    PhysicsSettings,
    fbp_hu,
    forward_project,
    hu_to_mu,
    simulate_transmission,
    transmission_to_line_integrals,
)
from storage.archive import open_archive
from tasks.chunking import SliceChunk

NORMAL_DOSE = 1.0


def slice_rng(seed: int, slice_index: int, dose: float) -> np.random.Generator:
    """The noise of one slice at one dose depends only on (seed, slice, dose): results never depend on chunking."""
    return np.random.default_rng([seed, slice_index, round(dose * 1_000_000)])


@task(name="ingest-chunk", retries=2, retry_delay_seconds=2, task_run_name="ingest slices {chunk.label}")
def ingest_chunk(archive_path: str, chunk: SliceChunk, doses: list[float], backend: str = "auto") -> dict[str, float]:
    """Forward-project the chunk once, then write whatever its slices still lack: normal dose + fbp_nd, each low dose.

    Data is written before the ledger flips to done, slice by slice, so a kill never marks missing data done.
    """
    started = time.perf_counter()
    archive = open_archive(archive_path, mode="r+")
    settings = archive.settings
    geometry = FanBeamGeometry.from_dict(settings["geometry"])
    physics = PhysicsSettings.from_dict(settings["physics"])
    seed = int(settings["seed"])

    hu = archive.read("image_hu", chunk.start, chunk.stop)
    line_integrals = forward_project(hu_to_mu(hu, physics.mu_water_per_mm), geometry, backend=backend)

    need_nd = [s for s in archive.todo("ingest") if chunk.start <= s < chunk.stop]
    if need_nd:
        proj_nd = np.stack([
            simulate_transmission(line_integrals[s - chunk.start], NORMAL_DOSE, physics, slice_rng(seed, s, NORMAL_DOSE))
            for s in need_nd
        ])
        fbp_nd = fbp_hu(transmission_to_line_integrals(proj_nd), geometry, physics, backend=backend)
        for row, s in enumerate(need_nd):
            archive.write("proj_nd", s, proj_nd[row : row + 1])
            archive.write("fbp_nd", s, fbp_nd[row : row + 1])
            archive.mark("ingest", [s], "done", produced_by=archive.settings_hash)

    for dose in doses:
        for s in (s for s in archive.todo("ingest_ld", dose=dose) if chunk.start <= s < chunk.stop):
            proj_ld = simulate_transmission(line_integrals[s - chunk.start], dose, physics, slice_rng(seed, s, dose))
            archive.write("proj_ld", s, proj_ld[None], dose=dose)
            archive.mark("ingest_ld", [s], "done", dose=dose, produced_by=archive.settings_hash)
    return {"slices": float(len(chunk)), "seconds": time.perf_counter() - started}

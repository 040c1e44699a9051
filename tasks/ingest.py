"""Ingest tasks: read one series into a new study group of the catalog (recording its content identity), check
that the source of a study already in the catalog is unchanged, and simulate the normal-dose and low-dose scans of a
chunk of a study's slices."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import task

from need_core.physics import FanBeamGeometry, PhysicsSettings, simulate_scan
from storage.archive import open_archive
from storage.catalog import open_catalog
from storage.readers.series import SeriesSource, read_series
from storage.source_identity import SourceCheck, check_source, file_fingerprint, source_identity
from tasks.chunking import SliceChunk


@dataclass(frozen=True)
class IngestChunk:
    """One ingest task: a chunk of one study's slices."""

    study: str
    chunk: SliceChunk


@task(name="prepare-study", task_run_name="read series {series.key}")
def prepare_study(
    catalog_path: str,
    series: SeriesSource,
    doses: list[float],
    seed: int,
    spacing_mm: tuple[float, float, float] | None = None,
) -> int:
    """Read the series and build its study group (image_hu, geometry for its matrix and spacing, empty scans),
    replacing a half-built or differently made one; return its slice count. A corrupt series raises ReaderError.

    The study's source attrs record the source's identity (storage.source_identity): its content digest, and
    the fingerprint of its files taken before reading them, so a file changed meanwhile is checked again."""
    fingerprint = file_fingerprint(series.files, spacing_mm)
    volume = read_series(series, spacing_mm)
    geometry = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:])
    catalog = open_catalog(catalog_path, mode="r+")
    catalog.create_study(
        series.key,
        overwrite=catalog.study_path(series.key).exists(),
        image_hu=volume.hu,
        spacing_mm=volume.spacing_mm,
        z_mm=volume.z_mm,
        doses=doses,
        geometry=geometry.to_dict(),
        physics=PhysicsSettings().to_dict(),
        seed=seed,
        source={**volume.source, "subject_key": volume.subject_key, "identity": source_identity(volume, fingerprint)},
        sinogram_shape=geometry.sinogram_shape,
    )
    return int(volume.hu.shape[0])


@task(name="check-source", task_run_name="check source {series.key}")
def check_study_source(
    catalog_path: str, series: SeriesSource, spacing_mm: tuple[float, float, float] | None = None
) -> SourceCheck:
    """Decode the source of a study already in the catalog again and compare it with what the study holds."""
    return check_source(open_catalog(catalog_path).study(series.key, "r"), series, spacing_mm)


@task(name="ingest-chunk", retries=2, retry_delay_seconds=2, task_run_name="ingest slices {chunk.label}")
def ingest_chunk(archive_path: str, chunk: SliceChunk, doses: list[float], backend: str = "auto") -> dict[str, float]:
    """Simulate the chunk once (need_core.physics.simulate_scan, archive noise stream), then write whatever its
    slices still lack: normal dose + fbp_nd, each low dose.

    Data is written before the ledger flips to done, slice by slice, so a kill never marks missing data done.
    """
    started = time.perf_counter()
    archive = open_archive(archive_path, mode="r+")
    settings = archive.settings
    slices = range(chunk.start, chunk.stop)
    need_nd = [s for s in archive.todo("ingest") if s in slices]
    need_ld = {d: todo for d in doses if (todo := [s for s in archive.todo("ingest_ld", dose=d) if s in slices])}
    scan = simulate_scan(
        archive.read("image_hu", chunk.start, chunk.stop),
        FanBeamGeometry.from_dict(settings["geometry"]),
        PhysicsSettings.from_dict(settings["physics"]),
        list(need_ld),
        seed=int(settings["seed"]),
        slice_indices=slices,
        backend=backend,
    )
    if need_nd:
        normal = scan.select(need_nd)
        for row, s in enumerate(need_nd):
            archive.write("proj_nd", s, normal.proj_nd[row : row + 1])
            archive.write("fbp_nd", s, normal.fbp_nd[row : row + 1])
            archive.mark("ingest", [s], "done", produced_by=archive.settings_hash)
    for dose, todo in need_ld.items():
        for s in todo:
            archive.write("proj_ld", s, scan.proj_ld[dose][s - chunk.start][None], dose=dose)
            archive.mark("ingest_ld", [s], "done", dose=dose, produced_by=archive.settings_hash)
    return {"slices": float(len(chunk)), "seconds": time.perf_counter() - started}

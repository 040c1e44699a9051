"""Ingest flow: read a CT volume, simulate its normal-dose and low-dose scans, and write one archive.

    python -m flows.ingest SRC ARCHIVE --doses 0.5,0.25,0.1,0.05     (or `need ingest ...`)

Rerunning finishes what a killed run left undone; adding a dose computes only that dose; re-ingesting
with other settings is refused unless `overwrite=True`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from tqdm.auto import tqdm

from need_core.physics import FanBeamGeometry, PhysicsSettings
from need_core.physics.validation import validate_doses
from storage.archive import Archive, create_archive, make_settings, open_archive
from storage.readers import read_volume
from tasks.chunking import contiguous_chunks
from tasks.ingest import ingest_chunk
from tasks.runner import dask_task_runner

DEFAULT_DOSES = (0.5, 0.25, 0.1, 0.05)


class IngestSettingsMismatch(RuntimeError):
    """The archive already holds data made with other settings; the user must choose --overwrite or a new path."""


def open_or_create_archive(
    source: str, archive_path: str, doses: list[float], seed: int, overwrite: bool, spacing_mm: list[float] | None
) -> Archive:
    """Create the archive (replacing one only with `overwrite`), or reopen a matching one and add any new doses."""
    volume = read_volume(source, spacing_mm=tuple(spacing_mm) if spacing_mm else None)
    geometry = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:])
    wanted = make_settings(
        geometry=geometry.to_dict(),
        physics=PhysicsSettings().to_dict(),
        seed=seed,
        sinogram_shape=geometry.sinogram_shape,
        image_shape=volume.hu.shape,
        subject_key=volume.subject_key,
    )
    if overwrite or not Path(archive_path).exists():
        return create_archive(
            archive_path,
            image_hu=volume.hu,
            spacing_mm=volume.spacing_mm,
            z_mm=volume.z_mm,
            doses=doses,
            geometry=wanted["geometry"],
            physics=wanted["physics"],
            seed=seed,
            source={**volume.source, "subject_key": volume.subject_key},
            sinogram_shape=geometry.sinogram_shape,
            overwrite=overwrite,
        )
    archive = open_archive(archive_path, mode="r+")
    differences = [key for key, value in wanted.items() if archive.settings.get(key) != value]
    if differences:
        raise IngestSettingsMismatch(
            f"archive {archive_path} was ingested with other settings ({', '.join(differences)}); nothing was "
            "changed. Use --overwrite to replace it, or choose a new archive path."
        )
    archive.add_doses(doses)
    return archive


def slices_needing_work(archive: Archive, doses: list[float]) -> list[int]:
    """Slices whose normal-dose data or any requested low dose is not marked done in the ledger."""
    todo = set(archive.todo("ingest"))
    for dose in doses:
        todo.update(archive.todo("ingest_ld", dose=dose))
    return sorted(todo)


@flow(name="ingest", task_runner=dask_task_runner())
def ingest(
    source: str,
    archive: str,
    doses: tuple[float, ...] = DEFAULT_DOSES,
    seed: int = 0,
    chunk_slices: int = 8,
    overwrite: bool = False,
    spacing_mm: list[float] | None = None,
) -> dict[str, Any]:
    """Read `source`, simulate normal dose and each dose fraction, and write the archive at `archive`.

    `spacing_mm` (dz, dy, dx) is needed only for sources that do not carry it (plain .npy).
    """
    logger = get_run_logger()
    doses = validate_doses(doses)
    store = open_or_create_archive(source, archive, doses, seed, overwrite, spacing_mm)
    with store.lock("ingest"):
        todo = slices_needing_work(store, doses)
        chunks = contiguous_chunks(todo, chunk_slices)
        logger.info("ingest: %d of %d slices need work, %d chunks", len(todo), store.n_slices, len(chunks))
        futures = {ingest_chunk.submit(str(store.path), chunk, doses): chunk for chunk in chunks}
        failed: list[str] = []
        with tqdm(total=len(todo), desc="ingest", unit="slice") as progress:
            for future in as_completed(list(futures)):
                chunk = futures[future]
                try:
                    future.result()
                except Exception as err:  # reported with its slices once every chunk has finished
                    failed.append(f"slices {chunk.label}: {err}")
                progress.update(len(chunk))
    if failed:
        raise RuntimeError(
            f"ingest failed for {len(failed)} chunk(s); the rest is stored. Rerun the same command to finish: "
            + "; ".join(failed)
        )
    return {"archive": str(store.path), "slices": store.n_slices, "processed": len(todo), "doses": store.doses}


def run_ingest(dask_address: str | None = None, workers: int | None = None, **params: Any) -> dict[str, Any]:
    """Run the ingest flow on a chosen Dask cluster (an address, or a LocalCluster of `workers` processes)."""
    return ingest.with_options(task_runner=dask_task_runner(dask_address, workers))(**params)

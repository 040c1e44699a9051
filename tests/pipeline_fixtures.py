"""Shared builders for flow tests: a small real-CT source volume, and one small ingested catalog with tiny models
(tasks.quick_models) built once per test session for the fault tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from storage.readers import read_volume

SMALL_SPACING = [3.0, 3.8, 3.8]  # head CT slices 44-55 (every other one), 4x smaller in-plane


def write_small_head_npy(head_ct_path: Path, directory: Path, n_slices: int = 6) -> str:
    """Real head-CT slices at 64x64, saved as .npy (the reader then needs the spacing given)."""
    hu = read_volume(head_ct_path).hu[44 : 44 + 2 * n_slices : 2]
    small = hu.reshape(n_slices, 64, 4, 64, 4).mean(axis=(2, 4)).astype(np.float32)
    path = directory / "head_small.npy"
    np.save(path, small)
    return str(path)


def ingest_small_with_tiny_models(head_ct_path: Path, root: Path, dask_address: str) -> tuple[Path, str, str]:
    """A 6-slice archive of write_small_head_npy ingested at doses 0.5 and 0.1 (seed 1, chunks of 3) on the given
    Dask cluster, and tiny model checkpoints fitted to it: (archive, spdiff path, dgdiff path)."""
    from flows.ingest import run_ingest
    from tasks.quick_models import write_tiny_models

    archive = root / "pristine.zarr"
    run_ingest(
        sources=write_small_head_npy(head_ct_path, root),
        catalog=str(archive),
        doses=[0.5, 0.1],
        seed=1,
        chunk_slices=3,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )
    return archive, *write_tiny_models(archive, root)


def write_small_ingested_archive(head_ct_path: Path, archive_path: Path, dose: float) -> np.ndarray:
    """Three real head-CT slices at 64² written as a single-scan archive and ingested in-process at `dose` (no flow,
    no cluster); returns their HU images."""
    from need_core.physics import FanBeamGeometry, PhysicsSettings
    from storage.archive import create_archive
    from tasks.chunking import SliceChunk
    from tasks.ingest import ingest_chunk

    volume = read_volume(head_ct_path)
    hu = volume.hu[50:53].reshape(3, 64, 4, 64, 4).mean(axis=(2, 4)).astype(np.float32)
    spacing = (volume.spacing_mm[0], volume.spacing_mm[1] * 4, volume.spacing_mm[2] * 4)
    geometry = FanBeamGeometry.for_image(hu.shape[1:], spacing[1:])
    create_archive(
        archive_path,
        image_hu=hu,
        spacing_mm=spacing,
        z_mm=np.arange(3) * spacing[0],
        doses=[dose],
        geometry=geometry.to_dict(),
        physics=PhysicsSettings().to_dict(),
        seed=0,
        source={},
        sinogram_shape=geometry.sinogram_shape,
    )
    ingest_chunk.fn(str(archive_path), SliceChunk(0, 3), [dose])
    return hu


def only_study(summary: dict[str, Any]) -> dict[str, Any]:
    """The one study's entry of a reconstruct summary (a one-study catalog)."""
    (study,) = summary["studies"].values()
    return study


SMALL_DOSES = "0.25,0.1"


def small_ingest_command(source: str, catalog: Path) -> list[str]:
    """`need ingest` of a small .npy source (one slice per chunk, one worker), as a subprocess command line."""
    args = ["ingest", source, str(catalog), "--doses", SMALL_DOSES, "--spacing", "3,3.8,3.8", "--chunk-slices", "1"]
    return [sys.executable, "-m", "flows.cli", *args, "--workers", "1"]


class SmallCatalog(NamedTuple):
    """An ingested small catalog, its source and tiny checkpoints for it (paths)."""

    catalog: Path
    source: str
    spdiff: str
    dgdiff: str


def shared_small_catalog(head_ct_path: Path, base: Path, n_slices: int = 8) -> SmallCatalog:
    """A small catalog ingested by `need ingest` (small_ingest_command) with tiny models, built once under `base`
    (a pytest session's base temp) and reused by every later caller: copy it before writing to it."""
    from tasks.quick_models import write_tiny_models

    work = base / f"small-catalog-{n_slices}"
    built = work / "built"
    catalog, source = work / "ingested.zarr", str(work / "head_small.npy")
    if not built.is_file():
        work.mkdir(parents=True, exist_ok=True)
        write_small_head_npy(head_ct_path, work, n_slices=n_slices)
        done = subprocess.run(small_ingest_command(source, catalog), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"ingest of the shared small catalog failed: {done.stderr[-3000:]}")
        built.write_text("\n".join(write_tiny_models(catalog, work)))
    spdiff, dgdiff = built.read_text().splitlines()
    return SmallCatalog(catalog, source, spdiff, dgdiff)

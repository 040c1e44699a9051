"""Build a new archive's Zarr v3 store in a directory: attrs, coordinates, image_hu written, every other variable
allocated.

Chunks hold one slice (and one dose) each, compressed with zstd, then sealed with a crc32c checksum of the compressed
bytes (zarr applies bytes-to-bytes codecs in order when writing and in reverse when reading, so the checksum is
checked first and any flipped bit in a stored chunk fails the read); unwritten chunks are not stored and read as the
fill value. Arguments must already be checked (storage.archive.create_archive does that).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from storage.schema import ALL_VARIABLES, COORDINATES, SCHEMA_VERSION, VariableSpec

COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())
PER_CELL_DIMS = ("dose", "slice")


def build_skeleton(
    directory: Path,
    *,
    image_hu: np.ndarray,
    z_mm: np.ndarray,
    doses: list[float],
    sinogram_shape: tuple[int, int],
    attrs: dict[str, Any],
) -> None:
    """Create the store at `directory` (must not exist) holding `image_hu`, the coordinates and empty variables."""
    n_slices, ny, nx = image_hu.shape
    sizes = {
        "slice": n_slices,
        "y": ny,
        "x": nx,
        "view": sinogram_shape[0],
        "det": sinogram_shape[1],
        "dose": len(doses),
    }
    full_attrs = {"schema_version": SCHEMA_VERSION, "created": _utc_now(), **attrs}
    group = zarr.open_group(directory, mode="w-", zarr_format=3, attributes=full_attrs)
    arrays = {name: _allocate(group, name, spec, sizes) for name, spec in ALL_VARIABLES.items()}
    arrays["slice"][:] = np.arange(n_slices, dtype=np.int64)
    arrays["z_mm"][:] = z_mm
    arrays["dose"][:] = np.asarray(doses, dtype=np.float64)
    arrays["image_hu"][:] = image_hu


def _allocate(group: zarr.Group, name: str, spec: VariableSpec, sizes: dict[str, int]) -> zarr.Array:
    """Create one variable: data and ledger variables chunked per dose and per slice, coordinates per dose."""
    shape = tuple(sizes[dim] for dim in spec.dims)
    if name in COORDINATES:
        chunks = tuple(1 if dim == "dose" else max(size, 1) for dim, size in zip(spec.dims, shape, strict=True))
        attributes: dict[str, Any] = {}
    else:
        chunks = tuple(1 if dim in PER_CELL_DIMS else size for dim, size in zip(spec.dims, shape, strict=True))
        attributes = {"coordinates": "z_mm"} if "slice" in spec.dims else {}
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        dtype=str if spec.dtype == "str" else spec.dtype,
        fill_value=spec.fill_value,
        compressors=COMPRESSORS,
        dimension_names=spec.dims,
        attributes=attributes,
    )


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

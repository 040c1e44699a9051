"""InVesalius projects (.inv3): a gzipped tar holding main.plist (metadata) and the raw HU matrix it names.

Read entirely in memory (never extracted to disk). The plist's `name` field is the patient/study name: it is
only hashed into the subject key, never copied.
"""

from __future__ import annotations

import plistlib
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from storage.deid import subject_key
from storage.readers.base import ReaderError, checked_volume, uniform_z
from storage.volume import Volume


def read_inv3(path: Path) -> Volume:
    """Read the CT volume of an .inv3 project: shape/dtype/spacing from main.plist, voxels from its matrix file."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {Path(member.name).name: member for member in archive.getmembers() if member.isfile()}
            meta = _load_plist(archive, members, path)
            matrix = meta.get("matrix", {})
            raw = _read_member(archive, members, str(matrix.get("filename", "")), path)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ReaderError(
            f"{path.name}: not a readable .inv3 file (gzipped tar), corrupt or truncated: {err}"
        ) from None
    modality = str(meta.get("modality", "unknown"))
    if modality != "CT":
        raise ReaderError(f"{path.name}: modality is {modality!r}, expected 'CT'")
    hu = _decode_matrix(raw, matrix, path)
    spacing_xyz = meta.get("spacing")
    if not isinstance(spacing_xyz, list) or len(spacing_xyz) != 3:
        raise ReaderError(f"{path.name}: main.plist spacing must be [x, y, z] in mm, got {spacing_xyz!r}")
    spacing = (spacing_xyz[2], spacing_xyz[1], spacing_xyz[0])
    identity = str(meta.get("name", "")) or path.name
    source = {
        "format": "inv3",
        "modality": modality,
        "n_files": 1,
        "n_skipped": 0,
        "invesalius_version": str(meta.get("invesalius_version", "unknown")),
    }
    try:
        z_mm = uniform_z(hu.shape[0], float(spacing[0]))
    except (TypeError, ValueError):
        raise ReaderError(f"{path.name}: main.plist spacing must be numbers, got {spacing_xyz!r}") from None
    return checked_volume(path, hu, spacing, z_mm, subject_key(identity), source)


def _load_plist(archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], path: Path) -> dict[str, Any]:
    try:
        meta = plistlib.loads(_read_member(archive, members, "main.plist", path))
    except (plistlib.InvalidFileException, ValueError) as err:
        raise ReaderError(f"{path.name}: main.plist is not a valid plist: {err}") from None
    if not isinstance(meta, dict):
        raise ReaderError(f"{path.name}: main.plist must hold a dict")
    return meta


def _read_member(archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str, path: Path) -> bytes:
    member = members.get(name)
    if not name or member is None:
        raise ReaderError(f"{path.name}: the project lacks {name or 'its matrix file'!r} (holds {sorted(members)})")
    handle = archive.extractfile(member)
    if handle is None:
        raise ReaderError(f"{path.name}: {name} cannot be read from the project")
    return handle.read()


def _decode_matrix(raw: bytes, matrix: dict[str, Any], path: Path) -> np.ndarray:
    """The raw little-endian matrix as (slice, y, x), checking its size against the plist's shape and dtype."""
    try:
        dtype = np.dtype(str(matrix["dtype"])).newbyteorder("<")
        shape = tuple(int(size) for size in matrix["shape"])
    except (KeyError, TypeError, ValueError):
        raise ReaderError(f"{path.name}: main.plist matrix needs dtype and shape, got {matrix!r}") from None
    if len(shape) != 3 or dtype.kind not in "iuf":
        raise ReaderError(f"{path.name}: expected a 3-D numeric matrix, got shape {shape} dtype {dtype}")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ReaderError(
            f"{path.name}: matrix holds {len(raw)} bytes, expected {expected} for {shape} {dtype} (truncated?)"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)

"""A study's source identity by content, so a source that changed under the same study key (a DICOM series whose
pixels changed under the same SeriesInstanceUID, a volume given another --spacing) is told apart from an unchanged
rerun.

Recorded at ingest in the study's attrs as source["identity"]:
- `content`: sha256 of the decoded HU voxels and the geometry they sit on (shape, spacing, slice positions, DICOM
  orientation and origin) -- never file names or identifiers, so a renamed or moved copy has the same content;
- `files`: a fingerprint of the files (sizes and modification times, and a --spacing override), cheap to take,
  so a rerun decodes a source again only when its files changed.

    identity = source_identity(volume, fingerprint)          # at ingest, fingerprint taken before reading
    if needs_check(archive, file_fingerprint(series.files)):  # on a rerun: files touched since?
        check = check_source(archive, series)                 # decode again, compare contents
    check.changes                                             # ("pixels of 3 of 4 slices differ", ...)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import ArrayLike

from storage.archive import Archive
from storage.readers.base import ReaderError
from storage.readers.series import SeriesSource, read_series
from storage.volume import Volume

IDENTITY_VERSION = 1
GEOMETRY_DECIMALS = 6  # mm (and direction cosines): positions are compared to a nanometre
GEOMETRY_KEYS = ("orientation", "origin_mm")  # DICOM geometry kept in the source dict


@dataclass(frozen=True)
class SourceCheck:
    """What check_source found for a study already in the catalog: its source `unchanged` (same content, files
    touched), `unrecorded` (a study ingested before identities: `changes` says whether its stored image differs
    from the source now) or `changed` (`changes` in words); `identity` is the source's as read now."""

    key: str
    label: str
    state: Literal["unchanged", "unrecorded", "changed"]
    identity: dict[str, Any] = field(default_factory=dict)
    changes: tuple[str, ...] = ()


def needs_check(archive: Archive, fingerprint: str) -> bool:
    """Whether the study's source must be decoded again: no identity recorded, or its files changed."""
    stored = stored_identity(archive)
    return stored is None or not fingerprint or stored.get("files") != fingerprint


def check_source(
    archive: Archive, series: SeriesSource, spacing_mm: tuple[float, float, float] | None = None
) -> SourceCheck:
    """Read `series` (as ingest would, with the same spacing override) and compare it with what `archive` holds.

    A source that cannot be read any more counts as changed (the study keeps its data). A study ingested before
    identities gets the source's identity when it holds what the source holds, else the digest of what it holds
    (so the next ingest finds the source changed)."""
    fingerprint = file_fingerprint(series.files, spacing_mm)
    try:
        volume = read_series(series, spacing_mm)
    except ReaderError as err:
        return SourceCheck(series.key, series.label, "changed", changes=(f"it cannot be read any more ({err})",))
    identity = source_identity(volume, fingerprint)
    stored = stored_identity(archive)
    if stored is not None and stored.get("version") == IDENTITY_VERSION:
        if stored["content"] == identity["content"]:
            return SourceCheck(series.key, series.label, "unchanged", identity)
        changes = tuple(content_changes(archive, volume)) or ("content differs",)
        return SourceCheck(series.key, series.label, "changed", identity, changes)
    changes = tuple(content_changes(archive, volume))
    if changes:  # what it holds is not its source now: record that, and have the next ingest look again
        identity = {**identity, "content": study_digest(archive), "files": ""}
    return SourceCheck(series.key, series.label, "unrecorded", identity, changes)


def file_fingerprint(files: Sequence[Path], spacing_mm: Sequence[float] | None = None) -> str:
    """A short digest of the files' sizes and modification times (not their names) and of a spacing override;
    "" when a file cannot be stat'ed (it vanished), so the content is checked again."""
    try:
        stats = [(status.st_size, status.st_mtime_ns) for status in (os.stat(path) for path in files)]
    except OSError:
        return ""
    override = [float(v) for v in spacing_mm] if spacing_mm is not None else None
    return _digest({"version": IDENTITY_VERSION, "files": stats, "spacing_mm": override})


def content_digest(hu: np.ndarray, spacing_mm: ArrayLike, z_mm: ArrayLike, source: Mapping[str, Any]) -> str:
    """sha256 (32 hex digits) of the HU voxels (float32), the shape, spacing, slice positions and the DICOM
    orientation and origin in `source`."""
    voxels = np.ascontiguousarray(hu, dtype="<f4")
    header = {
        "version": IDENTITY_VERSION,
        "shape": list(voxels.shape),
        "spacing_mm": _rounded(spacing_mm),
        "z_mm": _rounded(z_mm),
        **{key: _rounded(source[key]) for key in GEOMETRY_KEYS if source.get(key) is not None},
    }
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(voxels.data)
    return digest.hexdigest()[:32]


def volume_digest(volume: Volume) -> str:
    """content_digest of a volume as a reader returns it."""
    return content_digest(volume.hu, volume.spacing_mm, volume.z_mm, volume.source)


def study_digest(archive: Archive) -> str:
    """content_digest of what a study holds: its image_hu, spacing, slice positions and source geometry."""
    hu = archive.read("image_hu", 0, archive.n_slices)
    z_mm = archive.dataset["z_mm"].values
    return content_digest(hu, archive.spacing_mm, z_mm, archive.attrs.get("source") or {})


def source_identity(volume: Volume, fingerprint: str) -> dict[str, Any]:
    """The identity to record in a study's source attrs: content digest and files fingerprint."""
    return {"version": IDENTITY_VERSION, "content": volume_digest(volume), "files": fingerprint}


def stored_identity(archive: Archive) -> dict[str, Any] | None:
    """The identity recorded at ingest, None for a study ingested before identities were recorded."""
    identity = (archive.attrs.get("source") or {}).get("identity")
    return dict(identity) if isinstance(identity, Mapping) and identity.get("content") else None


def record_identity(archive: Archive, identity: Mapping[str, Any]) -> None:
    """Write `identity` into the study's source attrs (under its schema lock); the caller holds its ingest lock."""
    with archive.lock("schema"):
        group = zarr.open_group(archive.path, mode="r+", zarr_format=3)
        source = group.attrs.get("source")
        group.attrs["source"] = {**(source if isinstance(source, dict) else {}), "identity": dict(identity)}


def content_changes(archive: Archive, volume: Volume) -> list[str]:
    """What differs between the study's stored image and geometry and the source volume read now, in words
    ("slices 4→6", "pixels of 3 of 4 slices differ", "slice spacing 1.5→2 mm", ...); [] when nothing does."""
    changes: list[str] = []
    old_shape = tuple(int(n) for n in archive.settings["image_shape"])
    new_shape = tuple(int(n) for n in volume.hu.shape)
    if old_shape[0] != new_shape[0]:
        changes.append(f"slices {old_shape[0]}→{new_shape[0]}")
    if old_shape[1:] != new_shape[1:]:
        changes.append(f"matrix {old_shape[1]}x{old_shape[2]}→{new_shape[1]}x{new_shape[2]}")
    if old_shape == new_shape:
        stored = archive.read("image_hu", 0, old_shape[0])
        differ = sum(not np.array_equal(old, new) for old, new in zip(stored, volume.hu, strict=True))
        if differ:
            changes.append(f"pixels of {differ} of {old_shape[0]} slices differ")
    old_spacing, new_spacing = archive.spacing_mm, volume.spacing_mm
    if not _same(old_spacing[:1], new_spacing[:1]):
        changes.append(f"slice spacing {old_spacing[0]:g}→{new_spacing[0]:g} mm")
    if not _same(old_spacing[1:], new_spacing[1:]):
        changes.append(f"pixel spacing {_mm(old_spacing[1:])}→{_mm(new_spacing[1:])} mm")
    old_z = np.asarray(archive.dataset["z_mm"].values, dtype=np.float64)
    if old_z.shape == volume.z_mm.shape and _same(old_spacing[:1], new_spacing[:1]) and not _same(old_z, volume.z_mm):
        changes.append(f"slice positions moved (first {old_z[0]:g}→{volume.z_mm[0]:g} mm)")
    old_source = archive.attrs.get("source") or {}
    for key, what in zip(GEOMETRY_KEYS, ("orientation", "origin"), strict=True):
        old, new = _listed(old_source.get(key)), _listed(volume.source.get(key))
        if old != new:
            changes.append(f"{what} {old}→{new}")
    return changes


def _rounded(values: ArrayLike) -> list[float]:
    return [round(float(v), GEOMETRY_DECIMALS) for v in np.asarray(values, dtype=np.float64).ravel()]


def _same(old: ArrayLike, new: ArrayLike) -> bool:
    return _rounded(old) == _rounded(new)


def _mm(values: Sequence[float]) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def _listed(values: Sequence[float] | None) -> str:
    """Values as "1,0,0" (rounded as in the digest), "none" for a missing one."""
    return ",".join(f"{v:g}" for v in _rounded(values)) if values is not None else "none"


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

"""`need verify`: read every chunk of a catalog and report the ones that are missing, corrupt or fail their
checksum.

    report = verify_catalog("outputs/cohort.zarr")   # or CATALOG/studies/KEY, or a schema-1 archive
    print(report.format())                            # one line per bad chunk, then "2 bad chunks of 5184 ..."

Chunks are read one at a time (memory stays at one chunk); a chunk is bad when it fails its crc32c checksum, does
not decode, or is absent while the ledger says its slice is done. A store made before checksums is read for
decodability only, and said so: a flipped bit inside one of its chunks cannot be seen.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.core.metadata import ArrayV3Metadata

from storage.archive import DECODE_ERRORS, Archive, corruption_reason, has_checksum, open_archive, repair_hint
from storage.catalog_paths import STUDIES_GROUP, catalog_of_study, is_catalog_root, root_attributes
from storage.errors import ArchiveError, ArchiveInputError, ArchiveNotFoundError, slice_label
from storage.ledger import DONE, status_variable
from storage.schema import ALL_VARIABLES, COORDINATES

WRITTEN_WHEN_DONE = {"proj_nd": "ingest", "fbp_nd": "ingest", "proj_ld": "ingest_ld"} | {
    name: "reconstruct" for name in ("fbp_ld", "spdiff_fbp", "need")
}
"""The ledger whose done cells promise a stored chunk of each variable (image_hu is always written; proj_spdiff
is optional; a ledger chunk equal to its fill value is not stored, so none is promised)."""


@dataclass(frozen=True)
class BadChunk:
    """One bad stored chunk of a study: its variable, file, and the slice and dose it holds (None where the
    variable has no chunk per slice or dose)."""

    study_path: Path
    var: str
    file: Path
    slice: int | None
    dose: float | None


@dataclass
class VerifyReport:
    """What a verification found: studies and chunks read, one line per bad chunk (and each bad chunk of a study,
    for storage.repair), and notes (stores without checksums)."""

    chunks: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    studies: int = 0
    bad_chunks: list[BadChunk] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        studies = f"{self.studies} stud" + ("y" if self.studies == 1 else "ies")
        return f"{len(self.problems)} bad chunks of {self.chunks} in {studies}"

    def format(self) -> str:
        return "\n".join([*self.problems, *self.notes, self.summary()])


def verify_catalog(path: str | os.PathLike, progress: bool | None = None) -> VerifyReport:
    """Read every chunk of every study under `path` (a catalog, one study group, or a schema-1 archive) and of the
    catalog's study table. `progress`: a tqdm bar per store (None: only on a terminal)."""
    path = Path(path)
    if not path.exists():
        raise ArchiveNotFoundError(f"no catalog at {path}")
    report = VerifyReport()
    if is_catalog_root(path):
        _verify_table(path, report, progress)
        studies = sorted(child for child in (path / STUDIES_GROUP).glob("*") if (child / "zarr.json").is_file())
    elif catalog_of_study(path) is not None or "schema_version" in (root_attributes(path) or {}):
        studies = [path]
    else:
        raise ArchiveInputError(f"{path} is neither a NEED catalog, a study group nor a NEED archive")
    for study in studies:
        _verify_study(study, report, progress)
    return report


def _verify_study(path: Path, report: VerifyReport, progress: bool | None) -> None:
    """Every chunk of one study's variables: decoded one by one, and looked for where the ledgers say done."""
    report.studies += 1
    try:
        archive = open_archive(path, mode="r")
    except ArchiveError as err:
        report.problems.append(f"{path}: cannot be opened as a study: {err}")
        return
    name = archive.study_name
    if not archive.checksummed:
        report.notes.append(
            f"{name}: no checksums (made before crc32c chunks): only that its chunks decode was checked; "
            "a flipped bit inside a chunk goes unseen"
        )
    group = zarr.open_group(path, mode="r", zarr_format=3)
    arrays = {var: _array(group, var) for var in ALL_VARIABLES}
    doses = _doses(arrays["dose"])
    total = sum(int(np.prod(array.cdata_shape)) for array in arrays.values())
    with tqdm(total=total, desc=f"verify {name}", unit="chunk", disable=_quiet(progress)) as bar:
        for var, array in arrays.items():
            checker = ArrayCheck(array, var, path / var, name, doses, _promised_chunks(archive, var, arrays))
            report.problems.extend(checker.problems(bar))
            report.chunks += len(checker.stored)
            report.bad_chunks.extend(checker.found)


def _verify_table(path: Path, report: VerifyReport, progress: bool | None) -> None:
    """The chunks of the catalog's study table (its columns at the root)."""
    group = zarr.open_group(path, mode="r", zarr_format=3)
    columns = [array for _, array in group.arrays()]
    if not all(has_checksum(array) for array in columns):
        report.notes.append(f"{path.name} (study table): no checksums: only that its chunks decode was checked")
    total = sum(int(np.prod(array.cdata_shape)) for array in columns)
    with tqdm(total=total, desc=f"verify {path.name} table", unit="chunk", disable=_quiet(progress)) as bar:
        for array in columns:
            checker = ArrayCheck(array, array.basename, path / array.basename, f"{path.name} (study table)", [], None)
            report.problems.extend(checker.problems(bar))
            report.chunks += len(checker.stored)


@dataclass
class ArrayCheck:
    """The check of one array: `promised` is a bool grid over its (dose, slice) or (slice,) chunks saying where a
    chunk must be stored (None: nowhere in particular); `doses` names the dose indices."""

    array: zarr.Array
    var: str
    folder: Path
    study: str
    doses: list[float | None]
    promised: np.ndarray | None

    def __post_init__(self) -> None:
        self.found: list[BadChunk] = []
        metadata = cast(ArrayV3Metadata, self.array.metadata)  # every store here is opened as zarr v3
        self.dims = tuple(metadata.dimension_names or ())
        self.stored = {
            p.relative_to(self.folder).as_posix()
            for p in self.folder.rglob("*")
            if p.is_file() and p.name != "zarr.json"
        }

    def problems(self, bar: tqdm) -> Iterator[str]:
        """One line per bad chunk: undecodable or failing its checksum, or absent where promised."""
        for coords in itertools.product(*(range(n) for n in self.array.cdata_shape)):
            bar.update()
            key = self.array.metadata.encode_chunk_key(coords)
            if key in self.stored:
                try:
                    self.array.blocks[coords]
                except DECODE_ERRORS as err:
                    yield self.describe(coords, "corrupt", corruption_reason(err, f"{self.var}/{key}"))
            elif self.promised is not None and self.promised[self.cell(coords)]:
                yield self.describe(
                    coords, "missing", f"no chunk {self.var}/{key} is stored though its ledger says done"
                )

    def cell(self, coords: tuple[int, ...]) -> tuple[int, ...]:
        """The (dose, slice) or (slice,) index of a chunk into the promise grid."""
        position = dict(zip(self.dims, coords, strict=True))
        return tuple(position[dim] for dim in ("dose", "slice") if dim in position)

    def describe(self, coords: tuple[int, ...], what: str, reason: str) -> str:
        """The report line of one bad chunk, named by slice and dose where the variable has a chunk per slice."""
        position = dict(zip(self.dims, coords, strict=True))
        index = position.get("dose")
        dose = self.doses[index] if index is not None and index < len(self.doses) else None
        per_slice = "slice" in position and self.var not in COORDINATES
        if per_slice:
            where = slice_label(self.study, self.var, position["slice"], dose)
        else:
            where = f"{self.study}: {self.var} chunk {coords}"
        chunk_file = self.folder / self.array.metadata.encode_chunk_key(coords)
        self.found.append(
            BadChunk(self.folder.parent, self.var, chunk_file, position["slice"] if per_slice else None, dose)
        )
        return f"{where} is {what} ({reason}): {repair_hint(self.var)}"


def _promised_chunks(archive: Archive, var: str, arrays: dict[str, zarr.Array]) -> np.ndarray | None:
    """Where a stored chunk of `var` must exist: a bool grid like its (dose, slice) or (slice,) chunk grid, or None
    (no promise). A ledger cell that cannot be read promises nothing (its own chunk is reported)."""
    if var == "image_hu":
        return np.ones(archive.n_slices, dtype=bool)
    ledger = WRITTEN_WHEN_DONE.get(var)
    if ledger is None:
        return None
    states = arrays[status_variable(ledger)]
    try:
        return np.asarray(states[...]) == DONE
    except DECODE_ERRORS:
        promised = np.zeros(states.shape, dtype=bool)
        for cell in itertools.product(*(range(n) for n in states.shape)):  # one chunk per cell
            try:
                promised[cell] = np.asarray(states[cell]) == DONE
            except DECODE_ERRORS:
                continue
        return promised


def _doses(array: zarr.Array) -> list[float | None]:
    """The dose values by index, read chunk by chunk (None for a dose whose own chunk is bad)."""
    doses: list[float | None] = []
    for index in range(array.shape[0]):
        try:
            doses.append(float(np.asarray(array[index])))
        except DECODE_ERRORS:
            doses.append(None)
    return doses


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):  # open_archive checked the layout: only a foreign edit since
        raise ArchiveInputError(f"{name} is not an array")
    return node


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's `disable`: None shows the bar only on a terminal."""
    return None if progress is None else not progress

"""The study table at a catalog's root: one row per study (dim `study`), read and written whole, in bulk.

Columns are 1-D Zarr arrays along `study`, so `xr.open_datatree(CATALOG, engine="zarr")` shows the table as the root
dataset (`tree.to_dataset().to_dataframe()`). A table of a few thousand studies is a few kB: planning reads it in
one go, never study by study.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import zarr

from storage.errors import ArchiveInputError, ArchiveSchemaError

INGEST_STATES = ("pending", "done", "failed")
SPLITS = ("", "train", "val", "test")  # "": not assigned


@dataclass(frozen=True)
class StudyRow:
    """One study of the catalog: its key (salted hash of the series), subject (pseudonym), what it holds, its split
    and whether its ingest finished."""

    study: str
    subject: str
    format: str
    slices: int = 0
    ny: int = 0
    nx: int = 0
    dz_mm: float = 0.0
    dy_mm: float = 0.0
    dx_mm: float = 0.0
    views: int = 0
    detectors: int = 0
    split: str = ""
    ingest: str = "pending"
    ingest_error: str = ""

    def __post_init__(self) -> None:
        if self.ingest not in INGEST_STATES:
            raise ArchiveInputError(f"ingest state must be one of {INGEST_STATES}, got {self.ingest!r}")
        if self.split not in SPLITS:
            raise ArchiveInputError(f"split must be one of {SPLITS[1:]} (or empty), got {self.split!r}")

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.views, self.detectors)

    def with_changes(self, **changes: Any) -> StudyRow:
        """A copy with some columns changed (checked again)."""
        return replace(self, **changes)


COLUMNS: dict[str, str] = {column.name: str(column.type) for column in fields(StudyRow)}
_DTYPES: dict[str, Any] = {"str": str, "int": "int64", "float": "float64"}
_FILLS: dict[str, Any] = {"str": "", "int": 0, "float": 0.0}


def create_table(group: zarr.Group) -> None:
    """Create the empty table's columns in the root group (the `study` column is the dim's coordinate)."""
    for name, kind in COLUMNS.items():
        group.create_array(
            name, shape=(0,), chunks=(4096,), dtype=_DTYPES[kind], fill_value=_FILLS[kind], dimension_names=["study"]
        )


def read_table(group: zarr.Group, where: str) -> list[StudyRow]:
    """Every row, in stored order; ArchiveSchemaError when a column is missing or the columns differ in length."""
    columns: dict[str, np.ndarray] = {}
    for name in COLUMNS:
        if name not in group:
            raise ArchiveSchemaError(f"{where}: the study table lacks its column {name!r}")
        columns[name] = np.asarray(_column(group, name)[:])
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ArchiveSchemaError(f"{where}: study table columns differ in length {sorted(lengths)} (a foreign edit?)")
    converters: dict[str, Any] = {"str": str, "int": int, "float": float}
    n_rows = lengths.pop() if lengths else 0
    return [StudyRow(**{name: converters[COLUMNS[name]](columns[name][i]) for name in COLUMNS}) for i in range(n_rows)]


def write_table(group: zarr.Group, rows: Sequence[StudyRow]) -> None:
    """Replace the table by `rows` (callers hold the catalog's table lock); keys must be unique."""
    keys = [row.study for row in rows]
    if len(set(keys)) != len(keys):
        raise ArchiveInputError(f"study keys must be unique, got duplicates in {keys}")
    for name, kind in COLUMNS.items():
        values = np.asarray([getattr(row, name) for row in rows], dtype=object if kind == "str" else _DTYPES[kind])
        array = _column(group, name)
        array.resize((len(rows),))
        if rows:
            array[:] = values


def _column(group: zarr.Group, name: str) -> zarr.Array:
    """The column array `name` (ArchiveSchemaError when it is a group)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise ArchiveSchemaError(f"study table column {name!r} is not an array")
    return node

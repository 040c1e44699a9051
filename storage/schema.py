"""The layout of one study (an archive), schema version 2: every variable with its dims, dtype and fill value, and
the check that a store has them.

Float variables are filled with NaN (an unwritten chunk costs nothing and reads as NaN); ledgers with 0 = pending
and "" for their strings. Dims: slice, y, x (images), view, det (sinograms), dose (dose fractions).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from storage.errors import ArchiveSchemaError
from storage.ledger import LEDGER_DIMS, error_variable, produced_by_variable, status_variable

SCHEMA_VERSION = 2
"""2: studies live in a catalog (storage.catalog) and keep their lock files outside the Zarr hierarchy; the
variables are those of version 1, which is still read (a version-1 archive opens as a one-study catalog)."""
READABLE_SCHEMA_VERSIONS = (1, 2)
REQUIRED_ATTRS = (
    "schema_version",
    "geometry",
    "physics",
    "seed",
    "spacing_mm",
    "sinogram_shape",
    "image_shape",
    "subject_key",
    "source",
    "created",
)


@dataclass(frozen=True)
class VariableSpec:
    """What one archive variable must look like: its dims, dtype ('float32', 'int8', 'str', ...) and fill value."""

    dims: tuple[str, ...]
    dtype: str
    fill_value: Any


def _float_image(*dims: str) -> VariableSpec:
    return VariableSpec(dims, "float32", np.nan)


DATA_VARIABLES = MappingProxyType(
    {
        "image_hu": _float_image("slice", "y", "x"),
        "proj_nd": _float_image("slice", "view", "det"),
        "fbp_nd": _float_image("slice", "y", "x"),
        "proj_ld": _float_image("dose", "slice", "view", "det"),
        "fbp_ld": _float_image("dose", "slice", "y", "x"),
        "spdiff_fbp": _float_image("dose", "slice", "y", "x"),
        "need": _float_image("dose", "slice", "y", "x"),
        "proj_spdiff": _float_image("dose", "slice", "view", "det"),
    }
)

COORDINATES = MappingProxyType(
    {
        "slice": VariableSpec(("slice",), "int64", -1),
        "z_mm": VariableSpec(("slice",), "float64", np.nan),
        "dose": VariableSpec(("dose",), "float64", np.nan),
    }
)


def _ledger_variables() -> dict[str, VariableSpec]:
    specs = {}
    for name, dims in LEDGER_DIMS.items():
        specs[status_variable(name)] = VariableSpec(dims, "int8", 0)
        specs[produced_by_variable(name)] = VariableSpec(dims, "str", "")
        specs[error_variable(name)] = VariableSpec(dims, "str", "")
    return specs


LEDGER_VARIABLES = MappingProxyType(_ledger_variables())
ALL_VARIABLES = MappingProxyType({**COORDINATES, **DATA_VARIABLES, **LEDGER_VARIABLES})


def dtype_name(array: Any) -> str:
    """The schema's name for a zarr array's dtype ('str' for variable-length strings)."""
    dtype = array.dtype
    if dtype.kind in ("T", "U", "O"):
        return "str"
    return str(np.dtype(dtype))


def validate_layout(attrs: dict[str, Any], arrays: dict[str, Any], where: str) -> dict[str, int]:
    """Check attrs and arrays ({name: zarr array}) against the schema; return the dim sizes or raise
    ArchiveSchemaError."""
    version = attrs.get("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ArchiveSchemaError(
            f"{where} has schema_version {version!r}, this code reads {list(READABLE_SCHEMA_VERSIONS)}"
        )
    missing_attrs = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing_attrs:
        raise ArchiveSchemaError(f"{where} lacks the attrs {missing_attrs}")
    sizes: dict[str, tuple[int, str]] = {}
    for name, spec in ALL_VARIABLES.items():
        if name not in arrays:
            raise ArchiveSchemaError(f"{where} lacks the variable {name!r} (dims {spec.dims})")
        array = arrays[name]
        dims = tuple(array.metadata.dimension_names or ())
        if dims != spec.dims:
            raise ArchiveSchemaError(f"{where}: variable {name!r} has dims {dims}, expected {spec.dims}")
        if dtype_name(array) != spec.dtype:
            raise ArchiveSchemaError(f"{where}: variable {name!r} has dtype {dtype_name(array)}, expected {spec.dtype}")
        for dim, size in zip(dims, array.shape, strict=False):
            known = sizes.setdefault(dim, (size, name))
            if known[0] != size:
                raise ArchiveSchemaError(
                    f"{where}: dim {dim!r} has length {size} in {name!r} but {known[0]} in {known[1]!r}"
                    " (an interrupted add_doses or a foreign edit)"
                )
    return {dim: size for dim, (size, _) in sizes.items()}

"""Where a catalog's parts live on disk: the root group, `studies/<key>` groups, and lock and staging directories
kept beside the store (`<catalog>.locks/`), outside the Zarr hierarchy, so `xr.open_datatree` sees only data.

    outputs/cohort.zarr/            zarr root group (kind "need-catalog"): the study table
    outputs/cohort.zarr/studies/K/  one study: the per-study layout of storage.schema
    outputs/cohort.zarr.locks/      advisory lock files and half-built studies (safe to delete when nothing runs)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CATALOG_KIND = "need-catalog"
STUDIES_GROUP = "studies"
LOCK_SUFFIX = ".locks"


def root_attributes(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr group at `path`, or None when `path` holds no readable Zarr v3 group."""
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attributes = meta.get("attributes", {})
    return attributes if isinstance(attributes, dict) else None


def is_catalog_root(path: Path) -> bool:
    """Whether `path` is the root group of a catalog."""
    attributes = root_attributes(path)
    return attributes is not None and attributes.get("kind") == CATALOG_KIND


def catalog_of_study(path: Path) -> Path | None:
    """The catalog root holding the study group at `path` (`<root>/studies/<key>`), or None for a lone archive."""
    path = Path(path)
    if path.parent.name == STUDIES_GROUP and is_catalog_root(path.parent.parent):
        return path.parent.parent
    return None


def lock_root(catalog: Path) -> Path:
    """The directory beside the catalog that holds its lock files and staging directories."""
    catalog = Path(catalog)
    return catalog.parent / f"{catalog.name}{LOCK_SUFFIX}"


def study_lock_dir(path: Path) -> Path:
    """Lock files of the archive at `path`: beside its catalog for a study, inside it (`locks/`) for a lone archive."""
    catalog = catalog_of_study(path)
    if catalog is None:
        return Path(path) / "locks"
    return lock_root(catalog) / STUDIES_GROUP / Path(path).name

"""Put a freshly built store at its path atomically: build in a hidden sibling directory, then rename into place.

A crash while building leaves nothing at the target path (only a hidden `.NAME.creating-*` sibling); replacing an
old archive renames it aside only once the new one is complete. Foreign data at the path is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from storage.errors import ArchiveExistsError

PathState = Literal["absent", "empty", "archive", "foreign"]


def path_state(path: Path) -> PathState:
    """What lies at `path`: nothing, an empty directory, a NEED archive (zarr group with schema_version) or else."""
    if not path.exists() and not path.is_symlink():
        return "absent"
    if not path.is_dir() or path.is_symlink():
        return "foreign"
    if not any(path.iterdir()):
        return "empty"
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return "foreign"
    is_group = isinstance(meta, dict) and meta.get("node_type") == "group"
    return "archive" if is_group and "schema_version" in meta.get("attributes", {}) else "foreign"


def build_then_place(
    path: Path,
    build: Callable[[Path], None],
    overwrite: bool,
    before_replace: Callable[[Path], None],
    staging_parent: Path | None = None,
) -> None:
    """Run `build(tmp_dir)` and move the result to `path`; an existing archive is replaced only when `overwrite`.

    `before_replace(path)` runs just before an old archive is swapped out and may raise to refuse (e.g. it is locked).
    `staging_parent` (same file system) holds the half-built store instead of `path`'s folder: a catalog keeps its
    half-built studies outside the Zarr hierarchy.
    """
    state = path_state(path)
    if state == "foreign":
        raise ArchiveExistsError(
            f"{path} holds something that is not a NEED archive; refusing to touch it (overwrite or not)"
        )
    if state == "archive" and not overwrite:
        raise ArchiveExistsError(f"an archive already exists at {path}; open it, or pass overwrite=True to replace it")
    if state == "archive":
        before_replace(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging_parent = staging_parent or path.parent
    staging_parent.mkdir(parents=True, exist_ok=True)
    staging = staging_parent / f".{path.name}.creating-{token}"
    try:
        build(staging)
        if path_state(path) == "archive":
            before_replace(path)
            _swap_in(staging, path, staging_parent / f".{path.name}.replaced-{token}")
        else:
            _rename_into_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rename_into_place(staging: Path, path: Path) -> None:
    """Rename `staging` to `path` (an absent path or an empty directory); anything else appearing meanwhile is
    refused."""
    try:
        os.rename(staging, path)
    except OSError as err:
        raise ArchiveExistsError(f"{path} was filled by someone else while the archive was being built: {err}") from err


def _swap_in(staging: Path, path: Path, aside: Path) -> None:
    """Replace the archive at `path` by `staging`: old renamed aside, new renamed in, then old deleted."""
    os.rename(path, aside)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside)

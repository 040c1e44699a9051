"""Put a freshly built output (an archive, an exported series, a file) at its path only once it is complete: build
it in a hidden sibling, then rename it into place.

A crash while building leaves the target as it was (absent, or the old output) plus a hidden
`.creating-PID-TOKEN-NAME` sibling (the name last, so a file keeps its suffix such as .nii.gz); replacing an old
output renames it aside (`.replaced-PID-TOKEN-NAME`) only once
the new one is complete, and puts it back if the swap fails. The next placement of the same name tidies up after a
dead process: its half-built sibling is deleted, and an old output it had set aside is put back if the target is
missing (else deleted). Foreign data at an archive's path is never touched.
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
    if not _exists(path):
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
    """Build an archive with `build(tmp_dir)` and place it at `path` (absent or an empty directory); an existing
    archive is replaced only when `overwrite`, after `before_replace(path)` (which may raise to refuse, e.g. it is
    locked). `staging_parent` (same file system) holds the half-built store: a catalog keeps its half-built studies
    outside the Zarr hierarchy."""
    state = path_state(path)
    if state == "foreign":
        raise ArchiveExistsError(
            f"{path} holds something that is not a NEED archive; refusing to touch it (overwrite or not)"
        )
    if state == "archive" and not overwrite:
        raise ArchiveExistsError(f"an archive already exists at {path}; open it, or pass overwrite=True to replace it")
    if state == "archive":
        before_replace(path)
    place_built(
        path,
        build,
        overwrite=state != "absent",
        staging_parent=staging_parent,
        before_replace=before_replace if state == "archive" else None,
        exists_error=ArchiveExistsError,
    )


def place_built(
    target: Path,
    build: Callable[[Path], object],
    overwrite: bool,
    *,
    staging_parent: Path | None = None,
    before_replace: Callable[[Path], None] | None = None,
    exists_error: type[Exception] = FileExistsError,
) -> None:
    """Run `build(staging)` (it creates `staging`, a folder or a file) and rename the result to `target`. Something
    at `target` (before, or appearing meanwhile) is replaced only when `overwrite`, after `before_replace(target)`;
    else `exists_error` is raised and nothing is touched."""
    staging_parent = staging_parent or target.parent
    tidy_after_dead_processes(target, staging_parent)
    if _exists(target) and not overwrite:
        raise exists_error(f"{target} already exists: pass --overwrite to replace it")
    staging_parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    staging = staging_parent / f".creating-{tag}-{target.name}"
    try:
        build(staging)
        if not _exists(target):
            _rename_new(staging, target, exists_error)
            return
        if not overwrite:
            raise exists_error(f"{target} appeared while it was being written; it was left as it is")
        if before_replace is not None:
            before_replace(target)
        _swap(staging, target, staging_parent / f".replaced-{tag}-{target.name}")
    finally:
        _remove(staging)


def tidy_after_dead_processes(target: Path, staging_parent: Path) -> None:
    """Delete what a dead process left while placing `target`: half-built siblings, and old outputs set aside by
    a swap it did not finish (put back instead when `target` is missing)."""
    for kind in ("replaced", "creating"):
        for leftover in sorted(staging_parent.glob(f".{kind}-*-*-{target.name}")):
            if _process_alive(leftover.name.split("-", 2)[1]):
                continue
            if kind == "replaced" and not _exists(target):
                os.rename(leftover, target)
            else:
                _remove(leftover)


def _process_alive(pid_text: str) -> bool:
    """Whether the process that named a sibling runs (an unreadable name counts as alive: never delete it)."""
    try:
        os.kill(int(pid_text), 0)
    except ValueError:
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _rename_new(staging: Path, target: Path, exists_error: type[Exception]) -> None:
    """Rename `staging` to the absent `target`; anything appearing there meanwhile is refused, never replaced."""
    try:
        if staging.is_dir():
            os.rename(staging, target)  # fails if a non-empty folder appeared at target
        else:
            os.link(staging, target)  # fails if anything appeared at target (os.rename would replace a file)
            staging.unlink()
    except OSError as err:
        raise exists_error(f"{target} was filled by someone else while it was being written: {err}") from err


def _swap(staging: Path, target: Path, aside: Path) -> None:
    """Replace `target` by `staging`: old renamed aside, new renamed in (old put back if that fails), old deleted."""
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif _exists(path):
        path.unlink()

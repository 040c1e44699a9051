"""Whether a folder can be written, tried for real (a file created and removed), so a read-only mount, a full
quota or a folder of another user is seen before any work starts. Permission bits alone cannot tell: root ignores
them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class NotWritableError(PermissionError, ValueError):
    """A folder that a command must write into cannot be written (a user error, reported as one line)."""


def nearest_existing(path: Path) -> Path:
    """`path` itself if it exists, else its closest existing ancestor (where it would be created)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def require_writable_dir(folder: Path, what: str) -> None:
    """Raise NotWritableError naming `what` unless a file can be created (and is removed again) in `folder`; a
    folder not yet there is judged by the closest existing ancestor, where it would be created."""
    target = nearest_existing(folder)
    if not target.is_dir():
        raise NotWritableError(f"{what} {folder}: {target} is a file, not a folder")
    try:
        handle, name = tempfile.mkstemp(prefix=".need-write-check-", dir=target)
    except OSError as err:
        where = "" if target == Path(folder).absolute() else f" (its nearest existing folder {target})"
        raise NotWritableError(f"{what} {folder} is not writable{where}: {err.strerror or err}") from None
    os.close(handle)
    os.unlink(name)

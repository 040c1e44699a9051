"""Exclusive, non-blocking advisory locks on files (fcntl.flock), used to keep two runs off the same archive work.

flock locks are released by the kernel when the holder exits, so a killed process never leaves a stale lock.
They are reliable on local file systems; on network file systems support depends on the server.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.errors import ArchiveLockedError


@contextmanager
def exclusive_lock(lock_path: Path, description: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` for the `with` block; raise ArchiveLockedError at once if it is held."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ArchiveLockedError(
                    f"{description} is locked by another process (lock file {lock_path})"
                ) from None
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_locked(lock_path: Path) -> bool:
    """True when some process holds the lock on `lock_path` right now (probes without waiting)."""
    if not lock_path.is_file():
        return False
    try:
        with exclusive_lock(lock_path, str(lock_path)):
            return False
    except ArchiveLockedError:
        return True

"""Small tmpfs mounts for fault tests and bench/faults.py: a disk that fills up, a read-only catalog.

Mounting needs root (the tests and CI run as root); where the kernel refuses, MountRefused says why, so a test can
fail (or a benchmark report a case as not run) with that reason instead of a confusing error later.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MountRefused(RuntimeError):
    """`mount` refused (not root, no CAP_SYS_ADMIN, no tmpfs): the reason is the message."""


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise MountRefused(f"`mount {' '.join(args)}` refused: {done.stderr.strip() or done.returncode}")


def unmount(path: Path) -> None:
    """Unmount `path`, lazily if it is busy (a killed process may still hold a file there for a moment)."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def tmpfs(path: Path, size_mb: float) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted at `path` (created) for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={max(1, round(size_mb * 1024))}k", "tmpfs", str(path))
    try:
        yield path
    finally:
        unmount(path)


def resize(path: Path, size_mb: float) -> None:
    """Grow (or shrink) the tmpfs at `path` in place: its files stay."""
    _mount("-o", f"remount,size={max(1, round(size_mb * 1024))}k", str(path))


def make_read_only(path: Path) -> None:
    """Remount the tmpfs at `path` read-only (root cannot write it either, unlike a chmod)."""
    _mount("-o", "remount,ro", str(path))

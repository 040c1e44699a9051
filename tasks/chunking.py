"""Split the slices that still need work into chunks of contiguous slices (one Prefect task each)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class SliceChunk:
    """Contiguous slices [start, stop) processed by one task."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def label(self) -> str:
        return f"{self.start}-{self.stop - 1}"


def contiguous_chunks(slices: Iterable[int], max_slices: int) -> list[SliceChunk]:
    """Group sorted slice indices into runs of consecutive indices, each cut to at most `max_slices`."""
    if max_slices < 1:
        raise ValueError(f"chunk size must be at least 1 slice, got {max_slices}")
    chunks: list[SliceChunk] = []
    run_start = previous = None
    for index in sorted(set(int(s) for s in slices)):
        if run_start is not None and index == previous + 1 and index - run_start < max_slices:
            previous = index
            continue
        if run_start is not None:
            chunks.append(SliceChunk(run_start, previous + 1))
        run_start = previous = index
    if run_start is not None:
        chunks.append(SliceChunk(run_start, previous + 1))
    return chunks

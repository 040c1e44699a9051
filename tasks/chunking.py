"""Split slices into chunks of contiguous slices (one Prefect task each): runs of what is to do, or cells of a fixed
grid when a chunk's boundaries shape its results (SPDiff's slice context)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_CHUNK_SLICES = 8
"""Slices per reconstruct chunk: the size of the fixed grid that shapes results (see `grid_cells`)."""


def check_chunk_slices(chunk_slices: int) -> int:
    """The one rule for a chunk size (`--chunk-slices`): at least 1 slice."""
    if chunk_slices < 1:
        raise ValueError(f"chunk size (--chunk-slices) must be at least 1 slice, got {chunk_slices}")
    return chunk_slices


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
    check_chunk_slices(max_slices)
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


@dataclass(frozen=True)
class GridCell:
    """One cell [start, stop) of the fixed slice grid, computed whole, and the slices of it to write (`todo`)."""

    cell: SliceChunk
    todo: tuple[int, ...]

    @property
    def label(self) -> str:
        return self.cell.label


def grid_cells(slices: Iterable[int], cell_slices: int, n_slices: int) -> list[GridCell]:
    """The cells [k·cell_slices, (k+1)·cell_slices) ∩ [0, n_slices) holding any of `slices`, each with those slices.

    The grid depends only on `cell_slices`, never on which slices are to do, so a rerun of a few failed slices
    computes exactly the cells an uninterrupted run computed."""
    check_chunk_slices(cell_slices)
    wanted = sorted(set(int(s) for s in slices))
    outside = [s for s in wanted if not 0 <= s < n_slices]
    if outside:
        raise ValueError(f"slices {outside} lie outside [0, {n_slices})")
    cells: dict[int, list[int]] = {}
    for s in wanted:
        cells.setdefault(s // cell_slices, []).append(s)
    return [
        GridCell(SliceChunk(k * cell_slices, min((k + 1) * cell_slices, n_slices)), tuple(todo))
        for k, todo in sorted(cells.items())
    ]


@dataclass(frozen=True)
class CellBatch:
    """Consecutive grid cells of one study at one dose, run by one task one after the other: a run with many cells
    submits fewer, longer tasks (each Prefect task on Dask costs tens of ms to submit), while every cell is still
    computed whole, so results do not depend on the batching."""

    cells: tuple[GridCell, ...]

    @property
    def todo(self) -> tuple[int, ...]:
        return tuple(s for cell in self.cells for s in cell.todo)

    @property
    def label(self) -> str:
        return f"{self.cells[0].cell.start}-{self.cells[-1].cell.stop - 1}"


def batch_cells(cells: list[GridCell], per_task: int) -> list[CellBatch]:
    """Runs of up to `per_task` consecutive cells (in grid order)."""
    if per_task < 1:
        raise ValueError(f"cells per task must be at least 1, got {per_task}")
    ordered = sorted(cells, key=lambda cell: cell.cell.start)
    return [CellBatch(tuple(ordered[i : i + per_task])) for i in range(0, len(ordered), per_task)]

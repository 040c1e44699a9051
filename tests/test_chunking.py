import pytest

from tasks.chunking import CellBatch, GridCell, SliceChunk, batch_cells, contiguous_chunks, grid_cells


def test_runs_of_consecutive_slices_are_cut_to_the_chunk_size():
    chunks = contiguous_chunks([7, 0, 1, 2, 3, 4, 9, 10, 8], max_slices=3)
    assert chunks == [SliceChunk(0, 3), SliceChunk(3, 5), SliceChunk(7, 10), SliceChunk(10, 11)]
    assert sum(len(c) for c in chunks) == 9


def test_gaps_split_chunks_and_duplicates_are_ignored():
    assert contiguous_chunks([5, 5, 2], max_slices=8) == [SliceChunk(2, 3), SliceChunk(5, 6)]
    assert contiguous_chunks([], max_slices=4) == []


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        contiguous_chunks([1, 2], max_slices=0)


def test_grid_cells_do_not_move_with_what_is_to_do():
    everything = grid_cells(range(10), cell_slices=4, n_slices=10)
    assert [c.cell for c in everything] == [SliceChunk(0, 4), SliceChunk(4, 8), SliceChunk(8, 10)]
    rerun = grid_cells([5, 9], cell_slices=4, n_slices=10)
    assert rerun == [GridCell(SliceChunk(4, 8), (5,)), GridCell(SliceChunk(8, 10), (9,))]


def test_grid_cells_refuse_bad_sizes_and_slices():
    with pytest.raises(ValueError, match="at least 1"):
        grid_cells([1], cell_slices=0, n_slices=4)
    with pytest.raises(ValueError, match="outside"):
        grid_cells([4], cell_slices=2, n_slices=4)


def test_cells_are_batched_in_grid_order_without_changing_them():
    cells = grid_cells([9, 1, 5, 13], cell_slices=4, n_slices=16)
    batches = batch_cells(list(reversed(cells)), per_task=3)
    assert batches == [CellBatch(tuple(cells[:3])), CellBatch((cells[3],))]
    assert batches[0].todo == (1, 5, 9) and batches[0].label == "0-11"
    with pytest.raises(ValueError, match="at least 1"):
        batch_cells(cells, per_task=0)

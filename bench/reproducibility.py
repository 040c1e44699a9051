"""How a stored result depends on the batch size and on the chunk grid, in HU: the shipped `cpu` weights on the
bundled head CT's held-out slices 45–64, through the reconstruct task itself.

    python bench/reproducibility.py [--doses 0.25,0.05] [--chunks 5,10] [--batches 1,4]

Each configuration reconstructs the same slices into its own copy of one archive; every output is compared with
the first configuration (the reference: first chunk size, first batch size). A rerun of the reference must match
it exactly; a batch size changes the networks' float rounding (which can flip a Poisson draw); a chunk grid changes
which neighbours' chains interact (SPDiff sees three slices). Writes bench/results/reproducibility.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from flows.ingest import open_or_create_archive
from flows.models import resolve_model
from storage.archive import open_archive
from storage.readers import BUNDLED_HEAD_CT
from storage.splits import HEAD_CT_SPLIT
from tasks.chunking import CellBatch, SliceChunk, grid_cells
from tasks.ingest import ingest_chunk
from tasks.reconstruct import OUTPUTS, ReconstructOptions, reconstruct_chunk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import machine_info, write_result  # noqa: E402 (repo root added above)

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
COMPARED = ("spdiff_fbp", "need")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doses", default="0.25,0.05", help="dose fractions (default 0.25,0.05)")
    parser.add_argument("--chunks", default="5,10", help="chunk grid sizes; the first is the reference (default 5,10)")
    parser.add_argument("--batches", default="1,4", help="slices per network call; the first is the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="result file (default bench/results/reproducibility.json)"
    )
    return parser.parse_args()


def ingest_heldout(root: Path, doses: list[float], seed: int, widest_chunk: int) -> tuple[Path, range]:
    """An archive of the head CT with only the held-out slices' grid cells (and their context slices) ingested."""
    heldout = range(HEAD_CT_SPLIT.heldout[0], HEAD_CT_SPLIT.heldout[-1] + 1)
    path = root / "pristine.zarr"
    archive = open_or_create_archive(str(BUNDLED_HEAD_CT), str(path), doses, seed, overwrite=True, spacing_mm=None)
    cells = grid_cells(heldout, widest_chunk, archive.n_slices)
    span = SliceChunk(max(0, cells[0].cell.start - 1), min(archive.n_slices, cells[-1].cell.stop + 1))
    ingest_chunk.fn(str(path), span, doses)
    return path, heldout


def reconstruct_copy(
    pristine: Path, target: Path, doses: list[float], slices: range, options: ReconstructOptions, models: tuple
) -> dict[tuple[str, float], np.ndarray]:
    """Reconstruct `slices` at each dose into a fresh copy of the archive; return every output (n, H, W) in HU."""
    shutil.copytree(pristine, target)
    archive = open_archive(target)
    key = options.result_key(*models, archive)
    for dose in doses:
        for cell in grid_cells(slices, options.chunk_slices, archive.n_slices):
            reconstruct_chunk.fn(str(target), dose, CellBatch((cell,)), *models, options, key)
    archive = open_archive(target)
    return {
        (name, dose): archive.read(name, slices.start, slices.stop, dose=dose) for name in OUTPUTS for dose in doses
    }


def differences(change: str, ours: dict, reference: dict) -> list[dict]:
    """One row per (output, dose): how far `ours` lies from the reference, in HU."""
    rows = []
    for (name, dose), values in ours.items():
        if name not in COMPARED:
            continue
        diff = np.abs(values - reference[name, dose])
        rows.append(
            {
                "change": change,
                "output": name,
                "dose": dose,
                "max_abs_hu": float(diff.max()),
                "p99_abs_hu": float(np.percentile(diff, 99)),
                "mean_abs_hu": float(diff.mean()),
                "changed_fraction": float((diff > 0).mean()),
            }
        )
    return rows


def main() -> None:
    args = parse_args()
    doses = [float(d) for d in args.doses.split(",")]
    chunks = [int(c) for c in args.chunks.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    started = time.perf_counter()
    models = (
        resolve_model(str(WEIGHTS / "spdiff_cpu.pt"), "spdiff"),
        resolve_model(str(WEIGHTS / "dgdiff_cpu.pt"), "dgdiff"),
    )
    with tempfile.TemporaryDirectory(prefix="need-repro-") as scratch:
        root = Path(scratch)
        pristine, slices = ingest_heldout(root, doses, args.seed, max(chunks))
        base = ReconstructOptions(device="cpu", seed=args.seed, chunk_slices=chunks[0], batch_size=batches[0])
        reference = reconstruct_copy(pristine, root / "reference.zarr", doses, slices, base, models)
        configurations = [("rerun", base)]
        configurations += [(f"batch {batches[0]} -> {b}", replace(base, batch_size=b)) for b in batches[1:]]
        configurations += [(f"chunks {chunks[0]} -> {c}", replace(base, chunk_slices=c)) for c in chunks[1:]]
        rows = []
        for i, (change, options) in enumerate(configurations):
            ours = reconstruct_copy(pristine, root / f"run{i}.zarr", doses, slices, options, models)
            rows += differences(change, ours, reference)
    rerun_exact = all(row["max_abs_hu"] == 0.0 for row in rows if row["change"] == "rerun")
    write_result(
        "reproducibility",
        rows,
        machine=machine_info("cpu"),
        path=args.out,
        slices=f"{slices.start}-{slices.stop - 1}",
        seed=args.seed,
        reference={"chunk_slices": chunks[0], "batch_size": batches[0]},
        rerun_exact=rerun_exact,
        total_s=round(time.perf_counter() - started, 1),
    )


if __name__ == "__main__":
    main()

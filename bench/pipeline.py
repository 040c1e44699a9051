"""Benchmark the reconstruct flow's orchestration: 32 head-CT slices (256^2) at one dose with `tiny` models.

    python bench/pipeline.py [--slices 32] [--chunk-slices 8] [--dose 0.25]       # writes bench/results/pipeline.json
    python bench/pipeline.py --slices 4 --chunk-slices 2 --out /tmp/pipeline_smoke.json   # smoke run

Runs the same flow with 1 and with 2 local Dask workers on fresh copies of one archive. Orchestration
overhead = (flow wall time with 1 worker − Σ chunk-task time) / flow wall time; the flow wall time
includes starting the Dask cluster, the task time is measured inside each task. The tiny models are fitted for a
few steps (tasks.quick_models).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tasks.quick_models import write_tiny_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import (  # noqa: E402 (needs the repo root on sys.path, added just above)
    TIMING_FIRST_SLICE,
    head_ct,
    machine_info,
    use_local_prefect,
    write_result,
)


def timed_reconstruct(archive: Path, workers: int, dose: float, chunk_slices: int, models: tuple[str, str]) -> dict:
    """One flow run on `workers` local Dask workers: wall time, summed task time, chunk count."""
    from flows.reconstruct import run_reconstruct

    started = time.perf_counter()
    summary = run_reconstruct(
        workers=workers,
        catalog=str(archive),
        doses=[dose],
        spdiff=models[0],
        dgdiff=models[1],
        chunk_slices=chunk_slices,
        device="cpu",
    )
    wall = time.perf_counter() - started
    (study,) = summary["studies"].values()
    entry = study["doses"][dose]
    return {
        "workers": workers,
        "wall_s": wall,
        "task_s_sum": entry["task_seconds"],
        "chunks": entry["chunks"],
        "slices": len(entry["done"]),
        **{f"{stage}_s_sum": s for stage, s in entry["seconds"].items()},
    }


def main() -> None:
    """Ingest the slices once, fit tiny models, then time the reconstruct flow on 1 and 2 workers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--chunk-slices", type=int, default=8)
    parser.add_argument("--dose", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/pipeline.json)")
    args = parser.parse_args()
    use_local_prefect()
    from flows.ingest import run_ingest
    from flows.runtime import shared_prefect_api

    volume = head_ct()
    with tempfile.TemporaryDirectory() as tmp, shared_prefect_api():
        root = Path(tmp)
        source = root / "slices.npy"
        np.save(source, volume.hu[TIMING_FIRST_SLICE : TIMING_FIRST_SLICE + args.slices])
        pristine = root / "pristine.zarr"
        run_ingest(
            sources=str(source),
            catalog=str(pristine),
            doses=[args.dose],
            spacing_mm=list(volume.spacing_mm),
            chunk_slices=args.chunk_slices,
        )
        models = write_tiny_models(pristine, root)
        rows = []
        for workers in (1, 2):
            archive = root / f"run{workers}.zarr"
            shutil.copytree(pristine, archive)
            rows.append(timed_reconstruct(archive, workers, args.dose, args.chunk_slices, models))
    one, two = rows
    write_result(
        "pipeline",
        rows,
        machine=machine_info("cpu"),
        overhead_fraction=(one["wall_s"] - one["task_s_sum"]) / one["wall_s"],
        speedup_2_workers=one["wall_s"] / two["wall_s"],
        n_slices=args.slices,
        chunk_slices=args.chunk_slices,
        dose=args.dose,
        path=args.out,
    )


if __name__ == "__main__":
    main()

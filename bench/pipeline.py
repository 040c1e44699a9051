"""Benchmark the reconstruct flow's orchestration: 32 head-CT slices (256^2) at one dose with `tiny` models.

    python bench/pipeline.py [--slices 32] [--chunk-slices 8] [--dose 0.25]

Runs the same flow with 1 and with 2 local Dask workers on fresh copies of one archive. Orchestration
overhead = (flow wall time with 1 worker − Σ chunk-task time) / flow wall time; the flow wall time
includes starting the Dask cluster, the task time is measured inside each task. Writes
bench/results/pipeline.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from bench.common import machine_info, write_result  # noqa: E402
from flows.ingest import run_ingest  # noqa: E402
from flows.reconstruct import run_reconstruct  # noqa: E402
from flows.runtime import shared_prefect_api  # noqa: E402
from storage.readers import BUNDLED_HEAD_CT, read_volume  # noqa: E402
from tests.pipeline_fixtures import write_tiny_models  # noqa: E402

FIRST_SLICE = 40


def timed_reconstruct(archive: Path, workers: int, dose: float, chunk_slices: int, models: tuple[str, str]) -> dict:
    """One flow run on `workers` local Dask workers: wall time, summed task time, chunk count."""
    started = time.perf_counter()
    summary = run_reconstruct(workers=workers, archive=str(archive), doses=[dose], spdiff=models[0],
                              dgdiff=models[1], chunk_slices=chunk_slices, device="cpu")
    wall = time.perf_counter() - started
    entry = summary["doses"][dose]
    return {"workers": workers, "wall_s": wall, "task_s_sum": entry["task_seconds"], "chunks": entry["chunks"],
            "slices": len(entry["done"]), **{f"{stage}_s_sum": s for stage, s in entry["seconds"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--chunk-slices", type=int, default=8)
    parser.add_argument("--dose", type=float, default=0.25)
    args = parser.parse_args()
    volume = read_volume(BUNDLED_HEAD_CT)
    with tempfile.TemporaryDirectory() as tmp, shared_prefect_api():
        root = Path(tmp)
        source = root / "slices.npy"
        np.save(source, volume.hu[FIRST_SLICE : FIRST_SLICE + args.slices])
        pristine = root / "pristine.zarr"
        run_ingest(source=str(source), archive=str(pristine), doses=[args.dose], spacing_mm=list(volume.spacing_mm),
                   chunk_slices=args.chunk_slices)
        models = write_tiny_models(pristine, root)
        rows = []
        for workers in (1, 2):
            archive = root / f"run{workers}.zarr"
            shutil.copytree(pristine, archive)
            rows.append(timed_reconstruct(archive, workers, args.dose, args.chunk_slices, models))
    one, two = rows
    write_result(
        "pipeline", rows, machine=machine_info("cpu"),
        overhead_fraction=(one["wall_s"] - one["task_s_sum"]) / one["wall_s"],
        speedup_2_workers=one["wall_s"] / two["wall_s"],
        n_slices=args.slices, chunk_slices=args.chunk_slices, dose=args.dose,
    )


if __name__ == "__main__":
    main()

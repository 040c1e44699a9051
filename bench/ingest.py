"""Benchmark the ingest flow: the bundled head CT (108 slices, 256^2) to an archive with four simulated doses.

    python bench/ingest.py [--workers 2] [--chunk-slices 8] [--out /tmp/ingest.json]

Writes bench/results/ingest.json (or --out): slices per second over the whole flow run, Dask start-up included
(the local Prefect API is started before the clock).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from storage.readers import BUNDLED_HEAD_CT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import DOSES, machine_info, use_local_prefect, write_result  # noqa: E402 (repo root added above)


def main() -> None:
    """Ingest the head CT with the ingest flow, timed; write the result file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--chunk-slices", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/ingest.json)")
    args = parser.parse_args()
    use_local_prefect()
    from flows.ingest import run_ingest
    from flows.runtime import shared_prefect_api
    from storage.archive import open_archive

    with tempfile.TemporaryDirectory() as tmp, shared_prefect_api():
        archive_path = Path(tmp) / "head_ct.zarr"
        started = time.perf_counter()
        summary = run_ingest(
            workers=args.workers,
            sources=str(BUNDLED_HEAD_CT),
            catalog=str(archive_path),
            doses=list(DOSES),
            chunk_slices=args.chunk_slices,
        )
        wall = time.perf_counter() - started
        archive = open_archive(archive_path)
        assert archive.todo("ingest") == [], "ingest left slices pending"
        sinogram = list(archive.settings["sinogram_shape"])
        size_mb = sum(f.stat().st_size for f in archive_path.rglob("*") if f.is_file()) / 1e6
    n = summary["slices"]
    row = {
        "case": "head_ct_256",
        "slices": n,
        "doses": len(DOSES),
        "sinogram": sinogram,
        "workers": args.workers,
        "chunk_slices": args.chunk_slices,
        "wall_s": wall,
        "archive_mb": size_mb,
    }
    write_result("ingest", [row], machine=machine_info("cpu"), path=args.out, slices_per_s=n / wall, n_doses=len(DOSES))


if __name__ == "__main__":
    main()

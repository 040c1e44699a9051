"""Benchmark the ingest flow: the bundled head CT (108 slices, 256^2) to an archive with four simulated doses.

    python bench/ingest.py [--workers 2] [--chunk-slices 8]

Writes bench/results/ingest.json: slices per second over the whole flow run, Dask start-up included
(the local Prefect API is started before the clock).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from bench.common import machine_info, write_result  # noqa: E402
from flows.ingest import DEFAULT_DOSES, run_ingest  # noqa: E402
from flows.runtime import shared_prefect_api  # noqa: E402
from storage.archive import open_archive  # noqa: E402
from storage.readers import BUNDLED_HEAD_CT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--chunk-slices", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, shared_prefect_api():
        archive_path = Path(tmp) / "head_ct.zarr"
        started = time.perf_counter()
        summary = run_ingest(workers=args.workers, source=str(BUNDLED_HEAD_CT), archive=str(archive_path),
                             doses=list(DEFAULT_DOSES), chunk_slices=args.chunk_slices)
        wall = time.perf_counter() - started
        archive = open_archive(archive_path)
        assert archive.todo("ingest") == [], "ingest left slices pending"
        sinogram = list(archive.settings["sinogram_shape"])
        size_mb = sum(f.stat().st_size for f in archive_path.rglob("*") if f.is_file()) / 1e6
    n = summary["slices"]
    row = {"case": "head_ct_256", "slices": n, "doses": len(DEFAULT_DOSES), "sinogram": sinogram,
           "workers": args.workers, "chunk_slices": args.chunk_slices, "wall_s": wall, "archive_mb": size_mb}
    write_result("ingest", [row], machine=machine_info("cpu"), slices_per_s=n / wall, n_doses=len(DEFAULT_DOSES))


if __name__ == "__main__":
    main()

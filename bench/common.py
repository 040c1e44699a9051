"""Shared benchmark helpers: the head CT's scans as `need ingest` simulates them, machine facts, a best-of-n timer,
and result files in BENCH_RESULTS.md's shape."""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from need_core import dgdiff, spdiff
from need_core.physics import FanBeamGeometry, PhysicsSettings, SimulatedScan, simulate_scan
from storage.checkpoints import load_checkpoint
from storage.readers import BUNDLED_HEAD_CT, read_volume
from storage.volume import Volume

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DOSES = (0.5, 0.25, 0.1, 0.05)
"""The dose fractions every benchmark reports (those `need ingest` simulates by default)."""
TIMING_FIRST_SLICE = 40
"""First head-CT slice of the chunk the timing benchmarks (speed, pipeline) run on."""


@functools.lru_cache(maxsize=1)
def head_ct() -> Volume:
    """The bundled head CT (108 slices, 256²), read once per process."""
    return read_volume(BUNDLED_HEAD_CT)


def head_ct_scan(slices: Sequence[int], doses: Sequence[float], seed: int) -> SimulatedScan:
    """Scans of the bundled head CT's `slices` exactly as `need ingest --seed SEED` writes them into its archive:
    the volume's own geometry, default physics, the archive's noise stream."""
    volume = head_ct()
    geometry = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:])
    return simulate_scan(volume.hu[list(slices)], geometry, PhysicsSettings(), doses, seed=seed, slice_indices=slices)


def with_halo(slices: Sequence[int]) -> list[int]:
    """Contiguous `slices` with one neighbour on each side: SPDiff's 3-slice context, as the reconstruct flow reads."""
    return [slices[0] - 1, *slices, slices[-1] + 1]


def load_spdiff(path: str | Path, device: str | torch.device) -> spdiff.SPDiffModel:
    """The SPDiff model (EMA weights) of a checkpoint file on `device`."""
    return spdiff.load_model(load_checkpoint(path, spdiff.CHECKPOINT_KIND), device=device)


def load_dgdiff(path: str | Path, device: str | torch.device) -> dgdiff.DGDiffModel:
    """The DGDiff model (EMA network and schedule) of a checkpoint file on `device`."""
    return dgdiff.load_model(load_checkpoint(path, dgdiff.CHECKPOINT_KIND), device=device)


def spdiff_denoise(
    model: spdiff.SPDiffModel, scan: SimulatedScan, dose: float, seed: int, device: str | torch.device | None = None
) -> np.ndarray:
    """SPDiff's denoised transmission of the scan at `dose` for all but its first and last slice, which are context
    only (as the reconstruct flow gives them); each slice draws from (seed, its slice index)."""
    return spdiff.denoise_volume(
        model,
        scan.proj_ld[dose],
        scan.physics.incident_count_at(dose),
        halo=(True, True),
        seed=seed,
        slice_ids=scan.slice_indices,
        device=device,
    ).transmission


def save_head_ct_slices(path: Path, slices: Sequence[int], downsample: int = 1) -> list[float]:
    """Save the bundled head CT's `slices` as a .npy volume (averaged over `downsample`² pixel blocks) for `need
    ingest`; returns the spacing (mm, z y x) to ingest it with."""
    volume = head_ct()
    hu = volume.hu[list(slices)]
    n, height, width = hu.shape
    small = hu.reshape(n, height // downsample, downsample, width // downsample, downsample).mean(axis=(2, 4))
    np.save(path, small.astype(np.float32))
    dz, dy, dx = (float(s) for s in volume.spacing_mm)
    return [dz, dy * downsample, dx * downsample]


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Measured float32 matrix-multiply rate (GFLOP/s, best of `repeats`) with `threads` torch threads on a CPU, or
    on a CUDA device (synchronised): the compute rate a FLOP-based floor divides by."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))

        def multiply() -> None:
            a @ b
            if a.is_cuda:
                torch.cuda.synchronize(a.device)

        multiply()
        return 2 * size**3 / best_time(multiply, repeats) / 1e9
    finally:
        torch.set_num_threads(previous)


def forward_flops(network: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward call of `network` on `inputs`, as torch.utils.flop_counter.FlopCounterMode counts them
    (2 per multiply-add of convolutions, matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(*inputs)
    return int(counter.get_total_flops())


def use_local_prefect() -> None:
    """Quiet, patient defaults for the local Prefect server a benchmark starts; call before Prefect is imported
    (it reads its settings once, at import)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else whatever platform reports."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Hardware facts for a result file: cpu, cores, gpu (None without CUDA), torch version, device used."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__, "device": str(device)}


def current_command() -> str:
    """The command line that ran this benchmark, as `python bench/NAME.py ...`."""
    return "python " + " ".join(sys.argv)


def best_time(function: Callable[[], Any], repeats: int = 3) -> float:
    """Fastest wall time (s) of `repeats` calls: the least disturbed by other load on the machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _cell(value: Any) -> str:
    """Short text for one table cell."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], scalars: dict[str, Any]) -> None:
    """Print rows as aligned tables, one per set of keys (rows of one kind together), then the scalars."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append(row)
    for columns, group in groups.items():
        cells = [[_cell(row[column]) for column in columns] for row in group]
        widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
        print("  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)))
        for line in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        print()
    for name, value in scalars.items():
        print(f"{name}: {_cell(value)}")


def write_result(
    name: str,
    rows: Sequence[dict[str, Any]],
    command: str | None = None,
    *,
    machine: dict[str, Any] | None = None,
    path: Path | None = None,
    table: bool = True,
    **scalars: Any,
) -> Path:
    """Write bench/results/NAME.json ({benchmark, created, command, machine, rows, **scalars}) and print a table.

    command defaults to the running command line; machine to machine_info() on the CPU; path (another file, e.g.
    for a smoke run) to bench/results/NAME.json. table=False skips the printed table (the caller prints its own).
    """
    report = {
        "benchmark": name,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command or current_command(),
        "machine": machine or machine_info(),
        "rows": list(rows),
        **scalars,
    }
    path = Path(path) if path is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if table:
        print_table(report["rows"], scalars)
    print(f"wrote {path}")
    return path

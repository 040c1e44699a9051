"""Shared benchmark helpers: machine facts, a best-of-n timer, and result files in BENCH_RESULTS.md's shape."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
        print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
        for line in cells:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
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
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
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

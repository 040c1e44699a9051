"""The measured runs of bench/throughput.py: the in-process reference, a timed reconstruct flow (task-run times from
the Prefect API), the FLOP-based floor, and the stored outputs they are compared by."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import forward_flops, matmul_gflops

if TYPE_CHECKING:  # the measured functions import torch and the flows themselves, after bench/throughput.py's setup
    from need_core.sampling import SamplingProfile


def only_study(catalog: Path) -> Any:
    """The one study of a one-study catalog, writable."""
    from storage.catalog import open_catalog

    store = open_catalog(catalog, mode="r+")
    (row,) = store.select(split=None, studies=None)
    return store.study(row.study, "r+")


def default_sampling(paths: tuple[str, str]) -> SamplingProfile:
    """The sampling profile the reconstruct flow takes by default for these two checkpoints."""
    from flows.models import resolve_model
    from flows.sampling import choose_sampling

    profile, _ = choose_sampling(None, resolve_model(paths[0], "spdiff"), resolve_model(paths[1], "dgdiff"))
    return profile


def inprocess_reference(
    catalog: Path,
    doses: Sequence[float],
    slices: list[int],
    chunk: int,
    paths: tuple[str, str],
    sampling: SamplingProfile,
    device: str = "cpu",
) -> dict[str, Any]:
    """The flow's chunk function on every grid cell of `slices` at each dose, in this process with all cores (or on
    the CUDA `device`), with the flow's sampling profile `sampling`."""
    import torch

    from flows.models import resolve_model
    from tasks.chunking import CellBatch, grid_cells
    from tasks.models import load_dgdiff, load_spdiff
    from tasks.reconstruct import ReconstructOptions, reconstruct_chunk

    torch.set_num_threads(os.cpu_count() or 1)
    models = resolve_model(paths[0], "spdiff"), resolve_model(paths[1], "dgdiff")
    load_spdiff(models[0], device), load_dgdiff(models[1], device)
    study = only_study(catalog)
    options = ReconstructOptions(device=device, chunk_slices=chunk, sampling=sampling)
    batch = CellBatch(tuple(grid_cells(slices, chunk, study.n_slices)))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for dose in doses:
        report = reconstruct_chunk.fn(
            str(study.path), dose, batch, *models, options, options.result_key(*models, study)
        )
        if sorted(report.done) != slices:
            raise RuntimeError(f"the reference reconstructed {sorted(report.done)} at dose {dose}, not {slices}")
        for stage, value in report.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + value
    wall = time.perf_counter() - started
    return {"wall_s": wall, "seconds": seconds, "torch_threads": torch.get_num_threads()}


def chunk_times(flow_run_id: Any, expected: int) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of the flow run's task runs, from the Prefect API (polled until all are there)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    times: list[tuple[float, float]] = []
    for _ in range(50):
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        times = [(r.start_time.timestamp(), r.end_time.timestamp()) for r in runs if r.start_time and r.end_time]
        if len(times) >= expected:
            return times
        time.sleep(0.2)
    raise RuntimeError(f"the Prefect API shows {len(times)} finished chunk tasks of {expected}")


def timed_flow(
    catalog: Path,
    doses: Sequence[float],
    slices: list[int],
    chunk: int,
    paths: tuple[str, str],
    runner: Any = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """One reconstruct flow run on `device` (the default local cluster for it, or `runner`): its times, stage
    seconds and start steps."""
    from flows.reconstruct import reconstruct, run_reconstruct

    params = dict(catalog=str(catalog), doses=list(doses), spdiff=paths[0], dgdiff=paths[1], chunk_slices=chunk)
    params.update(device=device, slices=slices, tracking=False, return_state=True)
    called = time.time()
    state = run_reconstruct(**params) if runner is None else reconstruct.with_options(task_runner=runner)(**params)
    returned = time.time()
    (study,) = state.result()["studies"].values()
    entries = study["doses"]
    chunks = chunk_times(state.state_details.flow_run_id, sum(entry["chunks"] for entry in entries.values()))
    first, last = min(start for start, _ in chunks), max(end for _, end in chunks)
    seconds: dict[str, float] = {}
    for entry in entries.values():
        for stage, value in entry["seconds"].items():
            seconds[stage] = seconds.get(stage, 0.0) + value
    return {
        "wall_s": returned - called,
        "to_first_chunk_s": first - called,
        "compute_s": returned - first,
        "shutdown_s": returned - last,
        "chunk_busy_s": sum(end - start for start, end in chunks),
        "chunks_span_s": last - first,
        "slice_doses": sum(len(entry["done"]) for entry in entries.values()),
        "chunks": len(chunks),
        "seconds": seconds,
        "start_steps": {
            dose: {"spdiff": entry["spdiff_start_step"], "dgdiff": list(entry["dgdiff_start_steps"].values())}
            for dose, entry in entries.items()
        },
    }


def flop_floor(
    catalog: Path,
    slices: list[int],
    chunk: int,
    paths: tuple[str, str],
    flow: dict[str, Any],
    fbp_s: float,
    sampling: SamplingProfile,
    device: str = "cpu",
) -> dict[str, Any]:
    """FLOP-based floor of the flow's work (seconds, all slice-doses) on `device` and what it is made of."""
    import torch

    from bench.common import load_dgdiff, load_spdiff
    from need_core.physics import FanBeamGeometry
    from need_core.spdiff import network_evaluations
    from tasks.chunking import grid_cells

    study = only_study(catalog)
    sp, dg = load_spdiff(paths[0], "cpu"), load_dgdiff(paths[1], "cpu")
    image = FanBeamGeometry.from_dict(study.settings["geometry"]).image_shape
    in_channels = next(m for m in dg.network.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    step = torch.ones(1, dtype=torch.long)
    flops = {
        "spdiff": forward_flops(sp.network, torch.rand(1, 3, *sp.sinogram_shape), step),
        "dgdiff": forward_flops(dg.network, torch.rand(1, in_channels, *image), step),
    }
    cells = grid_cells(slices, chunk, study.n_slices)
    sampled = sum(min(c.cell.stop + 1, study.n_slices) - max(c.cell.start - 1, 0) for c in cells)
    refined = sum(len(c.cell) for c in cells)
    evaluations = {
        dose: {
            "spdiff": network_evaluations(steps["spdiff"], sampling.at(float(dose)).spdiff_ending) * sampled,
            "dgdiff": float(np.mean(steps["dgdiff"])) * refined,
        }
        for dose, steps in flow["start_steps"].items()
    }
    total = sum(e["spdiff"] * flops["spdiff"] + e["dgdiff"] * flops["dgdiff"] for e in evaluations.values())
    rate = matmul_gflops(os.cpu_count() or 1, device=device)
    return {"seconds": total / (rate * 1e9) + fbp_s, "flops": flops, "evaluations": evaluations, "gflops": rate}


def stored_outputs(catalog: Path, dose: float, slices: list[int]) -> dict[str, np.ndarray]:
    """The stored outputs of `slices` at `dose`."""
    from tasks.reconstruct import OUTPUTS

    study = only_study(catalog)
    return {name: study.read(name, slices[0], slices[-1] + 1, dose=dose) for name in OUTPUTS}


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over every output (HU); 0.0 means bit-identical."""
    return max(float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) for name in a)


def model_load_s(paths: tuple[str, str]) -> float:
    """Seconds to load both checkpoints from disk (no cache): what every chunk would pay without the worker cache."""
    from bench.common import load_dgdiff, load_spdiff

    started = time.perf_counter()
    load_spdiff(paths[0], "cpu"), load_dgdiff(paths[1], "cpu")
    return time.perf_counter() - started

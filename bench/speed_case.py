"""One measured case of bench/speed.py: a stage (spdiff, fbp, dgdiff, need) at one size, dose and device, run in
one mode (batched, or one slice per network call), with its warm-up, network-call counts, time and peak memory.

    python bench/speed_case.py SPEC.json       # what bench/speed.py runs, one fresh process per case

writes SPEC.result.json (figures), SPEC.npy (output) and SPEC.check.npy (the warm-up's SPDiff output, if any).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from need_core.device import resolve_device
from need_core.dgdiff import refine
from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, transmission_to_line_integrals
from need_core.physics.filtered_backprojection import resolve_fbp_backend
from need_core.spdiff import SPDiffModel, denoise_volume, match_time_step, network_evaluations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import load_dgdiff, load_spdiff  # noqa: E402 (needs the repo root on sys.path, added just above)


def spdiff_on(path: str, sinogram_shape: tuple[int, int], device: str | torch.device) -> SPDiffModel:
    """An SPDiff checkpoint's model, set to sample sinograms of `sinogram_shape` (the network is fully convolutional,
    so a trained model is timed on every size)."""
    return dataclasses.replace(load_spdiff(path, device), sinogram_shape=tuple(sinogram_shape))


class CallCounter:
    """Counts a network's forward calls and the slices they carried (a forward pre-hook)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.calls = self.slices = self.max_batch = 0
        self.enabled = True
        network.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if self.enabled:
            batch = int(inputs[0].shape[0])
            self.calls += 1
            self.slices += batch
            self.max_batch = max(self.max_batch, batch)

    def reset(self) -> None:
        self.calls = self.slices = self.max_batch = 0


class Case:
    """One measured case: the stage run in one mode (batched, or one slice per call), its warm-up, its counters."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.device = resolve_device(spec["device"])
        dose, stage = spec["dose"], spec["stage"]
        geometry = FanBeamGeometry.from_dict(spec["geometry"])
        physics = PhysicsSettings()
        self.fbp_backend = resolve_fbp_backend("rebin" if self.device.type == "cpu" else "auto")
        with np.load(spec["inputs"]) as data:
            low, x_ld, x_init = data[f"ld_{dose}"], data[f"x_ld_{dose}"], data[f"x_init_{dose}"]
        self.count = physics.incident_count_at(dose)
        self.counters: dict[str, CallCounter] = {}
        self.start_steps: np.ndarray | None = None
        batch = spec["batch_size"] if spec["mode"] == "batched" else 1
        seed, slices = spec["seed"], spec["slices"]
        if stage in ("spdiff", "need"):
            self.spdiff = spdiff_on(spec["spdiff"], geometry.sinogram_shape, self.device)
            self.counters["spdiff"] = CallCounter(self.spdiff.network)
        if stage in ("dgdiff", "need"):
            self.dgdiff = load_dgdiff(spec["dgdiff"], self.device)
            self.counters["dgdiff"] = CallCounter(self.dgdiff.network)

        def run_spdiff(count: float) -> np.ndarray:
            return denoise_volume(
                self.spdiff,
                low,
                count,
                halo=(True, True),
                batch_size=batch,
                seed=seed,
                slice_ids=spec["chunk"],
                device=self.device,
            ).transmission

        def run_fbp(transmission: np.ndarray) -> np.ndarray:
            stacks = [transmission] if spec["mode"] == "batched" else [x[None] for x in transmission]
            return np.concatenate(
                [fbp_hu(transmission_to_line_integrals(x), geometry, physics, backend=self.fbp_backend) for x in stacks]
            )

        def run_dgdiff(ld: np.ndarray, init: np.ndarray) -> np.ndarray:
            result = refine(
                self.dgdiff.network,
                ld,
                init,
                self.dgdiff.schedule,
                batch_size=batch,
                seed=seed,
                slice_ids=slices,
                device=self.device,
            )
            self.start_steps = result.start_steps
            return result.images_hu

        def run_need() -> np.ndarray:
            denoised = run_spdiff(self.count)
            ld, own_init = run_fbp(low[1:-1]), run_fbp(denoised)
            return run_dgdiff(ld, own_init if spec["spdiff_trained"] else x_init)

        no_poisson = float(self.spdiff.schedule.photon_counts[1]) if stage in ("spdiff", "need") else 0.0
        self.run: Callable[[], np.ndarray] = {
            "spdiff": lambda: run_spdiff(self.count),
            "fbp": lambda: run_fbp(low[1:-1]),
            "dgdiff": lambda: run_dgdiff(x_ld, x_init),
            "need": run_need,
        }[stage]
        # warm-up with the same shapes but few steps: SPDiff from t* = 1 (its output, compared across the modes, has
        # no Poisson draw in it), DGDiff with σ̂ = 0 (k = 1); None where SPDiff is not run
        self.warm_up: Callable[[], np.ndarray | None] = {
            "spdiff": lambda: run_spdiff(no_poisson),
            "fbp": lambda: (run_fbp(low[1:-1]), None)[1],
            "dgdiff": lambda: (run_dgdiff(x_init, x_init), None)[1],
            "need": lambda: (run_fbp(low[1:-1]), run_dgdiff(x_init, x_init), run_spdiff(no_poisson))[2],
        }[stage]


def current_rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes(reset_worked: bool) -> int:
    """VmHWM after a reset, else ru_maxrss (peak since the process started)."""
    if reset_worked:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_free_heap() -> None:
    """Collect garbage and hand freed heap pages back (glibc malloc_trim), so the RSS baseline is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure_case(spec: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Measure one (device, size, stage, mode, dose) case: its figures, its output, and its warm-up's SPDiff output."""
    warnings.filterwarnings("ignore", message=".*outside the HU window.*")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    case = Case(spec)
    cuda = case.device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(case.device)) if cuda else (lambda: None)

    release_free_heap()
    rss_before = current_rss_bytes()
    reset_worked = reset_peak_rss()
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(case.device)
        cuda_before = torch.cuda.memory_allocated(case.device)
    check = case.warm_up()
    for counter in case.counters.values():
        counter.reset()
    times, output = [], None
    for repeat in range(spec["repeats"]):
        for counter in case.counters.values():
            counter.enabled = repeat == 0  # count the calls of one run
        sync()
        started = time.perf_counter()
        output = case.run()
        sync()
        times.append(time.perf_counter() - started)
    peak_rss = peak_rss_bytes(reset_worked)
    result: dict[str, Any] = {
        "seconds": min(times),
        "all_seconds": times,
        "peak_rss_growth_mb": (peak_rss - rss_before) / 2**20,
        "peak_rss_mb": peak_rss / 2**20,
        "rss_before_mb": rss_before / 2**20,
        "peak_reset": "clear_refs" if reset_worked else "ru_maxrss",
        "fbp_backend": case.fbp_backend if spec["stage"] in ("fbp", "need") else None,
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["cuda_peak_growth_mb"] = (torch.cuda.max_memory_allocated(case.device) - cuda_before) / 2**20
    n_slices = len(spec["slices"])
    for name, counter in case.counters.items():
        processed = n_slices + 2 if name == "spdiff" else n_slices  # SPDiff also samples the two halo slices
        result.update(
            {
                f"{name}_calls": counter.calls,
                f"{name}_max_batch": counter.max_batch,
                f"{name}_evals_per_slice": counter.slices / processed,
            }
        )
    if "spdiff" in case.counters:
        expected = network_evaluations(match_time_step(case.count, case.spdiff.schedule))
        if result["spdiff_evals_per_slice"] != expected:
            raise RuntimeError(
                f"SPDiff made {result['spdiff_evals_per_slice']} evaluations per slice, the schedule says {expected}"
            )
    if case.start_steps is not None:
        result["dgdiff_start_steps"] = [int(k) for k in case.start_steps]
        if result["dgdiff_evals_per_slice"] != float(np.mean(case.start_steps)):
            raise RuntimeError("DGDiff network evaluations differ from its start steps")
    return result, np.asarray(output, dtype=np.float32), None if check is None else np.asarray(check, dtype=np.float32)


def run_case_file(spec_path: Path) -> None:
    """Measure the case described in `spec_path`; write its figures and outputs next to it."""
    result, output, check = measure_case(json.loads(spec_path.read_text()))
    np.save(spec_path.with_suffix(".npy"), output)
    if check is not None:
        np.save(spec_path.with_suffix(".check.npy"), check)
    spec_path.with_suffix(".result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    run_case_file(Path(sys.argv[1]))

"""Speed of NEED per stage: seconds per slice and peak memory of SPDiff sampling, FBP, DGDiff refinement and the
whole cascade, batched (ours) side by side with a one-slice-at-a-time implementation of the same sampling (the way
the authors' code samples), at 256² and 512², on the CPU and, when present, on CUDA. Writes
bench/results/speed.json (format of /work/shared/BENCH_RESULTS.md).

    python bench/speed.py                                   # full run: 256,512 x 4 doses x cpu (+cuda)
    python bench/speed.py --sizes 256 --doses 0.25 --slices 4 --repeats 1    # a shorter run
    python bench/speed.py --quick --output /tmp/speed.json  # smoke run (tiny networks, 2 slices, 256², 1 dose)
    python bench/speed.py --spdiff-checkpoint S.pt --dgdiff-checkpoint D.pt   # time trained models

What is measured
- Data: a chunk of `--slices` contiguous slices of the bundled head CT (256², its own pixel spacing) plus one
  neighbour on each side (SPDiff's 3-slice context, as the reconstruct flow gives it). 512² = the same slices
  upsampled with scipy.ndimage.zoom (order 1, spacing halved), geometry FanBeamGeometry.for_image. Scans are
  simulated with forward_project + simulate_transmission at each dose.
- Networks: freshly initialised `--profile` networks with a fixed seed (speed does not depend on training), or
  trained ones with --spdiff-checkpoint / --dgdiff-checkpoint.
- Stages (timed per dose): spdiff = need_core.spdiff.denoise_volume on the chunk with its halo (s/slice = chunk time
  / slices returned); fbp = fbp_hu(transmission_to_line_integrals(low-dose transmission)), one FBP per slice,
  backend "rebin" on the CPU and "auto" (ASTRA CUDA) on CUDA; dgdiff = need_core.dgdiff.refine(x_LD, x_init);
  need = spdiff -> two FBPs (x_LD and x_init) -> dgdiff, as tasks/reconstruct.py runs them.
- DGDiff's cost depends on its start steps k = max(1, ⌊t_m/10⌋), matched to σ̂ = std(x_init − x_LD). For the dgdiff
  stage x_init is the FBP of a trained SPDiff's output when --spdiff-checkpoint is given, else the Hann FBP of the
  low-dose scan stands in (as bench/dgdiff.py does): realistic noise levels, so realistic k. The need stage runs
  SPDiff -> FBP -> DGDiff in full; its DGDiff gets the chain's own x_init when SPDiff is trained, else the same
  stand-in (an untrained SPDiff's output is no denoised image: its σ̂ would set unrealistically many DGDiff steps).
- One-slice-at-a-time reference: the same equations and random numbers, one slice per network call. SPDiff: the
  loop in spdiff_one_at_a_time, one 3-slice stack per call for every slice at every step (the reverse step's Poisson
  draw is made for the whole chunk at once, as in denoise_volume; it is elementwise and cheap). FBP: fbp_hu per
  slice. DGDiff: refine(batch_size=1), which calls guided_sample once per slice (each slice draws its noise from its
  own generator, so the result does not depend on batching). Network calls are counted with a forward pre-hook: the
  reference must never pass more than one slice per call, and the evaluations per slice must match the schedule.
- Agreement: max |batched − one-at-a-time| of the final outputs. FBP and DGDiff agree to rounding. SPDiff's reverse
  step draws Poisson(rate), and torch.poisson is discontinuous in the rate: a rounding-level difference of the
  network outputs (the batch size changes the convolutions' summation order) draws other counts, so SPDiff's (and
  a trained NEED's) final outputs differ by a different noise realisation. The sampling itself is compared without
  Poisson draws: both implementations sampled from t* = 1 (two network steps, x = x̂0; this is the warm-up run)
  give `max_abs_diff_without_poisson`.
- Peak memory: every (device, size, stage, mode, dose) runs in a fresh subprocess. CPU: growth of the process's
  peak RSS over its RSS just before the stage (inputs and model loaded; the peak is reset there through
  /proc/self/clear_refs when the kernel allows it, else ru_maxrss is used, which is then the peak since the process
  started). CUDA: torch.cuda.max_memory_allocated − memory_allocated before the stage (ASTRA's FBP memory is outside
  torch and not seen, so the fbp stage has no CUDA figure). With --in-process (the --quick default) the same figures
  come from one process, the peak reset before each case after freed heap is returned (malloc_trim): less exact,
  since allocator caches survive between cases.
- Timing: one untimed warm-up call with the same shapes (SPDiff from t* = 1: two steps; DGDiff with σ̂ = 0: one
  step), then the best of `--repeats` runs. Run on a quiet machine: with every core busy, torch's spinning threads
  can run 10x slower (--threads 1 is then the least disturbed choice).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, machine_info, write_result  # noqa: E402
from need_core.device import resolve_device  # noqa: E402
from need_core.physics import (  # noqa: E402
    FanBeamGeometry,
    PhysicsSettings,
    fbp_hu,
    forward_project,
    hu_to_mu,
    simulate_transmission,
    transmission_to_line_integrals,
)

STAGES = ("spdiff", "fbp", "dgdiff", "need")
MODES = ("batched", "one_at_a_time")
DOSES = (0.5, 0.25, 0.1, 0.05)
SPEC_DOSES = (0.5, 0.25, 0.1, 0.05)  # doses whose SPDiff evaluation counts are always reported (NEED_SPEC.md §2)
FIRST_SLICE = 40  # chunk start in the head CT (as bench/pipeline.py)
HEADLINE_DOSE = 0.25
DIFF_UNITS = {"spdiff": "normalised transmission", "fbp": "HU", "dgdiff": "HU", "need": "HU"}


# ---------------------------------------------------------------------------------------------------------------
# options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --quick fills in the smoke settings that were not given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help="image sizes, comma separated (default 256,512)")
    parser.add_argument("--doses", default=None, help="dose fractions, comma separated (default 0.5,0.25,0.1,0.05)")
    parser.add_argument("--slices", type=int, default=None, help="slices per chunk (default 8; +2 halo for SPDiff)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call, batched (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case after a warm-up; best is kept")
    parser.add_argument("--device", default="auto", help="auto (cpu, plus cuda when present), cpu or cuda")
    parser.add_argument("--profile", default=None, choices=("tiny", "cpu", "paper"),
                        help="network profile of the fresh networks (default cpu)")
    parser.add_argument("--spdiff-checkpoint", type=Path, default=None, help="time this trained SPDiff model")
    parser.add_argument("--dgdiff-checkpoint", type=Path, default=None, help="time this trained DGDiff model")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to time, comma separated")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default, one per core)")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                        help="measure every case in this process (faster start, less exact peak memory); "
                             "default: a fresh subprocess per case, except with --quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny profile, dose 0.25, 2 slices, 256 only, cpu, 1 thread, in-process "
                             "(explicit options win)")
    parser.add_argument("--output", type=Path, default=None,
                        help="result file (default bench/results/speed.json; with --quick a file in the temp dir)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: one measured case
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = _ints(args.sizes or ("256" if quick else "256,512"))
    args.doses = _floats(args.doses or ("0.25" if quick else ",".join(map(str, DOSES))))
    args.slices = args.slices or (2 if quick else 8)
    args.batch_size = args.batch_size or 8
    args.profile = args.profile or ("tiny" if quick else "cpu")
    if quick:
        args.device = "cpu" if args.device == "auto" else args.device
        args.threads = args.threads or 1
        args.in_process = True if args.in_process is None else args.in_process
    args.in_process = bool(args.in_process)
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {sorted(unknown)}: expected some of {STAGES}")
    if args.output is None:
        args.output = Path(tempfile.gettempdir()) / "speed_quick.json" if quick else RESULTS_DIR / "speed.json"
    if args.slices < 1 or args.repeats < 1 or args.batch_size < 1:
        parser.error("--slices, --repeats and --batch-size must be >= 1")
    return args


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def devices_for(option: str) -> list[str]:
    """`auto` measures the CPU and, when present, CUDA; otherwise the one device named."""
    if option == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [str(resolve_device(option))]


# ---------------------------------------------------------------------------------------------------------------
# data (parent process, untimed)


def prepare_size(args: argparse.Namespace, size: int, folder: Path) -> dict[str, Any]:
    """Simulate the chunk at `size`² for every dose; save the stage inputs to `folder`; return their description."""
    from storage.readers import BUNDLED_HEAD_CT, read_volume

    volume = read_volume(BUNDLED_HEAD_CT)
    first = min(FIRST_SLICE, volume.hu.shape[0] - args.slices - 2)
    if first < 0:
        raise SystemExit(f"--slices {args.slices} needs {args.slices + 2} slices; the head CT has {volume.hu.shape[0]}")
    chunk = list(range(first, first + args.slices + 2))  # one halo slice on each side
    hu = volume.hu[chunk].astype(np.float32)
    spacing = tuple(float(s) for s in volume.spacing_mm[1:])
    native = hu.shape[1]
    if size != native:
        from scipy.ndimage import zoom

        factor = size / native
        hu = zoom(hu, (1.0, factor, factor), order=1).astype(np.float32)
        spacing = (spacing[0] / factor, spacing[1] / factor)
    geometry = FanBeamGeometry.for_image(hu.shape[1:], spacing)
    physics = PhysicsSettings()
    line_integrals = forward_project(hu_to_mu(np.clip(hu, -1000.0, None)), geometry)
    spdiff = None
    if args.spdiff_checkpoint is not None:  # untimed preparation: on the fastest device present
        spdiff = load_spdiff(args.spdiff_checkpoint, args.profile, tuple(geometry.sinogram_shape),
                             devices_for(args.device)[-1], args.seed)
    inputs: dict[str, np.ndarray] = {}
    for k, dose in enumerate(args.doses):
        low = simulate_transmission(line_integrals, dose, physics, rng=args.seed + 1000 * size + k)
        inputs[f"ld_{dose}"] = low
        inputs[f"x_ld_{dose}"] = fbp_hu(transmission_to_line_integrals(low[1:-1]), geometry, physics)
        inputs[f"x_init_{dose}"] = initial_reconstruction(spdiff, low, dose, geometry, physics, args.seed)
    path = folder / f"inputs_{size}.npz"
    np.savez(path, **inputs)
    return {
        "path": str(path), "geometry": geometry.to_dict(), "slices": chunk[1:-1], "halo_slices": [chunk[0], chunk[-1]],
        "image_shape": list(hu.shape[1:]), "pixel_spacing_mm": list(spacing),
        "upsampled_from": native if size != native else None,
        "sinogram_shape": list(geometry.sinogram_shape),
    }


def initial_reconstruction(spdiff, low: np.ndarray, dose: float, geometry, physics, seed: int) -> np.ndarray:
    """x_init of the dgdiff stage: FBP of the trained SPDiff's output if there is one, else the Hann FBP stand-in."""
    if spdiff is None:
        return fbp_hu(transmission_to_line_integrals(low[1:-1]), geometry, physics, "hann")
    from need_core.spdiff import denoise_volume

    denoised = denoise_volume(spdiff, low, physics.incident_count * dose, halo=(True, True), seed=seed)
    return fbp_hu(transmission_to_line_integrals(denoised), geometry, physics)


# ---------------------------------------------------------------------------------------------------------------
# models


def load_spdiff(checkpoint: Path | None, profile: str, sinogram_shape: tuple[int, int], device: str, seed: int):
    """A trained SPDiff model, or a freshly initialised one (fixed seed) of `profile` for this sinogram shape."""
    from need_core.spdiff import (
        CHECKPOINT_KIND, SPDiffModel, SPDiffSchedule, SPDiffUNet, load_model_from_payload, network_profile,
    )

    if checkpoint is not None:
        from storage.checkpoints import load_checkpoint

        model = load_model_from_payload(load_checkpoint(checkpoint, CHECKPOINT_KIND), device=device)
        if tuple(model.sinogram_shape) != tuple(sinogram_shape):  # fully convolutional: time it on this geometry
            model = SPDiffModel(model.network, model.schedule, tuple(sinogram_shape))
        return model
    torch.manual_seed(seed)
    network = SPDiffUNet(network_profile(profile)).to(device).eval()
    return SPDiffModel(network=network, schedule=SPDiffSchedule(), sinogram_shape=tuple(sinogram_shape))


def load_dgdiff(checkpoint: Path | None, profile: str, device: str, seed: int):
    """(network, schedule): a trained DGDiff model, or a freshly initialised `profile` U-Net (fixed seed)."""
    from need_core.dgdiff import DiffusionSchedule, build_unet, model_from_checkpoint

    if checkpoint is not None:
        from storage.checkpoints import load_checkpoint

        return model_from_checkpoint(load_checkpoint(checkpoint, "dgdiff"), device=device)
    torch.manual_seed(seed)
    network = build_unet(profile).to(device).eval().requires_grad_(False)
    return network, DiffusionSchedule().to(device)


class CallCounter:
    """Counts a network's forward calls and the slices they carried (a forward pre-hook)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.calls = self.slices = self.max_batch = 0
        self.enabled = True
        network.register_forward_pre_hook(self._hook)

    def _hook(self, module, inputs) -> None:
        if self.enabled:
            batch = int(inputs[0].shape[0])
            self.calls += 1
            self.slices += batch
            self.max_batch = max(self.max_batch, batch)

    def reset(self) -> None:
        self.calls = self.slices = self.max_batch = 0


# ---------------------------------------------------------------------------------------------------------------
# the two implementations of each stage


@torch.inference_mode()
def spdiff_one_at_a_time(
    model, transmission: np.ndarray, incident_count: float, seed: int, device: torch.device
) -> np.ndarray:
    """denoise_volume's sampling (halo on both sides), one 3-slice stack per network call, every slice, every step."""
    from need_core.spdiff import match_time_step, reverse_step
    from need_core.spdiff.sampler import neighbour_indices

    schedule, network = model.schedule, model.network
    generator = torch.Generator(device=device).manual_seed(seed)
    state = torch.as_tensor(transmission).to(device=device, dtype=torch.float32)
    neighbours = neighbour_indices(state.shape[0]).to(device)
    for step in range(match_time_step(incident_count, schedule), -1, -1):
        t = torch.full((1,), step, dtype=torch.long, device=device)
        clean = torch.empty_like(state)
        for i in range(state.shape[0]):
            clean[i] = network(state[neighbours[i]][None], t)[0]
        state = reverse_step(state, clean.clamp_(0.0, 1.0), step, schedule, generator)
    return state[1:-1].cpu().numpy()


class Case:
    """One measured case in a worker: the stage's function for a mode, its warm-up, and its network counters."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from need_core.dgdiff import refine
        from need_core.spdiff import denoise_volume

        self.spec = spec
        self.device = resolve_device(spec["device"])
        dose, stage, mode = spec["dose"], spec["stage"], spec["mode"]
        self.geometry = FanBeamGeometry.from_dict(spec["geometry"])
        self.physics = PhysicsSettings()
        self.fbp_backend = "rebin" if self.device.type == "cpu" else "auto"
        with np.load(spec["inputs"]) as data:
            self.low = data[f"ld_{dose}"]
            self.x_ld = data[f"x_ld_{dose}"]
            self.x_init = data[f"x_init_{dose}"]
        self.count = self.physics.incident_count * dose
        self.trained_spdiff = spec["spdiff_checkpoint"] is not None
        self.counters: dict[str, CallCounter] = {}
        batch = spec["batch_size"] if mode == "batched" else 1
        seed, slice_ids = spec["seed"], spec["slices"]
        if stage in ("spdiff", "need"):
            self.spdiff = load_spdiff(spec["spdiff_checkpoint"], spec["profile"], tuple(self.geometry.sinogram_shape),
                                      str(self.device), seed)
            self.counters["spdiff"] = CallCounter(self.spdiff.network)
        if stage in ("dgdiff", "need"):
            self.dgdiff, self.schedule = load_dgdiff(spec["dgdiff_checkpoint"], spec["profile"], str(self.device), seed)
            self.counters["dgdiff"] = CallCounter(self.dgdiff)
        self.start_steps: np.ndarray | None = None

        def run_spdiff(count: float) -> np.ndarray:
            if mode == "batched":
                return denoise_volume(self.spdiff, self.low, count, halo=(True, True), batch_size=batch, seed=seed,
                                      device=self.device)
            return spdiff_one_at_a_time(self.spdiff, self.low, count, seed, self.device)

        def run_fbp(transmission: np.ndarray) -> np.ndarray:
            if mode == "batched":
                return self._fbp(transmission)
            return np.stack([self._fbp(sinogram) for sinogram in transmission])

        def run_dgdiff(x_ld: np.ndarray, x_init: np.ndarray) -> np.ndarray:
            result = refine(self.dgdiff, x_ld, x_init, self.schedule, batch_size=batch, seed=seed,
                            slice_ids=slice_ids, device=self.device)
            self.start_steps = result.start_steps
            return result.images_hu

        def run_need() -> np.ndarray:
            denoised = run_spdiff(self.count)
            x_ld, x_init = run_fbp(self.low[1:-1]), run_fbp(denoised)
            return run_dgdiff(x_ld, x_init if self.trained_spdiff else self.x_init)

        # t* = 1: two network steps and no Poisson draw (x = x̂0 at steps 1 and 0)
        no_poisson = float(self.spdiff.schedule.photon_counts[1]) if hasattr(self, "spdiff") else None
        self.run: Callable[[], np.ndarray] = {
            "spdiff": lambda: run_spdiff(self.count),
            "fbp": lambda: run_fbp(self.low[1:-1]),
            "dgdiff": lambda: run_dgdiff(self.x_ld, self.x_init),
            "need": run_need,
        }[stage]
        # warm-up with the same shapes but few steps: SPDiff from t* = 1, DGDiff with σ̂ = 0 (k = 1); it returns the
        # SPDiff output sampled without Poisson draws (None for fbp and dgdiff), compared across the two modes
        self.warm_up: Callable[[], np.ndarray | None] = {
            "spdiff": lambda: run_spdiff(no_poisson),
            "fbp": lambda: (run_fbp(self.low[1:-1]), None)[1],
            "dgdiff": lambda: (run_dgdiff(self.x_init, self.x_init), None)[1],
            "need": lambda: (run_fbp(self.low[1:-1]), run_dgdiff(self.x_init, self.x_init), run_spdiff(no_poisson))[2],
        }[stage]

    def _fbp(self, transmission: np.ndarray) -> np.ndarray:
        line_integrals = transmission_to_line_integrals(transmission)
        return fbp_hu(line_integrals, self.geometry, self.physics, backend=self.fbp_backend)


# ---------------------------------------------------------------------------------------------------------------
# memory


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


# ---------------------------------------------------------------------------------------------------------------
# worker: one case in a fresh process


def measure_case(spec: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Measure one (device, size, stage, mode, dose) case: its figures, its output, and its warm-up's SPDiff output."""
    warnings.filterwarnings("ignore", message=".*outside the HU window.*")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    case = Case(spec)
    cuda = case.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(case.device)

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
            counter.enabled = repeat == 0
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
        "fbp_backend": None,
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["cuda_peak_growth_mb"] = (torch.cuda.max_memory_allocated(case.device) - cuda_before) / 2**20
    if spec["stage"] in ("fbp", "need"):
        from need_core.physics.filtered_backprojection import resolve_fbp_backend

        result["fbp_backend"] = resolve_fbp_backend(case.fbp_backend)
    n_slices = len(spec["slices"])
    for name, counter in case.counters.items():
        processed = n_slices + 2 if name == "spdiff" else n_slices  # SPDiff also samples the two halo slices
        result[f"{name}_calls"] = counter.calls
        result[f"{name}_max_batch"] = counter.max_batch
        result[f"{name}_evals_per_slice"] = counter.slices / processed
    if "spdiff" in case.counters:
        from need_core.spdiff import match_time_step, network_evaluations

        expected = network_evaluations(match_time_step(case.count, case.spdiff.schedule))
        result["spdiff_expected_evals"] = expected
        if result["spdiff_evals_per_slice"] != expected:
            raise RuntimeError(f"SPDiff made {result['spdiff_evals_per_slice']} evaluations per slice, "
                               f"the schedule says {expected}")
    if case.start_steps is not None:
        result["dgdiff_start_steps"] = [int(k) for k in case.start_steps]
        if result["dgdiff_evals_per_slice"] != float(np.mean(case.start_steps)):
            raise RuntimeError("DGDiff network evaluations differ from its start steps")
    del case
    return result, np.asarray(output, dtype=np.float32), None if check is None else np.asarray(check, dtype=np.float32)


def run_worker(spec_path: Path) -> None:
    """Subprocess entry: measure the case described in `spec_path`; write figures and outputs next to it."""
    result, output, check = measure_case(json.loads(spec_path.read_text()))
    np.save(spec_path.with_suffix(".npy"), output)
    if check is not None:
        np.save(spec_path.with_suffix(".check.npy"), check)
    spec_path.with_suffix(".result.json").write_text(json.dumps(result))


def measure(
    spec: dict[str, Any], folder: Path, name: str, in_process: bool
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Run one case in a fresh Python process (or in this one); return its figures and outputs."""
    if in_process:
        return measure_case(spec)
    spec_path = folder / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{completed.stdout}\n{completed.stderr}")
    result = json.loads(spec_path.with_suffix(".result.json").read_text())
    output = np.load(spec_path.with_suffix(".npy"))
    spec_path.with_suffix(".npy").unlink()
    check_path = spec_path.with_suffix(".check.npy")
    check = np.load(check_path) if check_path.is_file() else None
    return result, output, check


# ---------------------------------------------------------------------------------------------------------------
# parent: all cases, the table and the JSON


def peak_mb(result: dict[str, Any], device: str, stage: str) -> float | None:
    """Peak-memory figure of a case: CUDA allocator growth on CUDA (None for ASTRA's FBP, which torch cannot see),
    else the growth of the peak RSS."""
    if device == "cuda":
        return None if stage == "fbp" else round(result["cuda_peak_growth_mb"], 1)
    return round(result["peak_rss_growth_mb"], 1)


def build_row(stage: str, size: int, device: str, dose: float, ours: dict, ref: dict, diff: float,
              diff_without_poisson: float | None) -> dict[str, Any]:
    """One row of speed.json (keys of BENCH_RESULTS.md first, then the reference's figures and the agreement)."""
    n = ours["n_slices"]
    evals = {"spdiff": ours.get("spdiff_evals_per_slice"), "dgdiff": ours.get("dgdiff_evals_per_slice")}
    network_evals = evals["spdiff"] if stage == "spdiff" else evals["dgdiff"] if stage == "dgdiff" else (
        None if stage == "fbp" else evals["spdiff"] + evals["dgdiff"])
    row = {
        "stage": stage, "size": size, "device": device, "dose": dose,
        "s_per_slice": round(ours["seconds"] / n, 5),
        "peak_mem_mb": peak_mb(ours, device, stage),
        "network_evals": network_evals,
        "s_per_slice_one_at_a_time": round(ref["seconds"] / n, 5),
        "peak_mem_mb_one_at_a_time": peak_mb(ref, device, stage),
        "speedup": round(ref["seconds"] / ours["seconds"], 3),
        "max_abs_diff": float(f"{diff:.4g}"),
        "max_abs_diff_without_poisson": None if diff_without_poisson is None else float(f"{diff_without_poisson:.4g}"),
        "torch_threads": ours["torch_threads"],
        "network_calls_per_slice": calls_per_slice(ours, n),
        "network_calls_per_slice_one_at_a_time": calls_per_slice(ref, n),
    }
    if stage == "need":
        row["network_evals_by_model"] = evals
    if "dgdiff_start_steps" in ours:
        row["dgdiff_start_steps"] = ours["dgdiff_start_steps"]
    if ours.get("fbp_backend"):
        row["fbp_backend"] = ours["fbp_backend"]
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Stage × size (× device, dose) table: s/slice batched and one-at-a-time, speed-up, peak MB, evaluations."""
    lines = ["| device | size | dose | stage | s/slice batched | s/slice one-at-a-time | speed-up | peak MB batched "
             "| peak MB one-at-a-time | net evals/slice | max abs diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["device"], r["size"], -r["dose"], STAGES.index(r["stage"]))):
        mem = lambda v: "–" if v is None else f"{v:.0f}"  # noqa: E731
        evals = "–" if r["network_evals"] is None else f"{r['network_evals']:g}"
        lines.append(f"| {r['device']} | {r['size']}² | {r['dose']:g} | {r['stage']} | {r['s_per_slice']:.4g} | "
                     f"{r['s_per_slice_one_at_a_time']:.4g} | {r['speedup']:.2f}× | {mem(r['peak_mem_mb'])} | "
                     f"{mem(r['peak_mem_mb_one_at_a_time'])} | {evals} | {r['max_abs_diff']:.3g} |")
    return "\n".join(lines)


def calls_per_slice(result: dict[str, Any], n: int) -> dict[str, float]:
    """Network calls per returned slice, per model the case ran."""
    return {k: round(result[f"{k}_calls"] / n, 3) for k in ("spdiff", "dgdiff") if f"{k}_calls" in result}


def headline_ratio(
    rows: list[dict[str, Any]], devices: list[str], sizes: list[int], doses: list[float]
) -> tuple[float | None, dict[str, Any]]:
    """The scalar batched_vs_reference_ratio: whole NEED on CUDA when measured (else the CPU), first size, dose 0.25
    (else the first dose)."""
    dose = HEADLINE_DOSE if HEADLINE_DOSE in doses else doses[0]
    stage = "need" if any(r["stage"] == "need" for r in rows) else rows[0]["stage"]
    case = {"stage": stage, "device": devices[-1], "size": sizes[0], "dose": dose}
    for r in rows:
        if all(r[key] == value for key, value in case.items()):
            return r["speedup"], case
    return None, {}


def ratios_by_case(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Speed-ups as {device: {size: {stage: {dose: ratio}}}}."""
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for r in rows:
        table.setdefault(r["device"], {}).setdefault(str(r["size"]), {}).setdefault(r["stage"], {})[str(r["dose"])] = (
            r["speedup"])
    return table


def main(argv: list[str] | None = None) -> Path | None:
    args = parse_args(argv)
    if args.worker is not None:
        run_worker(args.worker)
        return None
    warnings.filterwarnings("ignore", message=".*outside the HU window.*")
    devices = devices_for(args.device)
    started = time.perf_counter()
    cases = [(d, s, st, dose) for d in devices for s in args.sizes for dose in args.doses for st in args.stages]
    print(f"speed: {len(cases)} cases x {len(MODES)} modes, devices {devices}, sizes {args.sizes}, doses {args.doses}, "
          f"{args.slices} slices, profile {args.profile}", flush=True)
    rows: list[dict[str, Any]] = []
    data: dict[int, dict[str, Any]] = {}
    peak_resets: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="need_speed_") as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            clock = time.perf_counter()
            data[size] = prepare_size(args, size, folder)
            print(f"  simulated {args.slices}+2 slices at {size}² (sinograms {data[size]['sinogram_shape']}) "
                  f"in {time.perf_counter() - clock:.1f} s", flush=True)
        for index, (device, size, stage, dose) in enumerate(cases, 1):
            results, outputs, checks = {}, {}, {}
            for mode in MODES:
                spec = {
                    "device": device, "size": size, "stage": stage, "mode": mode, "dose": dose,
                    "inputs": data[size]["path"], "geometry": data[size]["geometry"], "slices": data[size]["slices"],
                    "batch_size": args.batch_size, "repeats": args.repeats, "seed": args.seed, "profile": args.profile,
                    "threads": args.threads,
                    "spdiff_checkpoint": str(args.spdiff_checkpoint) if args.spdiff_checkpoint else None,
                    "dgdiff_checkpoint": str(args.dgdiff_checkpoint) if args.dgdiff_checkpoint else None,
                }
                results[mode], outputs[mode], checks[mode] = measure(
                    spec, folder, f"{device}_{size}_{stage}_{mode}_{dose}", args.in_process)
                results[mode]["n_slices"] = args.slices
            ref = results["one_at_a_time"]
            peak_resets.update(result["peak_reset"] for result in results.values())
            for model in ("spdiff", "dgdiff"):
                if ref.get(f"{model}_max_batch", 1) > 1:
                    raise RuntimeError(f"the one-at-a-time {stage} reference passed {ref[f'{model}_max_batch']} slices "
                                       f"to the {model} network in one call")
            diff = float(np.abs(outputs["batched"] - outputs["one_at_a_time"]).max())
            check_diff = None
            if checks["batched"] is not None:
                check_diff = float(np.abs(checks["batched"] - checks["one_at_a_time"]).max())
            row = build_row(stage, size, device, dose, results["batched"], ref, diff, check_diff)
            rows.append(row)
            print(f"  [{index}/{len(cases)}] {device} {size}² dose {dose:g} {stage:6s}: "
                  f"{row['s_per_slice']:.4g} s/slice batched, {row['s_per_slice_one_at_a_time']:.4g} one-at-a-time "
                  f"({row['speedup']:.2f}x), peak {row['peak_mem_mb']} / {row['peak_mem_mb_one_at_a_time']} MB, "
                  f"evals {row['network_evals']}, max |diff| {diff:.3g}"
                  + ("" if check_diff is None else f" ({check_diff:.3g} without Poisson draws)") + " "
                  f"({time.perf_counter() - started:.0f} s elapsed)", flush=True)

    from need_core.spdiff import SPDiffSchedule, incident_count_for_dose, match_time_step, network_evaluations

    schedule = SPDiffSchedule()
    if args.spdiff_checkpoint is not None:
        schedule = load_spdiff(args.spdiff_checkpoint, args.profile, (1, 1), "cpu", args.seed).schedule
    normal_count = PhysicsSettings().incident_count
    spdiff_evals = {str(d): network_evaluations(match_time_step(incident_count_for_dose(d, normal_count), schedule))
                    for d in sorted(set(SPEC_DOSES) | set(args.doses), reverse=True)}
    dgdiff_rows = [r for r in rows if r["stage"] == "dgdiff"]
    ratio, ratio_case = headline_ratio(rows, devices, args.sizes, args.doses)
    scalars = {
        "batched_vs_reference_ratio": ratio,
        "batched_vs_reference_ratio_case": ratio_case,
        "batched_vs_reference_ratio_by_case": ratios_by_case(rows),
        "network_evaluations": {
            "spdiff": spdiff_evals,
            "dgdiff": {f"{r['device']}_{r['size']}": {} for r in dgdiff_rows},
        },
        "dgdiff_start_steps": {f"{r['device']}_{r['size']}": {} for r in dgdiff_rows},
        "max_abs_diff_by_stage": {stage: max(r["max_abs_diff"] for r in rows if r["stage"] == stage)
                                  for stage in args.stages},
        "max_abs_diff_units": {stage: DIFF_UNITS[stage] for stage in args.stages},
        "max_abs_diff_without_poisson": max((r["max_abs_diff_without_poisson"] for r in rows
                                             if r["max_abs_diff_without_poisson"] is not None), default=None),
        "settings": {
            "sizes": args.sizes, "doses": args.doses, "slices_per_chunk": args.slices, "halo_slices": 2,
            "batch_size": args.batch_size, "repeats": args.repeats, "devices": devices, "profile": args.profile,
            "spdiff_checkpoint": str(args.spdiff_checkpoint) if args.spdiff_checkpoint else None,
            "dgdiff_checkpoint": str(args.dgdiff_checkpoint) if args.dgdiff_checkpoint else None,
            "networks": "trained" if args.spdiff_checkpoint and args.dgdiff_checkpoint else
                        "freshly initialised (fixed seed) where no checkpoint is given",
            "dgdiff_x_init": ("FBP of the trained SPDiff output" if args.spdiff_checkpoint
                              else "Hann FBP of the low-dose scan (stand-in)"),
            "seed": args.seed, "quick": args.quick, "torch_threads": rows[0]["torch_threads"] if rows else None,
            "memory_isolation": "one process for all cases" if args.in_process else "fresh subprocess per case",
            "memory_peak_reset": sorted(peak_resets),
        },
        "data": {str(size): {k: v for k, v in info.items() if k not in ("path", "geometry")}
                 for size, info in data.items()},
        "notes": [
            "Bundled head CT (storage.readers.BUNDLED_HEAD_CT, 256²); 512² is the same slices upsampled with "
            "scipy.ndimage.zoom (order 1, pixel spacing halved), not native 512² data.",
            "s_per_slice = chunk time / slices returned; SPDiff also samples the 2 halo slices of the chunk (context), "
            "as the reconstruct flow does. The need stage includes two FBPs (x_LD and x_init).",
            "speedup = one-slice-at-a-time time / batched time, same inputs, steps and random numbers, same run.",
            "max_abs_diff compares final outputs; SPDiff's Poisson draws are discontinuous in their rate, so "
            "rounding-level differences of the network outputs give another noise realisation in spdiff (and in need "
            "with a trained SPDiff); "
            "max_abs_diff_without_poisson compares SPDiff sampled from t*=1 (no Poisson draws) in both modes.",
            "Without --spdiff-checkpoint the need stage feeds DGDiff the stand-in x_init (Hann FBP), not its untrained "
            "SPDiff's output; SPDiff and both FBPs are still run and timed.",
            "peak_mem_mb: CPU = growth of the process's peak RSS while the stage runs (warm-up included; "
            + ("all cases in one process, peak reset before each: less exact" if args.in_process
               else "a fresh process per case")
            + ", inputs and model already loaded); CUDA = torch.cuda.max_memory_allocated growth (ASTRA FBP not seen: "
            "null). In a fresh process the CPU FBP's figure includes the rebin backend's cached per-geometry tables, "
            "built by its first call and kept for the process's life.",
            "network_evals = network evaluations per slice (SPDiff: t*+1; DGDiff: mean start step k; need: both), "
            "counted with a forward hook.",
            "Timings are best of `repeats` after a warm-up; the machine may have had other load.",
        ],
        "total_s": round(time.perf_counter() - started, 1),
    }
    for r in dgdiff_rows:
        key = f"{r['device']}_{r['size']}"
        scalars["network_evaluations"]["dgdiff"][key][str(r["dose"])] = r["network_evals"]
        scalars["dgdiff_start_steps"][key][str(r["dose"])] = r["dgdiff_start_steps"]
    print()
    print(markdown_table(rows))
    print()
    device_label = "+".join(devices)
    return write_result("speed", rows, machine=machine_info(device_label), path=args.output, table=False, **scalars)


if __name__ == "__main__":
    main()

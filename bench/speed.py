"""Speed of NEED per stage: seconds per slice and peak memory of SPDiff sampling, FBP, DGDiff refinement and the
whole cascade, batched (ours) side by side with one slice per network call (the way the authors' code samples), at
256² and 512², on the CPU and, when present, on CUDA. Writes bench/results/speed.json (format of
/work/shared/BENCH_RESULTS.md).

    python bench/speed.py                                   # full run: 256,512 x 4 doses x cpu (+cuda)
    python bench/speed.py --sizes 256 --doses 0.25 --slices 4 --repeats 1    # a shorter run
    python bench/speed.py --quick --output /tmp/speed.json  # smoke run (tiny networks, 2 slices, 256², 1 dose)
    python bench/speed.py --spdiff-checkpoint S.pt --dgdiff-checkpoint D.pt   # time trained models

What is measured
- Data: `--slices` contiguous slices of the bundled head CT plus one neighbour on each side (SPDiff's context, as
  the reconstruct flow gives it), simulated by need_core.physics.simulate_scan with the archive's noise: at 256² the
  data `need ingest` writes. 512² = the same slices upsampled with scipy.ndimage.zoom (order 1, spacing halved).
- Networks: checkpoints of freshly initialised `--profile` networks (tasks.quick_models, fixed seeds: speed does
  not depend on training), or trained ones (--spdiff-checkpoint / --dgdiff-checkpoint), loaded as the flows load
  them. A trained SPDiff is fully convolutional and is timed on each size's sinograms.
- Stages, the package's own functions: spdiff = need_core.spdiff.denoise_volume on the chunk with its halo
  (s/slice = chunk time / slices returned); fbp = FBP of the low-dose scan, backend "rebin" on the CPU and "auto"
  (ASTRA CUDA) on CUDA; dgdiff = need_core.dgdiff.refine(x_LD, x_init); need = spdiff -> two FBPs -> dgdiff, as
  tasks/reconstruct.py runs them. One-slice-at-a-time reference: the same calls with batch_size=1 (one 3-slice stack
  per SPDiff call, one image per DGDiff call) and one FBP per slice; a forward pre-hook counts network calls, and the
  reference must never pass more than one slice per call.
- DGDiff's start step k = max(1, ⌊t_m/10⌋) is matched to σ̂ = std(x_init − x_LD). x_init: the FBP of a trained
  SPDiff's output when --spdiff-checkpoint is given, else the Hann FBP of the low-dose scan stands in (an untrained
  SPDiff's output would set unrealistically many steps); the need stage feeds DGDiff its own chain's x_init only
  when SPDiff is trained.
- Agreement: max |batched − one-at-a-time| of the outputs. SPDiff's reverse step draws Poisson(rate), discontinuous
  in the rate: the batch size changes the convolutions' rounding and can flip a draw, so the sampling itself is also
  compared from t* = 1 (x = x̂0 at steps 1 and 0, no Poisson draw; the warm-up): `max_abs_diff_without_poisson`.
- Peak memory: each (device, size, stage, mode, dose) runs in a fresh subprocess. CPU: growth of the peak RSS over
  the RSS just before the stage (reset through /proc/self/clear_refs where allowed, else ru_maxrss). CUDA:
  torch.cuda.max_memory_allocated growth (ASTRA's FBP is invisible to torch: no figure). --in-process (the --quick
  default) measures all cases in one process, resetting the peak before each: less exact.
- Timing: one untimed warm-up with the same shapes (SPDiff from t* = 1; DGDiff with σ̂ = 0), then the best of
  `--repeats`. Run on a quiet machine: with every core busy torch's threads can run 10x slower.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from need_core.device import resolve_device
from need_core.physics import FanBeamGeometry, PhysicsSettings, SimulatedScan, simulate_scan
from need_core.spdiff import SPDiffSchedule, match_time_step, network_evaluations
from tasks.quick_models import write_quick_models

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import (  # noqa: E402 (needs the repo root on sys.path, added just above)
    DOSES,
    RESULTS_DIR,
    TIMING_FIRST_SLICE,
    head_ct,
    head_ct_scan,
    load_spdiff,
    machine_info,
    spdiff_denoise,
    write_result,
)
from bench.speed_case import measure_case, spdiff_on  # noqa: E402 (as above)

STAGES = ("spdiff", "fbp", "dgdiff", "need")
MODES = ("batched", "one_at_a_time")
HEADLINE_DOSE = 0.25
DIFF_UNITS = {"spdiff": "normalised transmission", "fbp": "HU", "dgdiff": "HU", "need": "HU"}
PRIVATE_DATA_KEYS = ("path", "geometry", "spdiff", "dgdiff", "chunk")  # what the cases read, not reported


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --quick fills in the smoke settings that were not given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help="image sizes, comma separated (default 256,512)")
    parser.add_argument("--doses", default=None, help="dose fractions, comma separated (default 0.5,0.25,0.1,0.05)")
    parser.add_argument("--slices", type=int, default=None, help="slices per chunk (default 8; +2 halo for SPDiff)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call, batched (default 8)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case after a warm-up; best is kept")
    parser.add_argument("--device", default="auto", help="auto (cpu, plus cuda when present), cpu or cuda")
    parser.add_argument(
        "--profile",
        default=None,
        choices=("tiny", "cpu", "paper"),
        help="network profile of the fresh networks (default cpu)",
    )
    parser.add_argument("--spdiff-checkpoint", type=Path, default=None, help="time this trained SPDiff model")
    parser.add_argument("--dgdiff-checkpoint", type=Path, default=None, help="time this trained DGDiff model")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to time, comma separated")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's default, one per core)"
    )
    parser.add_argument(
        "--in-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure every case in this process (faster start, less exact peak memory); "
        "default: a fresh subprocess per case, except with --quick",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny profile, dose 0.25, 2 slices, 256 only, cpu, 1 thread, in-process (explicit options win)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="result file (default bench/results/speed.json; with --quick a file in the temp dir)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = [int(v) for v in (args.sizes or ("256" if quick else "256,512")).split(",") if v]
    args.doses = [float(v) for v in (args.doses or ("0.25" if quick else ",".join(map(str, DOSES)))).split(",") if v]
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


def devices_for(option: str) -> list[str]:
    """`auto` measures the CPU and, when present, CUDA; otherwise the one device named."""
    if option == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [str(resolve_device(option))]


# ---------------------------------------------------------------------------------------------------------------
# data and models (parent process, untimed)


def simulate_size(args: argparse.Namespace, size: int) -> tuple[SimulatedScan, int]:
    """The chunk (with one halo slice on each side) simulated at `size`², and the head CT's native size."""
    volume = head_ct()
    first = min(TIMING_FIRST_SLICE, volume.hu.shape[0] - args.slices - 2)
    if first < 0:
        raise SystemExit(f"--slices {args.slices} needs {args.slices + 2} slices; the head CT has {volume.hu.shape[0]}")
    chunk, native = list(range(first, first + args.slices + 2)), volume.hu.shape[1]
    if size == native:
        return head_ct_scan(chunk, args.doses, args.seed), native
    from scipy.ndimage import zoom

    factor = size / native
    hu = zoom(volume.hu[chunk], (1.0, factor, factor), order=1).astype(np.float32)
    geometry = FanBeamGeometry.for_image(hu.shape[1:], tuple(float(s) / factor for s in volume.spacing_mm[1:]))
    return simulate_scan(hu, geometry, PhysicsSettings(), args.doses, seed=args.seed, slice_indices=chunk), native


def prepare_size(args: argparse.Namespace, size: int, folder: Path) -> dict[str, Any]:
    """Simulate the chunk at `size`², write the checkpoints (fresh ones unless trained ones are given) and the stage
    inputs per dose (low-dose scan, x_LD, x_init) to `folder`; return their description."""
    scan, native = simulate_size(args, size)
    inner = scan.select(scan.slice_indices[1:-1])
    models = folder / str(size)
    models.mkdir()
    fresh: tuple[str | None, str | None] = (None, None)
    if args.spdiff_checkpoint is None or args.dgdiff_checkpoint is None:
        fresh = write_quick_models(scan.proj_nd, inner.fbp_nd, models, profile=args.profile, train_steps=0)
    spdiff_path, dgdiff_path = str(args.spdiff_checkpoint or fresh[0]), str(args.dgdiff_checkpoint or fresh[1])
    inputs: dict[str, np.ndarray] = {}
    for dose in args.doses:
        inputs[f"ld_{dose}"] = scan.proj_ld[dose]
        inputs[f"x_ld_{dose}"] = inner.fbp(dose)
        inputs[f"x_init_{dose}"] = inner.fbp(dose, "hann")
    if args.spdiff_checkpoint is not None:  # x_init from the trained SPDiff, untimed, on the fastest device present
        model = spdiff_on(spdiff_path, scan.geometry.sinogram_shape, devices_for(args.device)[-1])
        for dose in args.doses:
            inputs[f"x_init_{dose}"] = inner.reconstruct(spdiff_denoise(model, scan, dose, args.seed))
    path = folder / f"inputs_{size}.npz"
    np.savez(path, **inputs)
    return {
        "path": str(path),
        "geometry": scan.geometry.to_dict(),
        "spdiff": spdiff_path,
        "dgdiff": dgdiff_path,
        "slices": list(inner.slice_indices),
        "chunk": list(scan.slice_indices),
        "halo_slices": [scan.slice_indices[0], scan.slice_indices[-1]],
        "image_shape": list(scan.geometry.image_shape),
        "pixel_spacing_mm": list(scan.geometry.pixel_spacing_mm),
        "upsampled_from": native if size != native else None,
        "sinogram_shape": list(scan.geometry.sinogram_shape),
    }


def measure(
    spec: dict[str, Any], folder: Path, name: str, in_process: bool
) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Run one case in a fresh Python process (bench/speed_case.py) or in this one; return its figures and outputs."""
    if in_process:
        return measure_case(spec)
    spec_path = folder / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().with_name("speed_case.py")), str(spec_path)],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"case {name} failed:\n{completed.stdout}\n{completed.stderr}")
    result = json.loads(spec_path.with_suffix(".result.json").read_text())
    check_path = spec_path.with_suffix(".check.npy")
    return result, np.load(spec_path.with_suffix(".npy")), np.load(check_path) if check_path.is_file() else None


# ---------------------------------------------------------------------------------------------------------------
# parent: all cases, the table and the JSON


def peak_mb(result: dict[str, Any], device: str, stage: str) -> float | None:
    """CUDA allocator growth on CUDA (None for ASTRA's FBP, which torch cannot see), else the peak-RSS growth."""
    if device == "cuda":
        return None if stage == "fbp" else round(result["cuda_peak_growth_mb"], 1)
    return round(result["peak_rss_growth_mb"], 1)


def build_row(
    stage: str,
    size: int,
    device: str,
    dose: float,
    ours: dict,
    ref: dict,
    diff: float,
    diff_without_poisson: float | None,
) -> dict[str, Any]:
    """One row of speed.json (keys of BENCH_RESULTS.md first, then the reference's figures and the agreement)."""
    n = ours["n_slices"]
    evals = {model: ours.get(f"{model}_evals_per_slice") for model in ("spdiff", "dgdiff")}
    network_evals = None if stage == "fbp" else evals[stage] if stage in evals else evals["spdiff"] + evals["dgdiff"]
    row = {
        "stage": stage,
        "size": size,
        "device": device,
        "dose": dose,
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
    if ours["fbp_backend"]:
        row["fbp_backend"] = ours["fbp_backend"]
    return row


def calls_per_slice(result: dict[str, Any], n: int) -> dict[str, float]:
    """Network calls per returned slice, per model the case ran."""
    return {k: round(result[f"{k}_calls"] / n, 3) for k in ("spdiff", "dgdiff") if f"{k}_calls" in result}


def megabytes(value: float | None) -> str:
    """A peak-memory table cell: whole MB, or a dash where there is no figure."""
    return "–" if value is None else f"{value:.0f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Stage × size (× device, dose) table: s/slice batched and one-at-a-time, speed-up, peak MB, evaluations."""
    lines = [
        "| device | size | dose | stage | s/slice batched | s/slice one-at-a-time | speed-up | peak MB batched "
        "| peak MB one-at-a-time | net evals/slice | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["device"], r["size"], -r["dose"], STAGES.index(r["stage"]))):
        evals = "–" if r["network_evals"] is None else f"{r['network_evals']:g}"
        lines.append(
            f"| {r['device']} | {r['size']}² | {r['dose']:g} | {r['stage']} | {r['s_per_slice']:.4g} | "
            f"{r['s_per_slice_one_at_a_time']:.4g} | {r['speedup']:.2f}× | {megabytes(r['peak_mem_mb'])} | "
            f"{megabytes(r['peak_mem_mb_one_at_a_time'])} | {evals} | {r['max_abs_diff']:.3g} |"
        )
    return "\n".join(lines)


def headline_ratio(
    rows: list[dict[str, Any]], devices: list[str], sizes: list[int], doses: list[float]
) -> tuple[float | None, dict[str, Any]]:
    """batched_vs_reference_ratio: whole NEED on CUDA when measured (else the CPU), first size, dose 0.25 (else the
    first dose)."""
    stage = "need" if any(r["stage"] == "need" for r in rows) else rows[0]["stage"]
    case = {
        "stage": stage,
        "device": devices[-1],
        "size": sizes[0],
        "dose": HEADLINE_DOSE if HEADLINE_DOSE in doses else doses[0],
    }
    match = next((r for r in rows if all(r[key] == value for key, value in case.items())), None)
    return (match["speedup"], case) if match else (None, {})


def scalars_of(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    devices: list[str],
    data: dict[int, dict[str, Any]],
    peak_resets: set[str],
) -> dict[str, Any]:
    """The result file's scalar figures, settings and notes."""
    trained = args.spdiff_checkpoint is not None
    schedule = load_spdiff(args.spdiff_checkpoint, "cpu").schedule if trained else SPDiffSchedule()
    physics = PhysicsSettings()
    ratio, ratio_case = headline_ratio(rows, devices, args.sizes, args.doses)
    by_case: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    evals_by_case: dict[str, dict[str, float]] = {}
    steps_by_case: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        per_stage = by_case.setdefault(r["device"], {}).setdefault(str(r["size"]), {})
        per_stage.setdefault(r["stage"], {})[str(r["dose"])] = r["speedup"]
        if r["stage"] == "dgdiff":
            evals_by_case.setdefault(f"{r['device']}_{r['size']}", {})[str(r["dose"])] = r["network_evals"]
            steps_by_case.setdefault(f"{r['device']}_{r['size']}", {})[str(r["dose"])] = r["dgdiff_start_steps"]
    return {
        "batched_vs_reference_ratio": ratio,
        "batched_vs_reference_ratio_case": ratio_case,
        "batched_vs_reference_ratio_by_case": by_case,
        "network_evaluations": {
            "spdiff": {
                str(d): network_evaluations(match_time_step(physics.incident_count_at(d), schedule))
                for d in sorted(set(DOSES) | set(args.doses), reverse=True)
            },
            "dgdiff": evals_by_case,
        },
        "dgdiff_start_steps": steps_by_case,
        "max_abs_diff_by_stage": {s: max(r["max_abs_diff"] for r in rows if r["stage"] == s) for s in args.stages},
        "max_abs_diff_units": {stage: DIFF_UNITS[stage] for stage in args.stages},
        "max_abs_diff_without_poisson": max(
            (r["max_abs_diff_without_poisson"] for r in rows if r["max_abs_diff_without_poisson"] is not None),
            default=None,
        ),
        "settings": {
            "sizes": args.sizes,
            "doses": args.doses,
            "slices_per_chunk": args.slices,
            "halo_slices": 2,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "devices": devices,
            "profile": args.profile,
            "spdiff_checkpoint": str(args.spdiff_checkpoint) if args.spdiff_checkpoint else None,
            "dgdiff_checkpoint": str(args.dgdiff_checkpoint) if args.dgdiff_checkpoint else None,
            "dgdiff_x_init": "FBP of the trained SPDiff output"
            if trained
            else "Hann FBP of the low-dose scan (stand-in)",
            "seed": args.seed,
            "quick": args.quick,
            "torch_threads": rows[0]["torch_threads"] if rows else None,
            "memory_isolation": "one process for all cases" if args.in_process else "fresh subprocess per case",
            "memory_peak_reset": sorted(peak_resets),
        },
        "data": {
            str(size): {k: v for k, v in info.items() if k not in PRIVATE_DATA_KEYS} for size, info in data.items()
        },
        "notes": [
            "Scans: need_core.physics.simulate_scan with the archive's noise (at 256² the data `need ingest` writes); "
            "512² = the same slices upsampled (scipy.ndimage.zoom, order 1, pixel spacing halved).",
            "s_per_slice = chunk time / slices returned; SPDiff also samples the 2 halo slices (context), as the "
            "reconstruct flow does. The need stage includes two FBPs (x_LD and x_init).",
            "speedup = one-slice-at-a-time time (the same package calls with batch_size=1, one FBP per slice) / "
            "batched time, same inputs, steps and random streams, same run.",
            "max_abs_diff compares final outputs (a rounding-level network difference can flip a Poisson draw); "
            "max_abs_diff_without_poisson compares SPDiff sampled from t*=1 (no Poisson draws) in both modes.",
            "peak_mem_mb: CPU = growth of the peak RSS while the stage runs (warm-up included, inputs and model "
            "loaded; " + ("one process for all cases" if args.in_process else "a fresh process per case") + "); "
            "CUDA = torch.cuda.max_memory_allocated growth (ASTRA FBP not seen: null).",
            "network_evals = network evaluations per slice (SPDiff: t*+1; DGDiff: mean start step k; need: both).",
        ],
    }


def main(argv: list[str] | None = None) -> Path:
    """Prepare the data once per size, measure every case in both modes, write the result file and print the table."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*outside the HU window.*")
    devices = devices_for(args.device)
    started = time.perf_counter()
    cases = [(d, s, st, dose) for d in devices for s in args.sizes for dose in args.doses for st in args.stages]
    print(
        f"speed: {len(cases)} cases x {len(MODES)} modes, devices {devices}, sizes {args.sizes}, doses {args.doses}, "
        f"{args.slices} slices, profile {args.profile}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    data: dict[int, dict[str, Any]] = {}
    peak_resets: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="need_speed_") as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            data[size] = prepare_size(args, size, folder)
            print(f"  prepared {args.slices}+2 slices at {size}², sinograms {data[size]['sinogram_shape']}", flush=True)
        for index, (device, size, stage, dose) in enumerate(cases, 1):
            results, outputs, checks = {}, {}, {}
            for mode in MODES:
                spec = {
                    "device": device,
                    "stage": stage,
                    "mode": mode,
                    "dose": dose,
                    "inputs": data[size]["path"],
                    **{key: data[size][key] for key in ("geometry", "slices", "chunk", "spdiff", "dgdiff")},
                    "spdiff_trained": args.spdiff_checkpoint is not None,
                    "batch_size": args.batch_size,
                    "repeats": args.repeats,
                    "seed": args.seed,
                    "threads": args.threads,
                }
                results[mode], outputs[mode], checks[mode] = measure(
                    spec, folder, f"{device}_{size}_{stage}_{mode}_{dose}", args.in_process
                )
                results[mode]["n_slices"] = args.slices
            ours, ref = results["batched"], results["one_at_a_time"]
            peak_resets.update(result["peak_reset"] for result in results.values())
            for model in ("spdiff", "dgdiff"):
                if ref.get(f"{model}_max_batch", 1) > 1:
                    raise RuntimeError(
                        f"the one-at-a-time {stage} reference passed {ref[f'{model}_max_batch']} slices "
                        f"to the {model} network in one call"
                    )
            diff = float(np.abs(outputs["batched"] - outputs["one_at_a_time"]).max())
            check_diff = (
                None if checks["batched"] is None else float(np.abs(checks["batched"] - checks["one_at_a_time"]).max())
            )
            row = build_row(stage, size, device, dose, ours, ref, diff, check_diff)
            rows.append(row)
            print(
                f"  [{index}/{len(cases)}] {device} {size}² dose {dose:g} {stage:6s}: {row['s_per_slice']:.4g} "
                f"s/slice batched, {row['s_per_slice_one_at_a_time']:.4g} one-at-a-time ({row['speedup']:.2f}x), peak "
                f"{row['peak_mem_mb']} / {row['peak_mem_mb_one_at_a_time']} MB, evals {row['network_evals']}, "
                f"max |diff| {diff:.3g} ({time.perf_counter() - started:.0f} s elapsed)",
                flush=True,
            )
    scalars = {**scalars_of(args, rows, devices, data, peak_resets), "total_s": round(time.perf_counter() - started, 1)}
    print()
    print(markdown_table(rows))
    print()
    return write_result(
        "speed", rows, machine=machine_info("+".join(devices)), path=args.output, table=False, **scalars
    )


if __name__ == "__main__":
    main()

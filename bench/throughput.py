"""Throughput where users see it: the reconstruct flow's wall time per slice-dose beside an in-process run of the
same stages on the same slices and a FLOP-based floor, all in one run. Writes bench/results/throughput.json (format
of /work/shared/BENCH_RESULTS.md).

    python bench/throughput.py                                   # head-CT slices 40-79 x doses 0.5,0.25, cpu weights
    python bench/throughput.py --catalog outputs/demo/head_ct.zarr   # a copy of this catalog instead of `need ingest`
    python bench/throughput.py --quick --output /tmp/throughput.json # smoke: tiny models, 2 small slices, 1 dose
    python bench/throughput.py --device cuda      # on a GPU (one worker per GPU): bench/results/throughput_cuda.json

What is measured
- Data: the bundled head CT ingested by `need ingest` at `--doses` (or a copy of `--catalog`); models: the shipped
  `cpu` weights (--quick: tiny ones, tasks.quick_models, on a 64² six-slice volume).
- flow: flows.reconstruct.run_reconstruct as `need reconstruct` calls it (default local cluster: tasks.runner), no
  tracking, after a temporary Prefect server started here as the CLI starts one. startup_s = server start + flow call
  -> first chunk task running (task-run start times from the Prefect API); flow_s_per_slice_dose = the rest of the
  flow call (compute, collection, cluster shutdown; shutdown_s = last chunk end -> flow returned) / slice-doses.
- in-process reference: the chunk function itself (tasks.reconstruct.reconstruct_chunk.fn: the same grid cells,
  halos, stages and writes) in this process with torch threads = cores, models loaded beforehand.
- FLOP floor: FLOPs of one SPDiff and one DGDiff evaluation (torch FlopCounterMode) x the evaluations the flow made
  (SPDiff t*+1 per sampled slice, halos included; DGDiff its start steps), / a float32 matmul rate measured here with
  torch threads = cores, + the reference's FBP time.
- levers: flows on `--lever-slices` slices at the first dose, each beside a default flow on the same slices in the
  same run, with the largest difference of the stored outputs: Dask's own worker environment (MALLOC_TRIM_THRESHOLD_
  =65536), and one worker with `cores` torch threads; plus the model load time a per-chunk load would repeat.
Ratios, not seconds, are the point: the machine is shared, and everything compared here ran in one run; the 1-minute
load average around each part is recorded (with every core busy, torch's multi-threaded reference slows most).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import (  # noqa: E402 (needs the repo root on sys.path, added just above)
    RESULTS_DIR,
    TIMING_FIRST_SLICE,
    machine_info,
    save_head_ct_slices,
    use_local_prefect,
    write_result,
)
from bench.throughput_runs import (  # noqa: E402 (as above)
    default_sampling,
    flop_floor,
    inprocess_reference,
    max_difference,
    model_load_s,
    stored_outputs,
    timed_flow,
)
from flows.log_levels import quiet_logging  # noqa: E402 (as above)

TARGETS = {"flow_vs_inprocess_ratio": 1.25, "flow_vs_flop_floor_ratio": 2.0}
"""Issue #16's targets on the 2-core CPU."""
QUICK_SOURCE_SLICES = 6
NOTES = [
    "flow_s_per_slice_dose: the flow call from its first chunk task start to its return (compute, collection, "
    "cluster shutdown) / slice-doses; startup_s (server + flow call to first chunk) is apart.",
    "inprocess: tasks.reconstruct.reconstruct_chunk.fn on the same cells in this process, torch threads = cores, "
    "models loaded before timing; it computes the same cells, halos and writes as the flow, with the sampling "
    "profile the flow takes by default for these models.",
    "flop_floor: FlopCounterMode FLOPs of one network evaluation x the flow's evaluations / measured float32 matmul "
    "rate at torch threads = cores, + the in-process FBP time.",
    "max_abs_diff_flow_vs_inprocess_hu: the flow's workers compute with 1 torch thread, the reference with all "
    "cores; DGDiff's convolutions round differently with another thread count, so this is not 0.",
    "levers: s_per_slice_dose = first chunk start -> last chunk end / slice-doses of a flow on the lever slices; "
    "vs_default = that / the default flow's (same slices, same run); max_abs_diff_vs_default_hu over fbp_ld, "
    "spdiff_fbp and need (0.0: bit-identical).",
    "model_load_s: both checkpoints loaded from disk; tasks.models keeps them per worker process (keyed by content "
    "hash), so a run pays it once per worker, not model_loads_saved more times.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; --quick fills in the smoke settings not given explicitly."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=None, help="ingested catalog to copy (default: ingest)")
    parser.add_argument("--doses", default=None, help="dose fractions, comma separated (default 0.5,0.25)")
    parser.add_argument("--first-slice", type=int, default=None, help=f"first slice (default {TIMING_FIRST_SLICE})")
    parser.add_argument("--slices", type=int, default=None, help="slices to reconstruct (default 40)")
    parser.add_argument("--chunk-slices", type=int, default=None, help="the flow's chunk grid (default 8)")
    parser.add_argument("--lever-slices", type=int, default=None, help="slices of each lever flow (default 16)")
    parser.add_argument("--no-levers", dest="levers", action="store_false", help="skip the lever flows")
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="where the flow computes (default cpu)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, 2 slices of a 64² volume, 1 dose")
    parser.add_argument("--output", type=Path, default=None, help="result file (default bench/results/throughput.json)")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible here")
    args.doses = [float(v) for v in (args.doses or ("0.25" if quick else "0.5,0.25")).split(",") if v]
    args.first_slice = args.first_slice if args.first_slice is not None else (0 if quick else TIMING_FIRST_SLICE)
    args.slices = args.slices or (2 if quick else 40)
    args.chunk_slices = args.chunk_slices or (2 if quick else 8)
    args.lever_slices = min(args.lever_slices or 16, args.slices)
    if args.output is None:
        quick_output = Path(tempfile.gettempdir()) / "throughput_quick.json"
        suffix = "" if args.device == "cpu" else f"_{args.device}"
        args.output = quick_output if quick else RESULTS_DIR / f"throughput{suffix}.json"
    return args


def need_command(*words: str) -> None:
    """Run `need WORDS` (python -m flows.cli) in a child process with its own Prefect server, as a user would."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", *words], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"need {' '.join(words)} failed:\n{done.stdout}\n{done.stderr}")


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, tuple[str, str]]:
    """The pristine catalog (a copy of --catalog, else `need ingest` of the head CT) and the two checkpoints."""
    from flows.models import shipped_weights
    from storage.readers import BUNDLED_HEAD_CT
    from tasks.quick_models import write_tiny_models

    pristine = work / "pristine.zarr"
    doses = ",".join(f"{dose:g}" for dose in args.doses)
    if args.catalog is not None:
        shutil.copytree(args.catalog, pristine)
    elif args.quick:
        source = work / "head_small.npy"
        slices = range(TIMING_FIRST_SLICE, TIMING_FIRST_SLICE + QUICK_SOURCE_SLICES)
        spacing = save_head_ct_slices(source, slices, downsample=4)
        need_command("ingest", str(source), str(pristine), "--doses", doses, "--spacing", ",".join(map(str, spacing)))
    else:
        need_command("ingest", str(BUNDLED_HEAD_CT), str(pristine), "--doses", doses)
    if args.quick:
        return pristine, write_tiny_models(pristine, work)
    return pristine, (str(shipped_weights("spdiff")), str(shipped_weights("dgdiff")))


@contextmanager
def worker_environment(environment: dict[str, Any]) -> Iterator[None]:
    """Start local workers with `environment` (Dask's pre-spawn-environ). A variable in os.environ would win over
    Dask's config, and every earlier nanny wrote its own into os.environ, so they are set here too; restored after."""
    import dask

    saved = dict(os.environ)
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environment}):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def dask_default_environment() -> dict[str, Any]:
    """Dask's shipped `distributed.nanny.pre-spawn-environ` (distributed.yaml), what workers got before tasks.runner."""
    import distributed
    import yaml

    shipped = yaml.safe_load((Path(distributed.__file__).parent / "distributed.yaml").read_text())
    return shipped["distributed"]["nanny"]["pre-spawn-environ"]


def levers(args: argparse.Namespace, pristine: Path, work: Path, paths: tuple[str, str]) -> list[dict[str, Any]]:
    """The lever flows beside a default flow on the same slices; each row: time ratio and output difference
    (--quick: only the worker-environment lever)."""
    from prefect_dask import DaskTaskRunner

    from tasks.runner import LOCAL_CLUSTER, WORKER_ENVIRONMENT

    cores = os.cpu_count() or 1
    slices = list(range(args.first_slice, args.first_slice + args.lever_slices))
    dose = args.doses[0]
    one_worker = {**WORKER_ENVIRONMENT, "OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores}
    cases = {
        "default": (WORKER_ENVIRONMENT, None),
        "dask_default_worker_environment": (dask_default_environment(), None),
        f"one_worker_{cores}_threads": (one_worker, DaskTaskRunner(cluster_kwargs={**LOCAL_CLUSTER, "n_workers": 1})),
    }
    if args.quick:  # a smoke run checks that the environment lever changes no stored value; timing levers need work
        del cases[f"one_worker_{cores}_threads"]
    runs = {}
    for name, (environment, runner) in cases.items():
        catalog = work / f"lever_{name}.zarr"
        shutil.copytree(pristine, catalog)
        with worker_environment(environment):
            flow = timed_flow(catalog, [dose], slices, args.chunk_slices, paths, runner)
        runs[name] = (flow["chunks_span_s"] / flow["slice_doses"], stored_outputs(catalog, dose, slices))
    ours, ours_outputs = runs["default"]
    return [
        {
            "lever": name,
            "dose": dose,
            "n_slices": len(slices),
            "s_per_slice_dose": round(seconds, 4),
            "default_s_per_slice_dose": round(ours, 4),
            "vs_default": round(seconds / ours, 3),
            "max_abs_diff_vs_default_hu": max_difference(outputs, ours_outputs),
        }
        for name, (seconds, outputs) in runs.items()
        if name != "default"
    ]


def main(argv: list[str] | None = None) -> None:
    """Prepare the data, run the reference, the flow, the floor and the levers, write the result file."""
    args = parse_args(argv)
    use_local_prefect()
    quiet_logging(verbose=False)
    from flows.runtime import shared_prefect_api

    slices = list(range(args.first_slice, args.first_slice + args.slices))
    with tempfile.TemporaryDirectory(prefix="need-throughput-") as tmp:
        work = Path(tmp)
        pristine, paths = prepare(args, work)
        for name in ("reference", "flow"):
            shutil.copytree(pristine, work / f"{name}.zarr")
        load = {"before_reference": os.getloadavg()[0]}
        sampling = default_sampling(paths)
        reference = inprocess_reference(
            work / "reference.zarr", args.doses, slices, args.chunk_slices, paths, sampling, args.device
        )
        load["after_reference"] = os.getloadavg()[0]
        with ExitStack() as stack:
            clock = time.perf_counter()
            stack.enter_context(shared_prefect_api())
            server_s = time.perf_counter() - clock
            flow = timed_flow(work / "flow.zarr", args.doses, slices, args.chunk_slices, paths, device=args.device)
            load["after_flow"] = os.getloadavg()[0]
            lever_rows = levers(args, pristine, work, paths) if args.levers and args.device == "cpu" else []
        floor = flop_floor(
            work / "flow.zarr",
            slices,
            args.chunk_slices,
            paths,
            flow,
            reference["seconds"]["fbp"],
            sampling,
            args.device,
        )
        differences = [
            max_difference(*(stored_outputs(work / f"{name}.zarr", dose, slices) for name in ("flow", "reference")))
            for dose in args.doses
        ]
        load_s = model_load_s(paths)
    n = flow["slice_doses"]
    flow_s, reference_s, floor_s = flow["compute_s"] / n, reference["wall_s"] / n, floor["seconds"] / n
    workers = workers_of(args.device)
    rows = [
        {"case": "flow", "s_per_slice_dose": round(flow_s, 4), "wall_s": round(flow["wall_s"], 2), "workers": workers},
        {
            "case": "inprocess",
            "s_per_slice_dose": round(reference_s, 4),
            "wall_s": round(reference["wall_s"], 2),
            "workers": 1,
        },
        {
            "case": "flop_floor",
            "s_per_slice_dose": round(floor_s, 4),
            "wall_s": round(floor["seconds"], 2),
            "workers": 1,
        },
    ]
    write_result(
        "throughput",
        rows,
        machine=machine_info(args.device),
        path=args.output,
        flow_s_per_slice_dose=round(flow_s, 4),
        inprocess_s_per_slice_dose=round(reference_s, 4),
        flop_floor_s_per_slice_dose=round(floor_s, 4),
        startup_s=round(server_s + flow["to_first_chunk_s"], 2),
        flow_vs_inprocess_ratio=round(flow_s / reference_s, 3),
        flow_vs_flop_floor_ratio=round(flow_s / floor_s, 3),
        inprocess_vs_flop_floor_ratio=round(reference_s / floor_s, 3),
        device=args.device,
        gpu=gpu_note(args.device),
        targets=TARGETS,
        startup={"server_s": round(server_s, 2), "flow_call_to_first_chunk_s": round(flow["to_first_chunk_s"], 2)},
        shutdown_s=round(flow["shutdown_s"], 2),
        worker_busy_fraction=round(flow["chunk_busy_s"] / (workers * flow["chunks_span_s"]), 3),
        stage_seconds={
            "flow": {k: round(v, 2) for k, v in flow["seconds"].items()},
            "inprocess": {k: round(v, 2) for k, v in reference["seconds"].items()},
        },
        max_abs_diff_flow_vs_inprocess_hu=max(differences),
        flops_per_evaluation=floor["flops"],
        network_evaluations=floor["evaluations"],
        matmul_gflops=round(floor["gflops"], 1),
        torch_threads={"flow_worker": 1, "inprocess": reference["torch_threads"], "matmul": os.cpu_count() or 1},
        levers=lever_rows,
        model_load_s=round(load_s, 3),
        model_loads_saved=max(0, flow["chunks"] - workers),
        notes=NOTES,
        n_slices=args.slices,
        slices=[slices[0], slices[-1]],
        doses=args.doses,
        slice_doses=n,
        chunk_slices=args.chunk_slices,
        quick=args.quick,
        load_average_1min=load,
    )


def workers_of(device: str) -> int:
    """The default local cluster's worker count for `device` (tasks.runner): one per core, or one per GPU."""
    import torch

    return torch.cuda.device_count() if device == "cuda" else os.cpu_count() or 1


def gpu_note(device: str) -> str:
    """What this run says of the GPU: measured (a CUDA run), or why there is no GPU figure in a CPU run."""
    import torch

    if device == "cuda":
        return f"measured: {torch.cuda.get_device_name(0)}"
    if torch.cuda.is_available():
        return "not measured: this run measured the CPU only (bench/throughput.py --device cuda measures the GPU)"
    return "not measured: no GPU lent to this session"


if __name__ == "__main__":
    main()

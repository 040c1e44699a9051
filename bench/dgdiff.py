"""Benchmark DGDiff on the bundled head CT (NEED_SPEC.md §4–5, format of BENCH_RESULTS.md).

Scans are the archive's: what `need ingest --seed SEED` writes (bench.common.head_ct_scan). Two modes:
- train (default, sized for a GPU): train DGDiff on the normal-dose FBP images `fbp_nd` of the training slices, once
  over all steps and once restricted to the steps guided sampling can reach, with a learning curve;
- `--trained CHECKPOINT` (CPU-feasible): evaluate a trained checkpoint, e.g. the shipped one made by `need train`.
On the held-out slices 45–64 it reports per dose PSNR/SSIM/RMSE of NEED (x_init → DGDiff) vs x_init vs the low-dose
FBP against `fbp_nd`, seconds per slice, matched start steps, and batched vs one-slice-at-a-time sampling.

x_init is the FBP of SPDiff's output (the held-out run's two neighbours as context, as the reconstruct flow gives
them) when `--spdiff-checkpoint` names a trained SPDiff model; without one a Hann-windowed FBP stands in and the rows
are named after it (never "need").

    python bench/dgdiff.py --trained weights/dgdiff_cpu.pt --spdiff-checkpoint weights/spdiff_cpu.pt   # CPU
    python bench/dgdiff.py --profile cpu --spdiff-checkpoint weights/spdiff_cpu.pt --device cuda        # GPU training
    python bench/dgdiff.py --trained weights/dgdiff_cpu.pt --spdiff-checkpoint weights/spdiff_cpu.pt --max-heldout 2 \
        --out /tmp/dgdiff_smoke.json                                                                     # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from need_core.device import resolve_device
from need_core.dgdiff import (
    DGDiffModel,
    DGDiffTrainer,
    DiffusionSchedule,
    Refinement,
    TrainSettings,
    max_reachable_step,
    refine,
)
from need_core.metrics import psnr, ssim
from need_core.physics import SimulatedScan
from need_core.reporting import format_quality_table, quality_row
from storage.splits import HEAD_CT_SPLIT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import (  # noqa: E402 (needs the repo root on sys.path, added just above)
    DOSES,
    RESULTS_DIR,
    head_ct_scan,
    load_dgdiff,
    load_spdiff,
    machine_info,
    spdiff_denoise,
    with_halo,
    write_result,
)

CURVE_DOSE = 0.25
Evaluate = Callable[[DGDiffModel], dict[str, float]]


def spdiff_init(checkpoint: Path, scan: SimulatedScan, device: str, seed: int) -> dict[float, np.ndarray]:
    """x_init per dose: FBP of the SPDiff-denoised projections of the scan's inner slices."""
    model = load_spdiff(checkpoint, device)
    return {dose: scan.reconstruct(spdiff_denoise(model, scan, dose, seed, device)) for dose in DOSES}


def train_with_curve(
    settings: TrainSettings, images_hu: np.ndarray, steps: int, eval_every: int, evaluate: Evaluate, device: str
) -> tuple[DGDiffModel, dict[str, Any]]:
    """Train, evaluating every `eval_every` steps; returns the EMA model and the training record (learning curve)."""
    trainer = DGDiffTrainer(settings, images_hu, device)
    curve, train_seconds = [], 0.0
    while trainer.step < steps:
        start = time.perf_counter()
        losses = trainer.fit(min(eval_every, steps - trainer.step))
        train_seconds += time.perf_counter() - start
        point = evaluate(trainer.model())
        curve.append(
            {
                "step": trainer.step,
                "train_s": round(train_seconds, 1),
                "loss": round(float(np.mean(losses)), 5),
                **point,
            }
        )
        print(f"  step {trainer.step:6d}  {train_seconds:8.1f} s  loss {np.mean(losses):.4f}  {point}", flush=True)
    record = {"max_train_step": settings.train_steps_limit, "train_s": round(train_seconds, 1), "curve": curve}
    return trainer.model(), record


def train_variants(
    args: argparse.Namespace, refined_name: str, evaluate: Evaluate, device: str
) -> tuple[dict[str, DGDiffModel], dict[str, Any]]:
    """DGDiff trained over all steps and over the reachable steps only: models by method name, and the training
    records (curves, and the first step at which each reaches the all-steps model's final PSNR)."""
    train_slices = list(HEAD_CT_SPLIT.train)[: args.max_train]
    images = head_ct_scan(train_slices, [], args.seed).fbp_nd
    base = dict(
        profile=args.profile,
        batch_size=args.batch_size,
        crop_size=args.crop,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    reachable = max_reachable_step(DiffusionSchedule(TrainSettings(**base).schedule), args.max_sigma)
    variants = {
        refined_name: TrainSettings(**base),
        f"{refined_name}_reachable_steps": TrainSettings(**base, max_train_step=reachable),
    }
    models, training = {}, {}
    for name, settings in variants.items():
        print(f"training {name} (t < {settings.train_steps_limit})", flush=True)
        models[name], training[name] = train_with_curve(
            settings, images, args.train_steps, args.eval_every, evaluate, device
        )
    final_psnr = training[refined_name]["curve"][-1]["psnr"]
    for record in training.values():
        record["first_step_reaching_all_steps_final_psnr"] = next(
            (point["step"] for point in record["curve"] if point["psnr"] >= final_psnr), None
        )
    return models, {"variants": training, "reachable_max_train_step": reachable, "train_slices": len(train_slices)}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--trained",
        type=Path,
        default=None,
        help="evaluate this DGDiff checkpoint instead of training (e.g. weights/dgdiff_cpu.pt)",
    )
    parser.add_argument("--profile", default="cpu", choices=["tiny", "cpu", "paper"])
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch")
    parser.add_argument("--crop", type=int, default=64, help="training crop size (pixels)")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument(
        "--max-sigma",
        type=float,
        default=0.25,
        help="largest noise estimate (model units) the restricted training must serve",
    )
    parser.add_argument("--sample-batch", type=int, default=4, help="slices per network call when sampling")
    parser.add_argument("--spdiff-checkpoint", type=Path, default=None)
    parser.add_argument("--max-train", type=int, default=None, help="use only this many training slices (smoke)")
    parser.add_argument("--max-heldout", type=int, default=None, help="use only this many held-out slices (smoke)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (as `need ingest --seed`) and sampling seed")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "dgdiff.json")
    return parser.parse_args()


def main() -> None:
    """Simulate, train (unless --trained), evaluate on the held-out slices, write the JSON and print a table."""
    args = parse_args()
    device = str(resolve_device(args.device))
    started = time.perf_counter()
    heldout = list(HEAD_CT_SPLIT.heldout)[: args.max_heldout]
    scan = head_ct_scan(with_halo(heldout), DOSES, args.seed)
    inner = scan.select(heldout)
    reference, fbp_ld = inner.fbp_nd, {dose: inner.fbp(dose) for dose in DOSES}
    if args.spdiff_checkpoint is not None:
        init_name, refined_name = "spdiff_fbp", "need"
        x_init = spdiff_init(args.spdiff_checkpoint, scan, device, args.seed)
    else:
        init_name, refined_name = "fbp_hann", "dgdiff_on_fbp_hann"
        x_init = {dose: inner.fbp(dose, "hann") for dose in DOSES}
    print(
        f"simulated {len(heldout)} held-out slices and x_init ({init_name}) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    def run_refine(model: DGDiffModel, dose: float, batch_size: int) -> Refinement:
        return refine(
            model.network,
            fbp_ld[dose],
            x_init[dose],
            model.schedule,
            batch_size=batch_size,
            seed=args.seed,
            slice_ids=heldout,
            device=device,
        )

    def evaluate(model: DGDiffModel) -> dict[str, float]:
        images = run_refine(model, CURVE_DOSE, args.sample_batch).images_hu
        return {
            "psnr": round(float(np.mean(psnr(images, reference))), 3),
            "ssim": round(float(np.mean(ssim(images, reference))), 4),
        }

    if args.trained is not None:
        models, training = {refined_name: load_dgdiff(args.trained, device)}, None
    else:
        models, training = train_variants(args, refined_name, evaluate, device)

    rows, s_per_slice, start_steps = [], {}, {}
    for dose in DOSES:
        rows.append(quality_row("fbp_ld", dose, fbp_ld[dose], reference))
        rows.append(quality_row(init_name, dose, x_init[dose], reference))
        for name, model in models.items():
            clock = time.perf_counter()
            result = run_refine(model, dose, args.sample_batch)
            rows.append(quality_row(name, dose, result.images_hu, reference))
            if name == refined_name:
                s_per_slice[str(dose)] = round((time.perf_counter() - clock) / len(heldout), 4)
                start_steps[str(dose)] = result.start_steps.tolist()

    slowest_dose = min(DOSES)
    clock = time.perf_counter()
    one_at_a_time = run_refine(models[refined_name], slowest_dose, 1)
    single_s = time.perf_counter() - clock
    clock = time.perf_counter()
    batched = run_refine(models[refined_name], slowest_dose, len(heldout))
    batched_s = time.perf_counter() - clock

    by_method = {(row["method"], row["dose"]): row for row in rows}
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    write_result(
        "dgdiff",
        rows,
        machine=machine_info(device),
        path=args.out,
        table=False,
        s_per_slice=s_per_slice,
        start_steps=start_steps,
        batched_speedup=round(single_s / batched_s, 3),
        batched_vs_single_max_abs_diff_hu=float(np.abs(one_at_a_time.images_hu - batched.images_hu).max()),
        batched_speedup_dose=slowest_dose,
        x_init=init_name,
        training=training,
        settings={**settings, "heldout_slices": heldout, "image_size": list(reference.shape[1:])},
        targets={
            "refined_beats_x_init_psnr_and_ssim_every_dose": all(
                by_method[(refined_name, d)]["psnr"] >= by_method[(init_name, d)]["psnr"]
                and by_method[(refined_name, d)]["ssim"] >= by_method[(init_name, d)]["ssim"]
                for d in DOSES
            ),
            "batched_speedup_at_least_2": single_s / batched_s >= 2.0,
        },
        total_s=round(time.perf_counter() - started, 1),
    )
    print(format_quality_table(rows))
    print(f"s/slice {s_per_slice}  start steps {start_steps}  batched speedup {single_s / batched_s:.2f}")


if __name__ == "__main__":
    main()

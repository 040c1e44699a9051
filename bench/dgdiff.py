"""Benchmark DGDiff on the bundled head CT (NEED_SPEC.md §4–5, format of BENCH_RESULTS.md).

Simulates normal- and low-dose scans of the real head CT, trains DGDiff on the normal-dose FBP images
`fbp_nd` of the training slices (once over all steps, once restricted to the steps guided sampling can
reach), and on the held-out slices reports per dose PSNR/SSIM/RMSE of NEED (x_init → DGDiff) vs x_init
vs the low-dose FBP, seconds per slice, matched start steps, and batched vs one-slice-at-a-time sampling.

x_init comes from SPDiff → FBP when `--spdiff-checkpoint` names a trained SPDiff model; without one a
Hann-windowed FBP stands in and the rows are named after it (never "need").

    python bench/dgdiff.py --profile cpu --spdiff-checkpoint PATH      # full run, writes bench/results/dgdiff.json
    python bench/dgdiff.py --profile tiny --train-steps 20 --eval-every 10 --max-train 8 --max-heldout 3 \
        --out /tmp/dgdiff_smoke.json                                   # smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info  # noqa: E402
from need_core.device import resolve_device
from need_core.dgdiff import DGDiffTrainer, DiffusionSchedule, TrainSettings, max_reachable_step, refine
from need_core.metrics import psnr, ssim
from need_core.reporting import quality_row
from need_core.physics import (
    FanBeamGeometry,
    PhysicsSettings,
    fbp_hu,
    forward_project,
    hu_to_mu,
    simulate_transmission,
    transmission_to_line_integrals,
)
from storage.readers.inv3 import read_inv3
from storage.splits import HEAD_CT_SPLIT

HEAD_CT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
DOSES = (0.5, 0.25, 0.1, 0.05)
CURVE_DOSE = 0.25
RESULTS = Path(__file__).resolve().parent / "results" / "dgdiff.json"

# (low-dose normalised transmission (n, views, det), dose) -> initial reconstruction x_init in HU (n, H, W)
InitProvider = Callable[[np.ndarray, float], np.ndarray]


@dataclass
class Scans:
    """Simulated data of the bench: normal-dose FBP images and, per dose, held-out low-dose scans."""

    geometry: FanBeamGeometry
    train_nd: np.ndarray
    heldout_nd: np.ndarray
    heldout_transmission_ld: dict[float, np.ndarray]
    heldout_fbp_ld: dict[float, np.ndarray]


def simulate_scans(train_slices: list[int], heldout_slices: list[int], seed: int) -> Scans:
    """Forward-project the head CT, simulate normal- and low-dose transmission, and reconstruct with FBP."""
    volume = read_inv3(HEAD_CT)
    physics = PhysicsSettings()
    geometry = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:])
    rng = np.random.default_rng(seed)

    def line_integrals(slices: list[int]) -> np.ndarray:
        return forward_project(hu_to_mu(np.clip(volume.hu[slices], -1000.0, None)), geometry)

    def fbp_of(transmission: np.ndarray) -> np.ndarray:
        return fbp_hu(transmission_to_line_integrals(transmission), geometry, physics)

    p_train, p_heldout = line_integrals(train_slices), line_integrals(heldout_slices)
    transmission_ld = {dose: simulate_transmission(p_heldout, dose, physics, rng) for dose in DOSES}
    return Scans(
        geometry=geometry,
        train_nd=fbp_of(simulate_transmission(p_train, 1.0, physics, rng)),
        heldout_nd=fbp_of(simulate_transmission(p_heldout, 1.0, physics, rng)),
        heldout_transmission_ld=transmission_ld,
        heldout_fbp_ld={dose: fbp_of(transmission) for dose, transmission in transmission_ld.items()},
    )


def spdiff_init(checkpoint: Path, geometry: FanBeamGeometry, device: torch.device, seed: int) -> InitProvider:
    """x_init = FBP of the SPDiff-denoised projections (the NEED cascade's first half)."""
    from need_core.spdiff import CHECKPOINT_KIND, denoise_volume, load_model_from_payload
    from storage.checkpoints import load_checkpoint

    model = load_model_from_payload(load_checkpoint(checkpoint, CHECKPOINT_KIND), device=device)
    physics = PhysicsSettings()

    def provide(transmission_ld: np.ndarray, dose: float) -> np.ndarray:
        denoised = denoise_volume(model, transmission_ld, physics.incident_count * dose, seed=seed)
        return fbp_hu(transmission_to_line_integrals(denoised), geometry, physics)

    return provide


def hann_fbp_init(geometry: FanBeamGeometry) -> InitProvider:
    """Stand-in x_init while no SPDiff model is given: the Hann-windowed FBP of the low-dose scan."""
    physics = PhysicsSettings()
    return lambda transmission_ld, dose: fbp_hu(transmission_to_line_integrals(transmission_ld), geometry, physics, "hann")


def train_with_curve(
    settings: TrainSettings, images_hu: np.ndarray, steps: int, eval_every: int, evaluate: Callable, device: torch.device
) -> tuple[DGDiffTrainer, list[dict], float]:
    """Train, evaluating every `eval_every` steps; returns the trainer, the learning curve and training seconds."""
    trainer = DGDiffTrainer(settings, device)
    curve, train_seconds = [], 0.0
    while trainer.step < steps:
        start = time.perf_counter()
        losses = trainer.fit(images_hu, min(eval_every, steps - trainer.step))
        train_seconds += time.perf_counter() - start
        point = evaluate(trainer)
        curve.append({"step": trainer.step, "train_s": round(train_seconds, 1), "loss": round(float(np.mean(losses)), 5), **point})
        print(f"  step {trainer.step:6d}  {train_seconds:8.1f} s  loss {np.mean(losses):.4f}  {point}", flush=True)
    return trainer, curve, train_seconds


def first_step_reaching(curve: list[dict], target_psnr: float) -> int | None:
    """First evaluated step whose PSNR reaches `target_psnr` (None if never)."""
    return next((point["step"] for point in curve if point["psnr"] >= target_psnr), None)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", choices=["tiny", "cpu", "paper"])
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch")
    parser.add_argument("--crop", type=int, default=64, help="training crop size (pixels)")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-sigma", type=float, default=0.25,
                        help="largest noise estimate (model units) the restricted training must serve")
    parser.add_argument("--sample-batch", type=int, default=4, help="slices per network call when sampling")
    parser.add_argument("--spdiff-checkpoint", type=Path, default=None)
    parser.add_argument("--max-train", type=int, default=None, help="use only this many training slices (smoke)")
    parser.add_argument("--max-heldout", type=int, default=None, help="use only this many held-out slices (smoke)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    train_slices = list(HEAD_CT_SPLIT.train)[: args.max_train]
    heldout_slices = list(HEAD_CT_SPLIT.heldout)[: args.max_heldout]
    started = time.perf_counter()
    scans = simulate_scans(train_slices, heldout_slices, args.seed)
    print(f"simulated {len(train_slices)} training and {len(heldout_slices)} held-out slices "
          f"in {time.perf_counter() - started:.1f} s", flush=True)

    if args.spdiff_checkpoint is not None:
        init_name, refined_name = "spdiff_fbp", "need"
        provide_init = spdiff_init(args.spdiff_checkpoint, scans.geometry, device, args.seed)
    else:
        init_name, refined_name = "fbp_hann", "dgdiff_on_fbp_hann"
        provide_init = hann_fbp_init(scans.geometry)
    x_init = {dose: provide_init(scans.heldout_transmission_ld[dose], dose) for dose in DOSES}

    def run_refine(model, schedule, dose: float, batch_size: int):
        return refine(model, scans.heldout_fbp_ld[dose], x_init[dose], schedule,
                      batch_size=batch_size, seed=args.seed, slice_ids=heldout_slices)

    def evaluate(trainer: DGDiffTrainer) -> dict:
        result = run_refine(trainer.ema_model.eval(), trainer.schedule, CURVE_DOSE, args.sample_batch)
        return {"psnr": round(float(np.mean(psnr(result.images_hu, scans.heldout_nd))), 3),
                "ssim": round(float(np.mean(ssim(result.images_hu, scans.heldout_nd))), 4)}

    base = dict(profile=args.profile, batch_size=args.batch_size, crop_size=args.crop,
                learning_rate=args.learning_rate, seed=args.seed)
    reachable = max_reachable_step(DiffusionSchedule(TrainSettings(**base).schedule), args.max_sigma)
    variants = {"all_steps": TrainSettings(**base), "reachable_steps": TrainSettings(**base, max_train_step=reachable)}
    trained, training = {}, {}
    for name, settings in variants.items():
        print(f"training {name} (t < {settings.train_steps_limit})", flush=True)
        trainer, curve, seconds = train_with_curve(settings, scans.train_nd, args.train_steps, args.eval_every, evaluate, device)
        trained[name] = trainer
        training[name] = {"max_train_step": settings.train_steps_limit, "train_s": round(seconds, 1), "curve": curve}
    final_psnr = training["all_steps"]["curve"][-1]["psnr"]
    for name in variants:
        training[name]["first_step_reaching_all_steps_final_psnr"] = first_step_reaching(training[name]["curve"], final_psnr)

    rows, s_per_slice, start_steps = [], {}, {}
    for dose in DOSES:
        rows.append(quality_row("fbp_ld", dose, scans.heldout_fbp_ld[dose], scans.heldout_nd))
        rows.append(quality_row(init_name, dose, x_init[dose], scans.heldout_nd))
        for name, suffix in (("all_steps", ""), ("reachable_steps", "_reachable_steps")):
            model, schedule = trained[name].ema_model.eval(), trained[name].schedule
            start = time.perf_counter()
            result = run_refine(model, schedule, dose, args.sample_batch)
            elapsed = time.perf_counter() - start
            rows.append(quality_row(refined_name + suffix, dose, result.images_hu, scans.heldout_nd))
            if name == "all_steps":
                s_per_slice[str(dose)] = round(elapsed / len(heldout_slices), 4)
                start_steps[str(dose)] = result.start_steps.tolist()

    model, schedule = trained["all_steps"].ema_model.eval(), trained["all_steps"].schedule
    slowest_dose = min(DOSES)
    start = time.perf_counter()
    one_at_a_time = run_refine(model, schedule, slowest_dose, 1)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = run_refine(model, schedule, slowest_dose, len(heldout_slices))
    batched_s = time.perf_counter() - start

    by_method = {(row["method"], row["dose"]): row for row in rows}
    report = {
        "benchmark": "dgdiff",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(device),
        "rows": rows,
        "s_per_slice": s_per_slice,
        "start_steps": start_steps,
        "batched_speedup": round(single_s / batched_s, 3),
        "batched_vs_single_max_abs_diff_hu": float(np.abs(one_at_a_time.images_hu - batched.images_hu).max()),
        "batched_speedup_dose": slowest_dose,
        "x_init": init_name,
        "training": training,
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "spdiff_checkpoint")},
                     "spdiff_checkpoint": str(args.spdiff_checkpoint) if args.spdiff_checkpoint else None,
                     "reachable_max_train_step": reachable, "train_slices": len(train_slices),
                     "heldout_slices": heldout_slices, "image_size": list(scans.heldout_nd.shape[1:])},
        "targets": {
            "refined_beats_x_init_psnr_and_ssim_every_dose": all(
                by_method[(refined_name, d)]["psnr"] >= by_method[(init_name, d)]["psnr"]
                and by_method[(refined_name, d)]["ssim"] >= by_method[(init_name, d)]["ssim"] for d in DOSES
            ),
            "batched_speedup_at_least_2": single_s / batched_s >= 2.0,
        },
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'method':32s} {'dose':>5s} {'PSNR':>7s} {'SSIM':>7s} {'RMSE HU':>8s}")
    for row in rows:
        print(f"{row['method']:32s} {row['dose']:5.2f} {row['psnr']:7.2f} {row['ssim']:7.4f} {row['rmse_hu']:8.1f}")
    print(f"s/slice {s_per_slice}  start steps {start_steps}")
    print(f"batched speedup {report['batched_speedup']}  targets {report['targets']}  -> {args.out}")


if __name__ == "__main__":
    main()

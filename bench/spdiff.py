"""Benchmark SPDiff: train on the bundled head CT's training slices (normal dose only), evaluate on the
held-out slices at doses 0.5, 0.25, 0.1, 0.05: FBP(SPDiff output) vs FBP(raw low dose) against the
normal-dose FBP. Writes bench/results/spdiff.json (see /work/shared/BENCH_RESULTS.md).

    python bench/spdiff.py --profile cpu                         # train here, then evaluate
    python bench/spdiff.py --trained weights/spdiff_cpu.pt       # evaluate the shipped `need train` checkpoint
    python bench/spdiff.py --profile tiny --steps 20 --eval-slices 3   # smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from need_core.device import resolve_device
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
from need_core.spdiff import (
    CHECKPOINT_KIND,
    Trainer,
    TrainingSettings,
    denoise_volume,
    estimate_incident_count,
    incident_count_for_dose,
    load_model_from_payload,
    match_time_step,
    network_evaluations,
    network_profile,
)
from storage.checkpoints import load_checkpoint, save_checkpoint
from storage.readers import BUNDLED_HEAD_CT, read_volume
from storage.splits import HEAD_CT_SPLIT

RESULTS = Path(__file__).resolve().parent / "results"
DOSES = (0.5, 0.25, 0.1, 0.05)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=("tiny", "cpu", "paper"))
    parser.add_argument("--steps", type=int, default=6000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64, help="square training patch (views = detectors)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--ema-start", type=int, default=2000)
    parser.add_argument("--eval-slices", type=int, default=None, help="use only the first N held-out slices")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: bench/results/spdiff_PROFILE.pt")
    parser.add_argument("--trained", type=Path, default=None,
                        help="skip training and evaluate this checkpoint (e.g. one made by `need train`)")
    parser.add_argument("--output", type=Path, default=RESULTS / "spdiff.json")
    return parser.parse_args()


def normal_dose_runs(line_integrals: dict[int, np.ndarray], slices: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Normal-dose transmission of `slices`, one array per contiguous run (triplets must not cross a gap)."""
    runs, current = [], [slices[0]]
    for index in slices[1:]:
        if index == current[-1] + 1:
            current.append(index)
        else:
            runs.append(current)
            current = [index]
    runs.append(current)
    settings = PhysicsSettings()
    return [
        simulate_transmission(np.stack([line_integrals[i] for i in run]), 1.0, settings, rng=seed + k)
        for k, run in enumerate(runs)
    ]


def main() -> None:
    """Train, evaluate, write the JSON and print a table."""
    args = parse_args()
    device = resolve_device(args.device)
    physics = PhysicsSettings()
    volume = read_volume(BUNDLED_HEAD_CT)
    geometry = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:])
    heldout = HEAD_CT_SPLIT.heldout[: args.eval_slices] if args.eval_slices else HEAD_CT_SPLIT.heldout
    halo_before, halo_after = heldout[0] - 1, heldout[-1] + 1  # real neighbours, context only
    needed = sorted(set(HEAD_CT_SPLIT.train) | {halo_before, *heldout, halo_after})
    mu = hu_to_mu(np.clip(volume.hu[needed], -1000.0, None))
    line_integrals = dict(zip(needed, forward_project(mu, geometry)))
    print(f"projected {len(needed)} slices to sinograms of {geometry.sinogram_shape}", flush=True)

    if args.trained:
        checkpoint, train_s, final_l1 = args.trained, None, None
        blob = load_checkpoint(checkpoint, CHECKPOINT_KIND)
        train_steps = int(blob["step"])
    else:
        training = TrainingSettings(
            learning_rate=args.lr, batch_size=args.batch_size, patch_shape=(args.patch, args.patch),
            ema_start=args.ema_start, seed=args.seed, loss_domain=network_profile(args.profile).domain,
        )
        trainer = Trainer(normal_dose_runs(line_integrals, HEAD_CT_SPLIT.train, args.seed), network=args.profile,
                          training=training, device=device)
        started = time.perf_counter()
        losses = trainer.train(args.steps, on_step=lambda step, loss: step % 500 == 0 and print(f"step {step} L1 {loss:.5f}", flush=True))
        train_s, train_steps = round(time.perf_counter() - started, 1), args.steps
        final_l1 = round(float(np.mean(losses[-100:])), 6)
        checkpoint = args.checkpoint or RESULTS / f"spdiff_{args.profile}.pt"
        save_checkpoint(checkpoint, CHECKPOINT_KIND, trainer.settings, **trainer.state_payload())
        blob = load_checkpoint(checkpoint, CHECKPOINT_KIND, trainer.settings)
    model = load_model_from_payload(blob, device=device)

    chunk = (halo_before, *heldout, halo_after)
    eval_p = np.stack([line_integrals[i] for i in chunk])
    normal = simulate_transmission(eval_p, 1.0, physics, rng=args.seed + 100)[1:-1]
    reference = fbp_hu(transmission_to_line_integrals(normal), geometry, physics)
    rows, s_per_slice, dose_errors, evaluations = [], {}, {}, {}
    for k, dose in enumerate(DOSES):
        low = simulate_transmission(eval_p, dose, physics, rng=args.seed + 200 + k)
        count = incident_count_for_dose(dose, physics.incident_count)
        dose_errors[str(dose)] = round(abs(estimate_incident_count(low[1:-1], physics.sigma_e2) / count - 1.0), 4)
        started = time.perf_counter()
        denoised = denoise_volume(model, low, count, halo=(True, True), seed=args.seed, device=device)
        s_per_slice[str(dose)] = round((time.perf_counter() - started) / len(heldout), 3)
        evaluations[str(dose)] = network_evaluations(match_time_step(count, model.schedule))
        rows.append(quality_row("fbp_ld", dose, fbp_hu(transmission_to_line_integrals(low[1:-1]), geometry, physics), reference))
        rows.append(quality_row("spdiff_fbp", dose, fbp_hu(transmission_to_line_integrals(denoised), geometry, physics), reference))
        print(f"dose {dose}: fbp_ld {rows[-2]['psnr']:.2f} dB, spdiff_fbp {rows[-1]['psnr']:.2f} dB, "
              f"{s_per_slice[str(dose)]} s/slice, dose estimate error {dose_errors[str(dose)]:.3f}", flush=True)

    result = {
        "benchmark": "spdiff",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python bench/spdiff.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "device": str(device),
        },
        "rows": rows,
        "s_per_slice": s_per_slice,
        "train_s": train_s,
        "dose_estimate_rel_error_max": max(dose_errors.values()),
        "dose_estimate_rel_error": dose_errors,
        "network_evaluations": evaluations,
        "profile": blob["settings"]["network"],
        "loss_domain": blob["settings"]["training"]["loss_domain"],
        "train_steps": train_steps,
        "final_train_l1": final_l1,
        "sinogram_shape": list(geometry.sinogram_shape),
        "checkpoint": str(checkpoint),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'method':<12}{'dose':>6}{'PSNR':>8}{'SSIM':>8}{'RMSE HU':>9}")
    for row in rows:
        print(f"{row['method']:<12}{row['dose']:>6}{row['psnr']:>8.2f}{row['ssim']:>8.4f}{row['rmse_hu']:>9.1f}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

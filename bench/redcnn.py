"""Benchmark the supervised RED-CNN baseline on the bundled head CT (format of /work/shared/BENCH_RESULTS.md).

Simulates the head CT's scans with need_core.physics and the archive's noise seeding (same data as `need ingest`
with the same seed), trains RED-CNN on the TRAINING slices paired at dose 0.25 (input: FBP of the 25 % scan;
target: the normal-dose FBP `fbp_nd`, NEED_SPEC.md §5), then scores it and the low-dose FBP on the HELD-OUT slices
at doses 0.5, 0.25, 0.1 and 0.05 against `fbp_nd`. Saves the checkpoint to bench/results/redcnn_cpu.pt.

    python bench/redcnn.py                                  # full run (cpu profile), writes bench/results/redcnn.json
    python bench/redcnn.py --profile tiny --steps 5 --max-train 4 --max-heldout 2 --out-dir /tmp/redcnn_smoke
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, machine_info, write_result  # noqa: E402
from need_core import redcnn  # noqa: E402
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
from need_core.reporting import quality_row  # noqa: E402
from storage.checkpoints import save_checkpoint  # noqa: E402
from storage.readers import BUNDLED_HEAD_CT, read_volume  # noqa: E402
from storage.splits import HEAD_CT_SPLIT  # noqa: E402
from tasks.ingest import NORMAL_DOSE, slice_rng  # noqa: E402

TRAIN_DOSE = 0.25
EVAL_DOSES = (0.5, 0.25, 0.1, 0.05)


class HeadCTScans:
    """FBP images (HU) of simulated scans of the bundled head CT, noise seeded per (seed, slice, dose) as at ingest."""

    def __init__(self, seed: int) -> None:
        volume = read_volume(BUNDLED_HEAD_CT)
        self.hu = volume.hu
        self.seed = seed
        self.physics = PhysicsSettings()
        self.geometry = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:])

    def line_integrals(self, slices: list[int]) -> np.ndarray:
        """Noise-free line integrals of the chosen slices."""
        return forward_project(hu_to_mu(self.hu[slices], self.physics.mu_water_per_mm), self.geometry)

    def fbp(self, line_integrals: np.ndarray, slices: list[int], dose: float) -> np.ndarray:
        """Ramp FBP (HU) of each slice's simulated scan at `dose`."""
        transmission = np.stack([
            simulate_transmission(p, dose, self.physics, slice_rng(self.seed, s, dose))
            for p, s in zip(line_integrals, slices)
        ])
        return fbp_hu(transmission_to_line_integrals(transmission), self.geometry, self.physics)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(redcnn.PROFILES))
    parser.add_argument("--steps", type=int, default=1500, help="training iterations")
    parser.add_argument("--max-train-minutes", type=float, default=15.0,
                        help="stop training early (recorded as steps_done) on a machine slower than expected")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (as `need ingest --seed`) and training seed")
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training slices (smoke runs)")
    parser.add_argument("--max-heldout", type=int, default=None,
                        help="use only the first N held-out slices (smoke runs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a shared, oversubscribed 2-core machine)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR,
                        help="where redcnn_<profile>.pt goes (the JSON always goes to bench/results unless --no-json)")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/redcnn.json (smoke runs)")
    return parser.parse_args()


def main() -> None:
    """Simulate, train, evaluate, save the checkpoint and write the result file."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    train_slices = list(HEAD_CT_SPLIT.train)[: args.max_train]
    heldout_slices = list(HEAD_CT_SPLIT.heldout)[: args.max_heldout]

    started = time.perf_counter()
    scans = HeadCTScans(args.seed)
    p_train = scans.line_integrals(train_slices)
    train_in = scans.fbp(p_train, train_slices, TRAIN_DOSE)
    train_target = scans.fbp(p_train, train_slices, NORMAL_DOSE)
    p_heldout = scans.line_integrals(heldout_slices)
    reference = scans.fbp(p_heldout, heldout_slices, NORMAL_DOSE)
    heldout_ld = {dose: scans.fbp(p_heldout, heldout_slices, dose) for dose in EVAL_DOSES}
    simulate_s = time.perf_counter() - started
    print(f"simulated {len(train_slices)} training and {len(heldout_slices)} held-out slices in {simulate_s:.0f} s")

    settings = redcnn.TrainSettings(profile=args.profile, learning_rate=args.learning_rate, batch_size=args.batch_size,
                                    patch_size=args.patch_size, paired_dose=TRAIN_DOSE, seed=args.seed)
    trainer = redcnn.RedCNNTrainer(settings, device=device)
    deadline = time.perf_counter() + 60.0 * args.max_train_minutes
    losses: list[float] = []
    train_started = time.perf_counter()
    while trainer.step < args.steps and time.perf_counter() < deadline:
        losses += trainer.fit(train_in, train_target, steps=min(50, args.steps - trainer.step))
        elapsed = time.perf_counter() - train_started
        print(f"step {trainer.step}: loss {np.mean(losses[-50:]):.3e} ({elapsed / trainer.step:.2f} s/step)")
    train_s = time.perf_counter() - train_started
    checkpoint = save_checkpoint(args.out_dir / f"redcnn_{args.profile}.pt", redcnn.CHECKPOINT_KIND,
                                 trainer.checkpoint_settings(), **trainer.checkpoint_payload())

    rows, denoise_s = [], 0.0
    method = redcnn.method_name(settings)
    for dose in EVAL_DOSES:
        rows.append(quality_row("fbp_ld", dose, heldout_ld[dose], reference))
        denoise_started = time.perf_counter()
        denoised = redcnn.denoise_images(trainer.model, heldout_ld[dose], batch_size=4, device=device)
        denoise_s += time.perf_counter() - denoise_started
        rows.append(quality_row(method, dose, denoised, reference))

    scalars = {
        "profile": args.profile,
        "train_dose": TRAIN_DOSE,
        "loss": "MSE in network units u = (HU + 2048) / 4096",
        "steps_requested": args.steps,
        "steps_done": trainer.step,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "torch_threads": args.threads,
        "n_train_slices": len(train_slices),
        "train_s": train_s,
        "s_per_step": train_s / max(trainer.step, 1),
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "simulate_s": simulate_s,
        "denoise_s_per_slice": denoise_s / (len(EVAL_DOSES) * len(heldout_slices)),
        "checkpoint": str(checkpoint.relative_to(Path.cwd()) if checkpoint.is_relative_to(Path.cwd()) else checkpoint),
        "checkpoint_mb": checkpoint.stat().st_size / 1e6,
    }
    if args.no_json:
        print(rows, scalars)
    else:
        write_result("redcnn", rows, machine=machine_info(device), **scalars)


if __name__ == "__main__":
    main()

"""Benchmark the supervised RED-CNN baseline on the bundled head CT (format of /work/shared/BENCH_RESULTS.md).

Scans are the archive's: what `need ingest --seed SEED` writes (bench.common.head_ct_scan). RED-CNN trains on the
TRAINING slices paired at dose 0.25 (input: FBP of the 25 % scan; target: the normal-dose FBP `fbp_nd`,
NEED_SPEC.md §5); it and the low-dose FBP are then scored on the HELD-OUT slices at doses 0.5, 0.25, 0.1 and 0.05
against `fbp_nd`. Saves the checkpoint to bench/results/redcnn_cpu.pt.

    python bench/redcnn.py                                  # full run (cpu profile), writes bench/results/redcnn.json
    python bench/redcnn.py --profile tiny --steps 5 --max-train 4 --max-heldout 2 --out-dir /tmp/redcnn_smoke \
        --out /tmp/redcnn_smoke/redcnn.json                 # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from need_core import redcnn
from need_core.device import resolve_device
from need_core.reporting import quality_row
from storage.checkpoints import save_trainer
from storage.splits import HEAD_CT_SPLIT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import DOSES, RESULTS_DIR, head_ct_scan, machine_info, write_result  # noqa: E402 (repo root above)

TRAIN_DOSE = 0.25


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(redcnn.PROFILES))
    parser.add_argument("--steps", type=int, default=1500, help="training iterations")
    parser.add_argument(
        "--max-train-minutes",
        type=float,
        default=15.0,
        help="stop training early (recorded as steps_done) on a machine slower than expected",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0, help="noise seed (as `need ingest --seed`) and training seed")
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training slices (smoke runs)")
    parser.add_argument(
        "--max-heldout", type=int, default=None, help="use only the first N held-out slices (smoke runs)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a shared, oversubscribed 2-core machine)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="where redcnn_<profile>.pt goes")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "redcnn.json", help="the result file")
    return parser.parse_args()


def main() -> None:
    """Simulate, train, evaluate, save the checkpoint and write the result file."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    train_slices = list(HEAD_CT_SPLIT.train)[: args.max_train]
    heldout_slices = list(HEAD_CT_SPLIT.heldout)[: args.max_heldout]

    started = time.perf_counter()
    train_scan = head_ct_scan(train_slices, [TRAIN_DOSE], args.seed)
    pairs = redcnn.PairedImages(inputs_hu=train_scan.fbp(TRAIN_DOSE), targets_hu=train_scan.fbp_nd)
    heldout = head_ct_scan(heldout_slices, DOSES, args.seed)
    reference, fbp_ld = heldout.fbp_nd, {dose: heldout.fbp(dose) for dose in DOSES}
    simulate_s = time.perf_counter() - started
    print(f"simulated {len(train_slices)} training and {len(heldout_slices)} held-out slices in {simulate_s:.0f} s")

    settings = redcnn.TrainSettings(
        profile=args.profile,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        paired_dose=TRAIN_DOSE,
        seed=args.seed,
    )
    trainer = redcnn.RedCNNTrainer(settings, pairs, device=device)
    deadline = time.perf_counter() + 60.0 * args.max_train_minutes
    losses: list[float] = []
    train_started = time.perf_counter()
    while trainer.step < args.steps and time.perf_counter() < deadline:
        losses += trainer.fit(min(50, args.steps - trainer.step))
        elapsed = time.perf_counter() - train_started
        print(f"step {trainer.step}: loss {np.mean(losses[-50:]):.3e} ({elapsed / trainer.step:.2f} s/step)")
    train_s = time.perf_counter() - train_started
    checkpoint = save_trainer(args.out_dir / f"redcnn_{args.profile}.pt", trainer)

    rows, denoise_s = [], 0.0
    model, method = trainer.model(), redcnn.method_name(settings)
    for dose in DOSES:
        rows.append(quality_row("fbp_ld", dose, fbp_ld[dose], reference))
        denoise_started = time.perf_counter()
        denoised = redcnn.denoise_images(model, fbp_ld[dose], batch_size=4, device=device)
        denoise_s += time.perf_counter() - denoise_started
        rows.append(quality_row(method, dose, denoised, reference))

    write_result(
        "redcnn",
        rows,
        machine=machine_info(device),
        path=args.out,
        profile=args.profile,
        train_dose=TRAIN_DOSE,
        loss="MSE in network units u = (HU + 2048) / 4096",
        steps_requested=args.steps,
        steps_done=trainer.step,
        batch_size=args.batch_size,
        patch_size=args.patch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        torch_threads=args.threads,
        n_train_slices=len(train_slices),
        train_s=train_s,
        s_per_step=train_s / max(trainer.step, 1),
        loss_first_50=float(np.mean(losses[:50])) if losses else None,
        loss_last_50=float(np.mean(losses[-50:])) if losses else None,
        simulate_s=simulate_s,
        denoise_s_per_slice=denoise_s / (len(DOSES) * len(heldout_slices)),
        checkpoint=str(checkpoint.relative_to(Path.cwd()) if checkpoint.is_relative_to(Path.cwd()) else checkpoint),
        checkpoint_mb=checkpoint.stat().st_size / 1e6,
    )


if __name__ == "__main__":
    main()

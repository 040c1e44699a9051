"""Benchmark SPDiff: train on the bundled head CT's training slices (normal dose only), evaluate on the
held-out slices at doses 0.5, 0.25, 0.1, 0.05: FBP(SPDiff output) vs FBP(raw low dose) against the
normal-dose FBP. Scans are the archive's (bench.common.head_ct_scan). Writes bench/results/spdiff.json
(see /work/shared/BENCH_RESULTS.md).

    python bench/spdiff.py --profile cpu                         # train here, then evaluate
    python bench/spdiff.py --trained weights/spdiff_cpu.pt       # evaluate the shipped `need train` checkpoint
    python bench/spdiff.py --profile tiny --steps 20 --eval-slices 3 --output /tmp/spdiff_smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from need_core.device import resolve_device
from need_core.reporting import format_quality_table, quality_row
from need_core.spdiff import (
    CHECKPOINT_KIND,
    SPDiffTrainer,
    TrainSettings,
    estimate_incident_count,
    match_time_step,
    network_evaluations,
    network_profile,
)
from storage.checkpoints import load_checkpoint, save_trainer
from storage.splits import HEAD_CT_SPLIT
from tasks.chunking import contiguous_chunks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import (  # noqa: E402 (needs the repo root on sys.path, added just above)
    DOSES,
    RESULTS_DIR,
    head_ct_scan,
    load_spdiff,
    machine_info,
    spdiff_denoise,
    with_halo,
    write_result,
)


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
    parser.add_argument("--seed", type=int, default=0, help="noise seed (as `need ingest --seed`) and training seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: bench/results/spdiff_PROFILE.pt")
    parser.add_argument(
        "--trained",
        type=Path,
        default=None,
        help="skip training and evaluate this checkpoint (e.g. one made by `need train`)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "spdiff.json")
    return parser.parse_args()


def train(args: argparse.Namespace, device: str) -> tuple[Path, float, float]:
    """Train on the normal-dose scans of the training slices (one volume per contiguous run: triplets never cross a
    gap); returns the checkpoint, training seconds and the final L1."""
    scan = head_ct_scan(HEAD_CT_SPLIT.train, [], args.seed)
    chunks = contiguous_chunks(scan.slice_indices, len(scan.slice_indices))
    runs = [scan.select(range(chunk.start, chunk.stop)).proj_nd for chunk in chunks]
    network = network_profile(args.profile)
    settings = TrainSettings(
        network=network,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        patch_shape=(args.patch, args.patch),
        ema_start=args.ema_start,
        seed=args.seed,
        loss_domain=network.domain,
    )
    trainer = SPDiffTrainer(settings, runs, device=device)
    started = time.perf_counter()
    losses = trainer.fit(args.steps, on_step=lambda step, loss: step % 500 == 0 and print(f"step {step} L1 {loss:.5f}"))
    checkpoint = save_trainer(args.checkpoint or RESULTS_DIR / f"spdiff_{args.profile}.pt", trainer)
    return checkpoint, round(time.perf_counter() - started, 1), round(float(np.mean(losses[-100:])), 6)


def main() -> None:
    """Train (unless --trained), evaluate, write the JSON and print a table."""
    args = parse_args()
    device = str(resolve_device(args.device))
    if args.trained:
        checkpoint, train_s, final_l1 = args.trained, None, None
    else:
        checkpoint, train_s, final_l1 = train(args, device)
    blob = load_checkpoint(checkpoint, CHECKPOINT_KIND)
    model = load_spdiff(checkpoint, device)

    heldout = HEAD_CT_SPLIT.heldout[: args.eval_slices] if args.eval_slices else HEAD_CT_SPLIT.heldout
    scan = head_ct_scan(with_halo(heldout), DOSES, args.seed)  # the halo slices are SPDiff's context only
    inner = scan.select(heldout)
    rows, s_per_slice, dose_errors, evaluations = [], {}, {}, {}
    for dose in DOSES:
        count = scan.physics.incident_count_at(dose)
        estimate = estimate_incident_count(inner.proj_ld[dose], scan.physics.sigma_e2)
        dose_errors[str(dose)] = round(abs(estimate / count - 1.0), 4)
        started = time.perf_counter()
        denoised = spdiff_denoise(model, scan, dose, args.seed, device)
        s_per_slice[str(dose)] = round((time.perf_counter() - started) / len(heldout), 3)
        evaluations[str(dose)] = network_evaluations(match_time_step(count, model.schedule))
        rows.append(quality_row("fbp_ld", dose, inner.fbp(dose), inner.fbp_nd))
        rows.append(quality_row("spdiff_fbp", dose, inner.reconstruct(denoised), inner.fbp_nd))
        print(
            f"dose {dose}: fbp_ld {rows[-2]['psnr']:.2f} dB, spdiff_fbp {rows[-1]['psnr']:.2f} dB, "
            f"{s_per_slice[str(dose)]} s/slice, dose estimate error {dose_errors[str(dose)]:.3f}",
            flush=True,
        )

    write_result(
        "spdiff",
        rows,
        machine=machine_info(device),
        path=args.output,
        table=False,
        s_per_slice=s_per_slice,
        train_s=train_s,
        dose_estimate_rel_error_max=max(dose_errors.values()),
        dose_estimate_rel_error=dose_errors,
        network_evaluations=evaluations,
        profile=blob["settings"]["network"],
        loss_domain=blob["settings"]["training"]["loss_domain"],
        train_steps=int(blob["step"]),
        final_train_l1=final_l1,
        sinogram_shape=list(scan.geometry.sinogram_shape),
        checkpoint=str(checkpoint),
    )
    print(format_quality_table(rows))


if __name__ == "__main__":
    main()

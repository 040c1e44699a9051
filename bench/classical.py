"""Choose the classical baselines' strengths (tasks/classical.py: NLM, TV, and BM3D when `bm3d` is installed) on the
bundled head CT's validation slices, then score them at those strengths on the held-out slices (format of
/work/shared/BENCH_RESULTS.md).

Choosing: the validation slices (storage.splits.HEAD_CT_SPLIT.validation) scanned again at every dose with noise apart
from the archive's stored scans (tasks.train_validation.simulate_validation_set); per method a small grid of
strengths, the one with the best mean PSNR over slices and doses wins (SSIM reported beside it). The held-out slices
45-64 are never used to choose: they are scored afterwards from the archive's stored scans, exactly as the demo's
`baseline_images` computes them.

    python bench/classical.py               # writes bench/results/classical.json; `chosen` goes into tasks/classical.py
    python bench/classical.py --methods nlm,tv --out /tmp/classical.json        # without BM3D
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from skimage.restoration import denoise_tv_chambolle

from need_core.reporting import format_quality_table, quality_row
from storage.archive import Archive, open_archive
from storage.readers import BUNDLED_HEAD_CT
from storage.splits import HEAD_CT_SPLIT
from tasks import classical
from tasks.train_validation import ValidationSet, simulate_validation_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import DOSES, machine_info, use_local_prefect, write_result  # noqa: E402 (repo root added above)

GRIDS = {
    "nlm": (0.6, 0.8, 1.0, 1.2, 1.4, 1.7, 2.0),
    "tv": (7.0, 10.0, 14.0, 20.0, 28.0, 40.0, 56.0),
    "bm3d": (1.0, 1.3, 1.6, 2.0, 2.5, 3.0),
}
"""Strengths tried per method (see tasks/classical.py for what each multiplies)."""
TV_LINEAR = "tv_weight_linear"
TV_LINEAR_GRID = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
"""The rejected TV scaling, weight = strength · σ, measured beside the chosen weight = strength · σ²."""


def tv_weight_linear(fbp_ld_hu: np.ndarray, strength: float) -> np.ndarray:
    """TV with weight = strength · σ (HU/1000): the variant tasks/classical.py does not use, kept as evidence."""
    return classical.denoise_slices(
        fbp_ld_hu, lambda image, sigma: denoise_tv_chambolle(image, weight=strength * sigma)
    )


def head_ct_archive(path: Path) -> Archive:
    """The ingested head CT at `path` (bench/quality.py's and `need demo`'s), ingested first when missing."""
    if not (path / "zarr.json").exists():
        use_local_prefect()
        from flows.ingest import ingest
        from flows.runtime import shared_prefect_api

        with shared_prefect_api():
            ingest(sources=[str(BUNDLED_HEAD_CT)], catalog=str(path), doses=DOSES, seed=0)
    return open_archive(path)


def sigma_estimate(dose: float, data: ValidationSet) -> dict[str, float]:
    """noise_sigma against the true noise of the low-dose FBP. fbp_ld − fbp_nd holds both scans' noise, variance
    σ_ld²·(1 + dose) when noise variance goes as 1/dose, so σ_ld = sd(fbp_ld − fbp_nd) / √(1 + dose)."""
    noise = data.fbp_ld_hu.astype(np.float64) - data.reference_hu
    true_sd = noise.reshape(len(noise), -1).std(axis=1) / np.sqrt(1.0 + dose)
    estimate = np.array([classical.noise_sigma(image) for image in data.fbp_ld_hu.astype(np.float64)])
    on_noise = np.array([classical.noise_sigma(image) for image in noise]) / np.sqrt(1.0 + dose)
    return {
        "dose": dose,
        "sigma_hu": float(estimate.mean()),
        "noise_sd_hu": float(true_sd.mean()),
        "ratio": float(np.mean(estimate / true_sd)),
        "ratio_on_pure_noise": float(np.mean(on_noise / true_sd)),
    }


def grid_rows(
    method: str,
    denoise: Callable[[np.ndarray, float], np.ndarray],
    grid: tuple[float, ...],
    sets: dict[float, ValidationSet],
) -> tuple[list[dict[str, Any]], float]:
    """A quality row per strength and dose on the validation sets, and the seconds per slice denoised."""
    rows, seconds, n = [], 0.0, 0
    for strength in grid:
        for dose, data in sets.items():
            started = time.perf_counter()
            denoised = denoise(data.fbp_ld_hu, strength)
            seconds, n = seconds + time.perf_counter() - started, n + len(denoised)
            rows.append({"strength": strength, **quality_row(method, dose, denoised, data.reference_hu)})
        print(f"{method} strength {strength:g}: {np.mean([r['psnr'] for r in rows[-len(sets) :]]):.3f} dB")
    return rows, seconds / n


def summarise(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Per method and strength the means over doses; the chosen strength (best mean PSNR); per dose the best
    strength of the grid, and the PSNR the chosen strength gives up there (dB)."""
    means: list[dict[str, Any]] = []
    chosen: dict[str, float] = {}
    best_by_dose: dict[str, dict[str, float]] = {}
    transfer_loss: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        strengths = list(dict.fromkeys(row["strength"] for row in mine))
        for strength in strengths:
            at = [row for row in mine if row["strength"] == strength]
            means.append(
                {
                    "method": method,
                    "strength": strength,
                    "psnr_mean": float(np.mean([row["psnr"] for row in at])),
                    "ssim_mean": float(np.mean([row["ssim"] for row in at])),
                }
            )
        chosen[method] = max((m for m in means if m["method"] == method), key=lambda m: m["psnr_mean"])["strength"]
        best_by_dose[method], transfer_loss[method] = {}, {}
        for dose in dict.fromkeys(row["dose"] for row in mine):
            at_dose = [row for row in mine if row["dose"] == dose]
            best = max(at_dose, key=lambda row: row["psnr"])
            at_chosen = next(row for row in at_dose if row["strength"] == chosen[method])
            best_by_dose[method][f"{dose:g}"] = best["strength"]
            transfer_loss[method][f"{dose:g}"] = best["psnr"] - at_chosen["psnr"]
    return means, chosen, best_by_dose, transfer_loss


def heldout_rows(archive: Archive, chosen: dict[str, float], methods: list[str]) -> tuple[list[dict], dict[str, float]]:
    """Quality rows of the LDCT FBP and each method at its chosen strength on the held-out slices' stored scans (as
    baseline_images computes them), and each method's seconds per slice there."""
    from tasks.baselines import RAMP, low_dose_fbp, read_line_integrals
    from tasks.evaluation import read_slices

    slices = list(HEAD_CT_SPLIT.heldout)
    reference = read_slices(archive, "fbp_nd", slices)
    rows, seconds = [], dict.fromkeys(methods, 0.0)
    for dose in DOSES:
        fbp_ld = low_dose_fbp(archive, read_line_integrals(archive, dose, slices), RAMP)
        rows.append(quality_row("fbp_ld", dose, fbp_ld, reference))
        for method in methods:
            started = time.perf_counter()
            denoised = classical.DENOISERS[method](fbp_ld, chosen[method])
            seconds[method] += time.perf_counter() - started
            rows.append(quality_row(method, dose, denoised, reference))
    return rows, {method: s / (len(DOSES) * len(slices)) for method, s in seconds.items()}


def print_grid(means: list[dict[str, Any]], rows: list[dict[str, Any]], chosen: dict[str, float]) -> None:
    """The validation grid: PSNR per dose, mean PSNR and SSIM, the chosen strength marked."""
    print("\nvalidation PSNR (dB) by dose; mean PSNR and SSIM over doses")
    print(f"{'method':17s} {'strength':>8s} " + " ".join(f"{d:>6g}" for d in DOSES) + "    mean    ssim")
    for mean in means:
        at = {
            row["dose"]: row["psnr"]
            for row in rows
            if (row["method"], row["strength"]) == (mean["method"], mean["strength"])
        }
        mark = " *" if chosen.get(mean["method"]) == mean["strength"] else ""
        print(
            f"{mean['method']:17s} {mean['strength']:8g} "
            + " ".join(f"{at[d]:6.2f}" for d in DOSES)
            + f"  {mean['psnr_mean']:6.3f}  {mean['ssim_mean']:.4f}{mark}"
        )


def main() -> None:
    """Simulate the validation sets, run each grid, choose, score the held-out slices, write the result file."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path("outputs/bench_quality/head_ct.zarr"))
    parser.add_argument("--methods", default=",".join(classical.classical_methods()), help="comma separated")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/classical.json)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    started = time.perf_counter()
    archive = head_ct_archive(args.archive)
    validation = HEAD_CT_SPLIT.validation
    sets = {dose: simulate_validation_set(archive, validation, dose) for dose in DOSES}
    rows = [
        {"strength": None, **quality_row("fbp_ld", dose, data.fbp_ld_hu, data.reference_hu)}
        for dose, data in sets.items()
    ]
    grids: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], tuple[float, ...]]] = {
        method: (classical.DENOISERS[method], GRIDS[method]) for method in methods
    }
    if "tv" in methods:
        grids[TV_LINEAR] = (tv_weight_linear, TV_LINEAR_GRID)
    s_per_slice = {}
    for method, (denoise, grid) in grids.items():
        method_rows, s_per_slice[method] = grid_rows(method, denoise, grid, sets)
        rows += method_rows
    means, chosen, best_by_dose, transfer_loss = summarise([row for row in rows if row["method"] != "fbp_ld"])
    heldout, heldout_s_per_slice = heldout_rows(archive, chosen, methods)
    total_s = time.perf_counter() - started
    write_result(
        "classical",
        rows,
        machine=machine_info("cpu"),
        path=args.out,
        table=False,
        criterion="best mean PSNR over the validation slices and doses",
        chosen={method: chosen[method] for method in methods},
        rejected={TV_LINEAR: chosen.get(TV_LINEAR)},
        grid_means=means,
        best_strength_by_dose=best_by_dose,
        transfer_loss_db=transfer_loss,
        sigma_estimate=[sigma_estimate(dose, data) for dose, data in sets.items()],
        validation_slices=list(validation),
        doses=list(DOSES),
        validation_noise="simulate_validation_set: fresh noise, stream apart from the archive's stored scans",
        heldout_slices="45-64",
        heldout=heldout,
        reference="normal-dose FBP (fbp_nd)",
        s_per_slice=s_per_slice,
        heldout_s_per_slice=heldout_s_per_slice,
        settings={
            "domain": f"HU / {classical.HU_SCALE:g}",
            "nlm": f"h = strength·σ, sigma = σ, patch_size {classical.NLM_PATCH_SIZE}, "
            f"patch_distance {classical.NLM_PATCH_DISTANCE}, fast_mode",
            "tv": "denoise_tv_chambolle, weight = strength·σ² (σ in HU/1000)",
            "bm3d": "sigma_psd = strength·σ, BM3DProfileLC",
        },
        total_s=round(total_s, 1),
    )
    print_grid(means, rows, chosen)
    print("\nheld-out slices 45-64, at the chosen strengths")
    print(format_quality_table(heldout))
    print(f"\nchosen: {chosen}; total {total_s:.0f} s")


if __name__ == "__main__":
    main()

"""Physics benchmark: CT-number accuracy, 1/sqrt(dose) noise law and FBP speed -> bench/results/physics.json.

Phantom: a 200 mm water cylinder (0 HU) with +1000 HU and -500 HU inserts in air, at 256^2 (0.957 mm)
and 512^2 (0.5 mm), geometry FanBeamGeometry.for_image. Noise: FBP noise std in central water, taken
pixel-wise across independent realisations (so phantom structure does not count), at doses 1, 0.25, 0.1; the
realisations are the "slices" of one need_core.physics.simulate_scan (each slice draws its own noise).
Speed: FBP of a batch of slices with the chosen backend, best of --repeats, seconds per slice.

    python bench/physics.py                                                   # writes bench/results/physics.json
    python bench/physics.py --realisations 2 --repeats 1 --batch 1 --out /tmp/physics_smoke.json   # smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from need_core.physics import (
    NORMAL_DOSE,
    FanBeamGeometry,
    PhysicsSettings,
    attenuation_from_hu,
    fbp,
    fbp_hu,
    forward_project,
    simulate_scan,
    water_cylinder_phantom,
)
from need_core.physics.filtered_backprojection import resolve_fbp_backend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/X.py` puts only bench/ on the path

from bench.common import best_time, machine_info, write_result  # noqa: E402 (needs the repo root, added above)

SIZES = {256: 0.957, 512: 0.5}  # image size -> pixel spacing (mm); both fields of view hold 200 mm
DOSES = (NORMAL_DOSE, 0.25, 0.1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="auto", help="FBP backend: auto, rebin, torch or astra-cuda")
    parser.add_argument("--batch", type=int, default=4, help="slices per FBP call in the speed test")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (the fastest counts)")
    parser.add_argument("--realisations", type=int, default=6, help="noise realisations per dose")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/physics.json)")
    return parser.parse_args()


def ct_number_rows(backend: str) -> list[dict]:
    """ROI mean errors (HU) of the noise-free FBP of the cylinder phantom at each size."""
    rows = []
    for size, spacing in SIZES.items():
        geometry = FanBeamGeometry.for_image((size, size), spacing)
        phantom = water_cylinder_phantom((size, size), spacing)
        line_integrals = forward_project(attenuation_from_hu(phantom.image_hu, PhysicsSettings()), geometry)
        image_hu = fbp_hu(line_integrals, geometry, backend=backend)
        row = {"case": "ct_number", "size": size, "backend": backend}
        for name, (mask, true_hu) in phantom.rois.items():
            row[f"{name}_error_hu"] = float(image_hu[mask].mean() - true_hu)
        rows.append(row)
    return rows


def noise_rows(backend: str, realisations: int, seed: int) -> list[dict]:
    """FBP noise std (HU) in central water per dose, and its ratio to the 1/sqrt(dose) law (256^2)."""
    size, spacing = 256, SIZES[256]
    geometry = FanBeamGeometry.for_image((size, size), spacing)
    phantom = water_cylinder_phantom((size, size), spacing)
    realisations_as_slices = np.repeat(phantom.image_hu[None], realisations, axis=0)  # one noise draw per "slice"
    scan = simulate_scan(
        realisations_as_slices, geometry, PhysicsSettings(), DOSES, seed=seed, slice_indices=range(realisations)
    )
    centre = np.hypot(*np.meshgrid(np.arange(size) - 0.5 * (size - 1), np.arange(size) - 0.5 * (size - 1)))
    roi = centre * spacing < 30.0  # water only: the inserts sit 50 mm off centre
    std_by_dose = {dose: float(scan.fbp(dose, backend=backend).std(axis=0, ddof=1)[roi].mean()) for dose in DOSES}
    rows = []
    for dose in DOSES:
        expected = 1.0 / np.sqrt(dose)
        measured = std_by_dose[dose] / std_by_dose[NORMAL_DOSE]
        rows.append(
            {
                "case": "noise",
                "size": size,
                "backend": backend,
                "dose": dose,
                "noise_std_hu": std_by_dose[dose],
                "ratio_to_full_dose": measured,
                "expected_ratio": float(expected),
                "relative_error": float(abs(measured / expected - 1.0)),
            }
        )
    return rows


def speed_rows(backend: str, batch: int, repeats: int) -> list[dict]:
    """Seconds per slice of FBP on a batch of noisy slices, after one warm-up call (tables cached)."""
    rows = []
    rng = np.random.default_rng(0)
    for size, spacing in SIZES.items():
        geometry = FanBeamGeometry.for_image((size, size), spacing)
        phantom = water_cylinder_phantom((size, size), spacing)
        mu = attenuation_from_hu(phantom.image_hu, PhysicsSettings())
        clean = forward_project(mu, geometry)
        sinograms = np.stack([clean + rng.normal(0, 0.01, clean.shape).astype(np.float32) for _ in range(batch)])
        fbp(sinograms[:1], geometry, backend=backend)
        seconds = best_time(lambda s=sinograms, g=geometry: fbp(s, g, backend=backend), repeats)
        projection_s = best_time(lambda m=mu, g=geometry: forward_project(m, g), repeats)
        rows.append(
            {
                "case": "speed",
                "size": size,
                "backend": backend,
                "batch": batch,
                "s_per_slice": seconds / batch,
                "forward_project_s_per_slice": projection_s,
            }
        )
    return rows


def main() -> None:
    args = parse_args()
    backend = resolve_fbp_backend(args.backend)
    ct_rows = ct_number_rows(backend)
    noise = noise_rows(backend, args.realisations, args.seed)
    speed = speed_rows(backend, args.batch, args.repeats)
    speed_by_size = {row["size"]: row["s_per_slice"] for row in speed}
    write_result(
        "physics",
        ct_rows + noise + speed,
        machine=machine_info("cuda" if backend == "astra-cuda" else "cpu"),
        backend=backend,
        water_hu_error=max(abs(row["water_error_hu"]) for row in ct_rows),
        insert_hu_error=max(
            max(abs(row["dense_insert_error_hu"]), abs(row["light_insert_error_hu"])) for row in ct_rows
        ),
        noise_scaling_error=max(row["relative_error"] for row in noise),
        fbp_s_per_slice_256=speed_by_size[256],
        fbp_s_per_slice_512=speed_by_size[512],
        path=args.out,
    )


if __name__ == "__main__":
    main()

"""Baseline tasks that need no trained model: filtered back-projection of the stored low-dose scans."""
from __future__ import annotations

import numpy as np
from prefect import task

from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, transmission_to_line_integrals
from need_core.reporting import quality_row
from storage.archive import open_archive

FBP_BASELINES = {"fbp_ld": "ram-lak", "fbp_hann": "hann"}


@task(name="fbp-baselines", retries=1, task_run_name="fbp baselines dose {dose}")
def fbp_baseline_rows(archive_path: str, dose: float, slices: list[int]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Reconstruct the chosen slices' low-dose scans with each FBP filter; return quality rows and the images."""
    archive = open_archive(archive_path)
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    reference = np.stack([archive.read("fbp_nd", s, s + 1)[0] for s in slices])
    line_integrals = transmission_to_line_integrals(
        np.stack([archive.read("proj_ld", s, s + 1, dose=dose)[0] for s in slices])
    )
    rows, images = [], {"reference": reference}
    for method, filter_name in FBP_BASELINES.items():
        images[method] = fbp_hu(line_integrals, geometry, physics, filter=filter_name)
        rows.append(quality_row(method, dose, images[method], reference))
    return rows, images

"""Baseline tasks: filtered back-projection of the stored low-dose scans, and the supervised RED-CNN applied to it."""
from __future__ import annotations

import numpy as np
from prefect import task

from need_core import redcnn
from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, transmission_to_line_integrals
from need_core.reporting import quality_row
from storage.archive import Archive, open_archive
from storage.checkpoints import load_checkpoint

FBP_BASELINES = {"fbp_ld": "ram-lak", "fbp_hann": "hann"}


def read_scans(archive: Archive, dose: float, slices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The chosen slices' normal-dose reference images and low-dose post-log line integrals at `dose`."""
    reference = np.stack([archive.read("fbp_nd", s, s + 1)[0] for s in slices])
    line_integrals = transmission_to_line_integrals(
        np.stack([archive.read("proj_ld", s, s + 1, dose=dose)[0] for s in slices])
    )
    return reference, line_integrals


@task(name="fbp-baselines", retries=1, task_run_name="fbp baselines dose {dose}")
def fbp_baseline_rows(archive_path: str, dose: float, slices: list[int]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Reconstruct the chosen slices' low-dose scans with each FBP filter; return quality rows and the images."""
    archive = open_archive(archive_path)
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    reference, line_integrals = read_scans(archive, dose, slices)
    rows, images = [], {"reference": reference}
    for method, filter_name in FBP_BASELINES.items():
        images[method] = fbp_hu(line_integrals, geometry, physics, filter=filter_name)
        rows.append(quality_row(method, dose, images[method], reference))
    return rows, images


@task(name="redcnn-baseline", retries=1, task_run_name="redcnn dose {dose}")
def redcnn_rows(
    archive_path: str,
    dose: float,
    slices: list[int],
    checkpoint: str,
    device: str = "auto",
    batch_size: int = 4,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Denoise the ramp FBP of the chosen slices' low-dose scans with a RED-CNN checkpoint; return its quality row
    (method named after the checkpoint's training dose, e.g. `redcnn_25`) and the images (reference, fbp_ld, it)."""
    blob = load_checkpoint(checkpoint, redcnn.CHECKPOINT_KIND, map_location="cpu")
    model = redcnn.model_from_checkpoint(blob, device=device)
    method = redcnn.method_name(redcnn.TrainSettings.from_dict(blob["settings"]))
    archive = open_archive(archive_path)
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    reference, line_integrals = read_scans(archive, dose, slices)
    fbp_ld = fbp_hu(line_integrals, geometry, physics, filter=FBP_BASELINES["fbp_ld"])
    denoised = redcnn.denoise_images(model, fbp_ld, batch_size=batch_size, device=device)
    images = {"reference": reference, "fbp_ld": fbp_ld, method: denoised}
    return [quality_row(method, dose, denoised, reference)], images

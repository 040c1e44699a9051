"""Baselines scored beside NEED on the same slices and reference: filtered back-projection with a Hann filter, the
classical denoisers of the low-dose FBP (non-local means, total variation, BM3D when installed: tasks/classical.py),
the supervised RED-CNN on the low-dose FBP, and DGDiff alone on the low-dose FBP (no SPDiff)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from prefect import task

from need_core import dgdiff, redcnn
from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, transmission_to_line_integrals
from need_core.random_streams import DGDIFF_STAGE, reconstruction_stream
from need_core.reporting import quality_row
from storage.archive import Archive, open_archive
from storage.checkpoints import load_checkpoint
from tasks.classical import classical_baselines
from tasks.evaluation import read_slices

RAMP, HANN = "ram-lak", "hann"
DGDIFF_ALONE = "dgdiff_only"


def read_line_integrals(archive: Archive, dose: float, slices: list[int]) -> np.ndarray:
    """The chosen slices' low-dose post-log line integrals at `dose`."""
    return transmission_to_line_integrals(read_slices(archive, "proj_ld", slices, dose=dose))


def low_dose_fbp(archive: Archive, line_integrals: np.ndarray, filter_name: str) -> np.ndarray:
    """FBP in HU of low-dose line integrals with the archive's geometry and physics."""
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    return fbp_hu(line_integrals, geometry, physics, filter=filter_name)


def redcnn_images(checkpoint: str, fbp_ld: np.ndarray, device: str, batch_size: int = 4) -> tuple[str, np.ndarray]:
    """RED-CNN applied to low-dose FBP images; returns its method name (after its training dose, e.g. `redcnn_25`)."""
    blob = load_checkpoint(checkpoint, redcnn.CHECKPOINT_KIND, map_location="cpu")
    model = redcnn.load_model(blob, device=device)
    method = redcnn.method_name(redcnn.TrainSettings.from_dict(blob["settings"]))
    return method, redcnn.denoise_images(model, fbp_ld, batch_size=batch_size, device=device)


def dgdiff_alone_images(
    checkpoint: str, fbp_ld: np.ndarray, slices: list[int], device: str, seed: int, stream: Sequence[int]
) -> np.ndarray:
    """DGDiff refining the low-dose FBP itself (x_init = x_LD). std(x_init − x_LD) would be 0 and start sampling at
    step 1, so the start step is matched to the image's own noise level (`dgdiff.estimate_image_noise`) instead."""
    model = dgdiff.load_model(load_checkpoint(checkpoint, dgdiff.CHECKPOINT_KIND), device=device)
    sigma = dgdiff.estimate_image_noise(dgdiff.hu_to_unit(torch.from_numpy(np.asarray(fbp_ld, np.float32)), "x_ld"))
    return dgdiff.refine(
        model.network,
        fbp_ld,
        fbp_ld,
        model.schedule,
        seed=seed,
        slice_ids=slices,
        stream=stream,
        device=device,
        sigma=sigma.numpy(),
        max_step=model.max_start_step,
    ).images_hu


@task(name="baselines", retries=1, task_run_name="baselines dose {dose}")
def baseline_images(
    archive_path: str,
    dose: float,
    slices: list[int],
    redcnn_checkpoint: str | None,
    dgdiff_checkpoint: str | None,
    device: str = "auto",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Images (n, H, W) in HU of every baseline the checkpoints allow at `dose`: `fbp_hann` and the classical
    denoisers of the low-dose ramp FBP (`nlm`, `tv`, and `bm3d` when its package is installed) always, RED-CNN and
    DGDiff alone when their checkpoint is given."""
    archive = open_archive(archive_path)
    line_integrals = read_line_integrals(archive, dose, slices)
    fbp_ld = low_dose_fbp(archive, line_integrals, RAMP)
    images = {"fbp_hann": low_dose_fbp(archive, line_integrals, HANN), **classical_baselines(fbp_ld)}
    if redcnn_checkpoint:
        method, denoised = redcnn_images(redcnn_checkpoint, fbp_ld, device)
        images[method] = denoised
    if dgdiff_checkpoint:
        stream = reconstruction_stream(archive.settings_hash, dose, DGDIFF_STAGE)
        images[DGDIFF_ALONE] = dgdiff_alone_images(dgdiff_checkpoint, fbp_ld, slices, device, seed, stream)
    return images


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
    archive = open_archive(archive_path)
    reference = read_slices(archive, "fbp_nd", slices)
    line_integrals = read_line_integrals(archive, dose, slices)
    fbp_ld = low_dose_fbp(archive, line_integrals, RAMP)
    method, denoised = redcnn_images(checkpoint, fbp_ld, device, batch_size)
    images = {"reference": reference, "fbp_ld": fbp_ld, method: denoised}
    return [quality_row(method, dose, denoised, reference)], images

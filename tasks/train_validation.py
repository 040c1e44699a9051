"""Cheap validation during training: a few held-out slices of each validation study, scanned again with fresh noise
by the study's own simulator, run through the model and scored against the normal-dose image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from need_core import dgdiff, redcnn, spdiff
from need_core.metrics import psnr, ssim
from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, simulate_scan, transmission_to_line_integrals
from need_core.training import Trainer
from storage.archive import Archive
from tasks.chunking import SliceChunk
from tasks.train_data import slice_runs

VALIDATION_DOSE = 0.25
DGDIFF_INIT_DOSE = 0.5  # DGDiff validation starts from a less noisy FBP, standing in for SPDiff's output
VALIDATION_STREAM = 0x5EED  # keeps validation noise apart from the archive's own simulated scans


@dataclass
class ValidationSet:
    """Held-out slices with fresh low-dose noise: the normal-dose reference, the noisy inputs and their FBPs."""

    slices: list[int]
    runs: list[SliceChunk]
    reference_hu: np.ndarray
    transmission_ld: list[np.ndarray]
    fbp_ld_hu: np.ndarray
    fbp_init_hu: np.ndarray
    incident_count: float
    geometry: FanBeamGeometry
    physics: PhysicsSettings


def simulate_validation_set(archive: Archive, slices: tuple[int, ...], dose: float = VALIDATION_DOSE) -> ValidationSet:
    """Simulate scans of the validation slices with the archive's simulator in VALIDATION_STREAM: at `dose` (the
    inputs) and at DGDIFF_INIT_DOSE (DGDiff's initial image); noise independent of the archive's `proj_ld`."""
    geometry = FanBeamGeometry.from_dict(archive.settings["geometry"])
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    runs = slice_runs(slices)
    scans = [
        simulate_scan(
            archive.read("image_hu", run.start, run.stop),
            geometry,
            physics,
            [dose, DGDIFF_INIT_DOSE],
            seed=int(archive.settings["seed"]),
            slice_indices=range(run.start, run.stop),
            stream=VALIDATION_STREAM,
        )
        for run in runs
    ]
    return ValidationSet(
        slices=[s for scan in scans for s in scan.slice_indices],
        runs=runs,
        reference_hu=np.concatenate([archive.read("fbp_nd", run.start, run.stop) for run in runs]),
        transmission_ld=[scan.transmission(dose) for scan in scans],
        fbp_ld_hu=np.concatenate([scan.fbp(dose) for scan in scans]),
        fbp_init_hu=np.concatenate([scan.fbp(DGDIFF_INIT_DOSE) for scan in scans]),
        incident_count=physics.incident_count_at(dose),
        geometry=geometry,
        physics=physics,
    )


@dataclass
class Validation:
    """Validation metrics (model output and its input, against the normal-dose image) and one sample slice."""

    metrics: dict[str, float]
    sample: dict[str, np.ndarray]


def score(output_hu: np.ndarray, input_hu: np.ndarray, data: ValidationSet) -> Validation:
    """Mean PSNR/SSIM of the model's output and of its input against the normal-dose reference."""
    middle = len(data.slices) // 2
    metrics = {
        "val_psnr": float(np.mean(psnr(output_hu, data.reference_hu))),
        "val_ssim": float(np.mean(ssim(output_hu, data.reference_hu))),
        "val_psnr_input": float(np.mean(psnr(input_hu, data.reference_hu))),
    }
    sample = {"reference": data.reference_hu[middle], "input": input_hu[middle], "model": output_hu[middle]}
    return Validation(metrics, sample)


def validate_spdiff(model: spdiff.SPDiffModel, data: ValidationSet, device: str) -> Validation:
    """Denoise the validation sinograms, FBP, and score against `fbp_nd`."""
    denoised = [
        spdiff.denoise_volume(
            model, x, data.incident_count, slice_ids=range(run.start, run.stop), device=device
        ).transmission
        for run, x in zip(data.runs, data.transmission_ld, strict=True)
    ]
    output = np.concatenate([fbp_hu(transmission_to_line_integrals(x), data.geometry, data.physics) for x in denoised])
    return score(output, data.fbp_ld_hu, data)


def validate_dgdiff(model: dgdiff.DGDiffModel, data: ValidationSet, device: str) -> Validation:
    """Refine the less noisy FBP guided by the low-dose FBP, and score against `fbp_nd`."""
    refined = dgdiff.refine(
        model.network,
        data.fbp_ld_hu,
        data.fbp_init_hu,
        model.schedule,
        seed=0,
        slice_ids=data.slices,
        device=device,
        max_step=model.max_start_step,
    )
    return score(refined.images_hu, data.fbp_init_hu, data)


def validate_redcnn(model: redcnn.RedCNN, data: ValidationSet, device: str) -> Validation:
    """Denoise the validation slices' low-dose FBP and score against `fbp_nd`."""
    return score(redcnn.denoise_images(model, data.fbp_ld_hu, batch_size=4, device=device), data.fbp_ld_hu, data)


VALIDATORS = {"spdiff": validate_spdiff, "dgdiff": validate_dgdiff, "redcnn": validate_redcnn}


def validate(trainer: Trainer[Any, Any], sets: list[ValidationSet]) -> Validation:
    """Score the trainer's inference model (EMA weights where it keeps them) on each validation study's set; the
    metrics are means over the studies (each weighs the same), the sample is the first set's."""
    model, device = trainer.model(), str(trainer.device)
    results = [VALIDATORS[trainer.kind](model, data, device) for data in sets]
    metrics = {name: float(np.mean([result.metrics[name] for result in results])) for name in results[0].metrics}
    return Validation(metrics, results[0].sample)

"""DGDiff: doubly guided Gaussian diffusion that refines an initial CT image (NEED_SPEC.md §4).

Public entry points: `refine` (guided sampling over slices), `DGDiffTrainer` (training on
normal-dose images, the need_core.training protocol), `build_unet` (network by profile), `DiffusionSchedule`,
and `load_model` (a checkpoint's `DGDiffModel`: network + schedule).
"""

from need_core.dgdiff.hu_window import HU_WINDOW, hu_to_unit, unit_to_hu
from need_core.dgdiff.matching import (
    ENDINGS,
    REFERENCE_GUIDANCE,
    START_NOISE,
    GuidanceSettings,
    estimate_image_noise,
    estimate_noise_sigma,
    ldct_guidance_weight,
    match_noise_step,
    start_step,
)
from need_core.dgdiff.model import CHECKPOINT_KIND, DGDiffModel, load_model
from need_core.dgdiff.network import PROFILES, UNet, UNetSettings, build_unet
from need_core.dgdiff.sampler import Refinement, ddim_sample, guided_sample, refine
from need_core.dgdiff.schedule import DiffusionSchedule, ScheduleSettings
from need_core.dgdiff.training import DGDiffTrainer, TrainSettings, max_reachable_step

__all__ = [
    "CHECKPOINT_KIND",
    "DGDiffModel",
    "HU_WINDOW",
    "ENDINGS",
    "REFERENCE_GUIDANCE",
    "START_NOISE",
    "GuidanceSettings",
    "PROFILES",
    "Refinement",
    "DGDiffTrainer",
    "DiffusionSchedule",
    "ScheduleSettings",
    "TrainSettings",
    "UNet",
    "UNetSettings",
    "build_unet",
    "ddim_sample",
    "estimate_image_noise",
    "estimate_noise_sigma",
    "guided_sample",
    "hu_to_unit",
    "ldct_guidance_weight",
    "load_model",
    "match_noise_step",
    "max_reachable_step",
    "refine",
    "start_step",
    "unit_to_hu",
]

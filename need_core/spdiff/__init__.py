"""SPDiff: shifted-Poisson diffusion on pre-log projections (NEED_SPEC.md §2), with plain numpy/torch arrays."""

from need_core.spdiff.dose_estimation import DoseEstimationError, estimate_dose, estimate_incident_count
from need_core.spdiff.model import CHECKPOINT_KIND, SPDiffModel, SPDiffSettingsError, load_model
from need_core.spdiff.network import NETWORK_PROFILES, NetworkSettings, SPDiffUNet, network_profile
from need_core.spdiff.process import forward_process_sample, reverse_step
from need_core.spdiff.sampler import denoise_volume
from need_core.spdiff.schedule import (
    ScheduleError,
    SPDiffSchedule,
    match_time_step,
    network_evaluations,
    photon_schedule,
)
from need_core.spdiff.training import SPDiffTrainer, TrainSettings
from need_core.spdiff.validation import TransmissionError

__all__ = [
    "CHECKPOINT_KIND",
    "DoseEstimationError",
    "NETWORK_PROFILES",
    "NetworkSettings",
    "SPDiffModel",
    "SPDiffSchedule",
    "SPDiffSettingsError",
    "SPDiffTrainer",
    "SPDiffUNet",
    "ScheduleError",
    "TrainSettings",
    "TransmissionError",
    "denoise_volume",
    "estimate_dose",
    "estimate_incident_count",
    "forward_process_sample",
    "load_model",
    "match_time_step",
    "network_evaluations",
    "network_profile",
    "photon_schedule",
    "reverse_step",
]

"""SPDiff: shifted-Poisson diffusion on pre-log projections (NEED_SPEC.md §2), with plain numpy/torch arrays."""
from need_core.spdiff.dose_estimation import DoseEstimationError, estimate_dose, estimate_incident_count
from need_core.spdiff.model import CHECKPOINT_KIND, SPDiffModel, SPDiffSettingsError, load_model_from_payload
from need_core.spdiff.network import NETWORK_PROFILES, NetworkSettings, SPDiffUNet, network_profile
from need_core.spdiff.process import forward_process_sample, reverse_step
from need_core.spdiff.sampler import denoise_volume
from need_core.spdiff.schedule import (
    NORMAL_DOSE_INCIDENT_COUNT,
    ScheduleError,
    SPDiffSchedule,
    incident_count_for_dose,
    match_time_step,
    network_evaluations,
    photon_schedule,
)
from need_core.spdiff.training import Trainer, TrainingSettings
from need_core.spdiff.validation import TransmissionError

__all__ = [
    "CHECKPOINT_KIND",
    "DoseEstimationError",
    "NETWORK_PROFILES",
    "NORMAL_DOSE_INCIDENT_COUNT",
    "NetworkSettings",
    "SPDiffModel",
    "SPDiffSchedule",
    "SPDiffSettingsError",
    "SPDiffUNet",
    "ScheduleError",
    "Trainer",
    "TrainingSettings",
    "TransmissionError",
    "denoise_volume",
    "estimate_dose",
    "estimate_incident_count",
    "forward_process_sample",
    "incident_count_for_dose",
    "load_model_from_payload",
    "match_time_step",
    "network_evaluations",
    "network_profile",
    "photon_schedule",
    "reverse_step",
]

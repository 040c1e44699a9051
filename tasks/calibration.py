"""Calibration of the sampling settings NEED_SPEC.md §4 leaves open, from normal-dose data only: the validation
slices are scanned again at each dose with fresh noise (tasks.train_validation), and per dose a coordinate search
over SPDiff's ending and DGDiff's guidance keeps the settings with the best validation PSNR among those that leave
no validation slice below its own low-dose FBP (when any does)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from need_core import dgdiff, spdiff
from need_core.dgdiff.sampler import StartStepWarning
from need_core.metrics import psnr, ssim
from need_core.physics import fbp_hu, transmission_to_line_integrals
from need_core.random_streams import DGDIFF_STAGE, SPDIFF_STAGE, reconstruction_stream
from need_core.sampling import REFERENCE_DOSE_SAMPLING, SPDIFF_ENDINGS, DoseSampling
from tasks.train_validation import ValidationSet

CALIBRATION_DOSES = (0.5, 0.25, 0.1, 0.05)
DIVISORS = (1, 2, 5, 10)
SIGMA_SCALES = (1.0, 1.5, 2.0, 3.0)
S2_VALUES = (0.2, 0.4, 0.6, 0.8, 1.0)
S1_CONSTANTS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
"""Besides the reference curve, s1 may be a constant (offset 0 makes s1 = scale at every σ̂); 1.0 switches the LDCT
guidance off."""
SEARCH_PASSES = 2


def coordinate_moves(current: DoseSampling, coordinate: str) -> list[DoseSampling]:
    """Every value of one coordinate (COORDINATES), the others kept from `current`."""
    g = current.guidance
    if coordinate == "spdiff_ending":
        return [replace(current, spdiff_ending=e) for e in SPDIFF_ENDINGS]
    if coordinate == "dgdiff_ending":
        return [replace(current, guidance=replace(g, ending=e)) for e in dgdiff.ENDINGS]
    if coordinate == "sigma_scale":
        return [replace(current, guidance=replace(g, sigma_scale=v)) for v in SIGMA_SCALES]
    if coordinate == "divisor":
        return [replace(current, guidance=replace(g, divisor=d)) for d in DIVISORS]
    if coordinate == "start_noise":
        return [replace(current, guidance=replace(g, start_noise=n)) for n in dgdiff.START_NOISE]
    if coordinate == "s1":
        spec = dgdiff.REFERENCE_GUIDANCE
        curves = [(spec.s1_scale, spec.s1_offset)] + [(c, 0.0) for c in S1_CONSTANTS]
        return [
            replace(current, guidance=replace(g, s1_scale=a, s1_offset=b, s1_sharpness=spec.s1_sharpness))
            for a, b in curves
        ]
    if coordinate == "s2":
        return [replace(current, guidance=replace(g, s2=v)) for v in S2_VALUES]
    raise ValueError(f"unknown coordinate {coordinate!r}")


COORDINATES = ("dgdiff_ending", "spdiff_ending", "s1", "divisor", "sigma_scale", "start_noise", "s2")
"""The search order: the cheap one-shot ending first (when it wins, every later trial costs one evaluation)."""


@dataclass(frozen=True)
class Trial:
    """One scored setting: mean PSNR/SSIM over the validation slices and the worst slice's PSNR gain over its
    low-dose FBP."""

    settings: DoseSampling
    psnr: float
    ssim: float
    min_gain_db: float

    @property
    def rank(self) -> tuple[bool, float]:
        """Never below the input first, then PSNR."""
        return (self.min_gain_db >= 0.0, self.psnr)

    def to_dict(self) -> dict[str, Any]:
        return {**self.settings.to_dict(), "psnr": self.psnr, "ssim": self.ssim, "min_gain_db": self.min_gain_db}


@dataclass
class DoseCalibration:
    """Scores sampling settings at one dose on the validation sets, caching SPDiff's output per ending and every
    trial, with common random numbers: each trial draws the same noise for the same slice."""

    sets: list[ValidationSet]
    spdiff_model: spdiff.SPDiffModel
    dgdiff_model: dgdiff.DGDiffModel
    dose: float
    device: str
    study_keys: list[str]
    seed: int = 0
    trials: dict[DoseSampling, Trial] = field(default_factory=dict)
    _initial: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def reference_hu(self) -> np.ndarray:
        return np.concatenate([data.reference_hu for data in self.sets])

    @property
    def fbp_ld_hu(self) -> np.ndarray:
        return np.concatenate([data.fbp_ld_hu for data in self.sets])

    def initial(self, ending: str) -> list[np.ndarray]:
        """SPDiff -> FBP of each set's scans with this ending (computed once)."""
        if ending not in self._initial:
            images = []
            for index, data in enumerate(self.sets):
                stream = reconstruction_stream(self.study_keys[index], self.dose, SPDIFF_STAGE)
                runs = [
                    spdiff.denoise_volume(
                        self.spdiff_model,
                        x,
                        data.incident_count,
                        batch_size=1,
                        seed=self.seed,
                        slice_ids=range(run.start, run.stop),
                        stream=stream,
                        device=self.device,
                        ending=ending,
                    ).transmission
                    for run, x in zip(data.runs, data.transmission_ld, strict=True)
                ]
                line_integrals = transmission_to_line_integrals(np.concatenate(runs))
                images.append(fbp_hu(line_integrals, data.geometry, data.physics))
            self._initial[ending] = images
        return self._initial[ending]

    def refine(self, settings: DoseSampling) -> np.ndarray:
        """NEED's output on every validation slice with `settings`."""
        model, outputs = self.dgdiff_model, []
        with warnings.catch_warnings():  # trials that match above the trained steps start at the highest one
            warnings.simplefilter("ignore", StartStepWarning)
            for index, (data, x_init) in enumerate(zip(self.sets, self.initial(settings.spdiff_ending), strict=True)):
                outputs.append(
                    dgdiff.refine(
                        model.network,
                        data.fbp_ld_hu,
                        x_init,
                        model.schedule,
                        guidance=settings.guidance,
                        batch_size=1,
                        seed=self.seed,
                        slice_ids=data.slices,
                        stream=reconstruction_stream(self.study_keys[index], self.dose, DGDIFF_STAGE),
                        device=self.device,
                        max_step=model.max_start_step,
                    ).images_hu
                )
        return np.concatenate(outputs)

    def score(self, settings: DoseSampling) -> Trial:
        """The trial of `settings` (scored once)."""
        if settings not in self.trials:
            output, reference = self.refine(settings), self.reference_hu
            gains = np.asarray(psnr(output, reference)) - np.asarray(psnr(self.fbp_ld_hu, reference))
            self.trials[settings] = Trial(
                settings,
                float(np.mean(psnr(output, reference))),
                float(np.mean(ssim(output, reference))),
                float(gains.min()),
            )
        return self.trials[settings]

    def input_scores(self) -> dict[str, float]:
        """Validation PSNR of the stages' own images: the low-dose FBP and SPDiff -> FBP with each ending."""
        reference = self.reference_hu
        scores = {"fbp_ld": float(np.mean(psnr(self.fbp_ld_hu, reference)))}
        for ending in SPDIFF_ENDINGS:
            scores[f"spdiff_fbp_{ending}"] = float(np.mean(psnr(np.concatenate(self.initial(ending)), reference)))
        return scores

    def search(self, passes: int = SEARCH_PASSES, tick: Callable[[], None] = lambda: None) -> Trial:
        """Coordinate search from the reference settings: each coordinate in turn takes its best value, `passes`
        times over (or until nothing changes); `tick` is called after each newly scored trial."""
        best = self.score(REFERENCE_DOSE_SAMPLING)
        tick()
        for _ in range(passes):
            start = best.settings
            for coordinate in COORDINATES:
                for candidate in coordinate_moves(best.settings, coordinate):
                    known = candidate in self.trials
                    trial = self.score(candidate)
                    if not known:
                        tick()
                    if trial.rank > best.rank:
                        best = trial
            if best.settings == start:
                break
        return best


def search_size(passes: int = SEARCH_PASSES) -> int:
    """An upper bound on the trials one dose's search scores (for a progress bar)."""
    per_pass = sum(len(coordinate_moves(REFERENCE_DOSE_SAMPLING, coordinate)) for coordinate in COORDINATES)
    return 1 + passes * per_pass


def s2_curve(calibration: DoseCalibration, best: DoseSampling) -> list[dict[str, float]]:
    """Validation PSNR against s2 with the other chosen settings (the curve the calibration plot shows)."""
    return [
        {"s2": candidate.guidance.s2, "psnr": calibration.score(candidate).psnr}
        for candidate in coordinate_moves(best, "s2")
    ]


def trial_rows(trials: Iterable[Trial]) -> list[dict[str, Any]]:
    """Every scored trial as a JSON-able row, best first."""
    return [trial.to_dict() for trial in sorted(trials, key=lambda t: t.rank, reverse=True)]

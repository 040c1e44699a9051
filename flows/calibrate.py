"""Calibrate flow: tune NEED's sampling settings for one pair of models on low-dose scans simulated from the
validation slices' normal-dose data (never the stored low-dose scans, never evaluation or test slices), and store the
result as a named sampling profile that `need reconstruct` then uses by default.

    need calibrate CATALOG [--spdiff REF] [--dgdiff REF] [--doses 0.5,0.25,0.1,0.05] [--out PROFILE.json]

The profile is written as JSON (beside the catalog unless `--out`), and with tracking it is logged in an MLflow run
(profile, every trial, the calibration plot) and tagged on the registered DGDiff version of that checkpoint
(`need.sampling.<spdiff digest>`), where `need reconstruct` finds it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from tqdm.auto import tqdm

from flows.reconstruct import chosen_model
from flows.reports import calibrate_run_name
from flows.sampling import default_profile_path, sampling_tag
from flows.tracking.registry import REGISTERED_NAMES, registered_version
from flows.tracking.store import Tracker, default_experiment, open_tracker
from need_core.physics.validation import validate_doses
from need_core.sampling import REFERENCE_DOSE_SAMPLING, SamplingProfile
from storage.catalog import open_catalog
from storage.ledger import slice_ranges
from tasks.calibration import CALIBRATION_DOSES, DoseCalibration, s2_curve, search_size, trial_rows
from tasks.calibration_plot import calibration_plot
from tasks.models import ResolvedModel, load_dgdiff, load_spdiff, worker_device
from tasks.train_data import TrainingPlan, plan_training
from tasks.train_validation import simulate_validation_set


def calibration_plan(catalog: str, studies: list[str] | None, validation_slices: list[int] | None) -> TrainingPlan:
    """The validation studies (a patient-level split's "val" studies) or slices (one study: the bundled head CT's
    validation slices, else `validation_slices` or its middle slices) that training validates on: never test studies
    or evaluation slices. Their normal-dose data are all calibration reads."""
    return plan_training(open_catalog(catalog), "dgdiff", studies, None, validation_slices)


def profile_name(spdiff: ResolvedModel, dgdiff: ResolvedModel) -> str:
    """`calibrated <spdiff8>/<dgdiff8>`: the profile's name, after the checkpoints it belongs to."""
    return f"calibrated {spdiff.identity[:8]}/{dgdiff.identity[:8]}"


@flow(name="calibrate", flow_run_name=calibrate_run_name)
def calibrate(
    catalog: str,
    spdiff: str | None = None,
    dgdiff: str | None = None,
    doses: list[float] | None = None,
    studies: list[str] | None = None,
    validation_slices: list[int] | None = None,
    device: str = "auto",
    seed: int = 0,
    out: str | None = None,
    tracking: bool = True,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Calibrate the sampling settings at each dose (default CALIBRATION_DOSES) on the validation data of
    `calibration_plan`; return the profile's path, the chosen settings and the validation scores (reference settings
    against calibrated ones)."""
    logger = get_run_logger()
    doses = validate_doses(doses if doses is not None else list(CALIBRATION_DOSES))
    tracker = open_tracker(tracking, experiment or default_experiment(catalog))
    models = chosen_model(spdiff, "spdiff"), chosen_model(dgdiff, "dgdiff")
    plan = calibration_plan(catalog, studies, validation_slices)
    if not plan.heldout:
        logger.warning("the calibration slices are training slices too: validation scores will be optimistic")
    target = Path(out) if out else default_profile_path(catalog, *models)
    slices = {part.row.study: slice_ranges(list(part.slices)) for part in plan.validation}
    logger.info("calibration slices (normal-dose data only): %s", "; ".join(f"{k} {v}" for k, v in slices.items()))
    run_device = worker_device(device)
    spdiff_model, dgdiff_model = load_spdiff(models[0], run_device), load_dgdiff(models[1], run_device)
    started = time.monotonic()
    chosen, report = [], []
    with tqdm(total=search_size() * len(doses), desc="calibrate", unit="trial") as bar:
        for dose in doses:
            calibration = DoseCalibration(
                sets=[simulate_validation_set(part.archive, part.slices, dose) for part in plan.validation],
                spdiff_model=spdiff_model,
                dgdiff_model=dgdiff_model,
                dose=dose,
                device=run_device,
                seed=seed,
                study_keys=[part.row.study for part in plan.validation],
            )
            best = calibration.search(tick=lambda: bar.update(1))
            reference = calibration.score(REFERENCE_DOSE_SAMPLING)  # scored first by the search: cached
            chosen.append(best.settings)
            report.append(
                {
                    "dose": dose,
                    "scores": {**calibration.input_scores(), "reference": reference.psnr, "calibrated": best.psnr},
                    "ssim": {"reference": reference.ssim, "calibrated": best.ssim},
                    "min_gain_db": {"reference": reference.min_gain_db, "calibrated": best.min_gain_db},
                    "s2_curve": s2_curve(calibration, best.settings),
                    "trials": trial_rows(calibration.trials.values()),
                }
            )
            logger.info(
                "dose %g: validation PSNR %.2f dB with the reference settings, %.2f calibrated (%s)",
                dose,
                reference.psnr,
                best.psnr,
                best.settings.to_dict(),
            )
    summary = {
        "slices": slices,
        "doses": doses,
        "metric": "mean validation PSNR; settings that leave a slice below its LDCT FBP only when all do",
        "validation_psnr": {
            f"{e['dose']:g}": {k: round(e["scores"][k], 3) for k in ("reference", "calibrated")} for e in report
        },
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
    }
    profile = SamplingProfile(
        name=profile_name(*models),
        doses=tuple(doses),
        settings=tuple(chosen),
        models=tuple(sorted((m.kind, m.identity) for m in models)),
        calibration=summary,
    )
    files = [profile.save(target), write_trials(report, target)]
    files.append(calibration_plot(report, target.with_suffix(".png"), profile.describe()))
    logger.info("sampling profile %s written to %s (trials and plot beside it)", profile.describe(), target)
    logged = log_calibration(tracker, profile, models, files) if tracker is not None else {}
    return {"profile": str(target), "name": profile.name, "doses": report, **logged}


def write_trials(report: list[dict[str, Any]], profile_path: Path) -> Path:
    """Every dose's scores, s2 curve and trials, beside the profile (`<profile>_trials.json`)."""
    target = profile_path.with_name(f"{profile_path.stem}_trials.json")
    target.write_text(json.dumps(report, indent=1) + "\n")
    return target


def log_calibration(
    tracker: Tracker, profile: SamplingProfile, models: tuple[ResolvedModel, ResolvedModel], files: list[Path]
) -> dict[str, Any]:
    """One MLflow run with the profile, its trials and plot; the profile tagged on the registered DGDiff version of
    this checkpoint (when it is registered), for `need reconstruct` to find."""
    spdiff, dgdiff = models
    params = {f"{m.kind}_model": m.registered or m.reference for m in models}
    params.update({f"{m.kind}_identity": m.identity for m in models})
    with tracker.run(f"calibrate {profile.name}", "calibrate") as run_id:
        tracker.log_params(run_id, {**params, "profile": profile.name, "slices": profile.calibration["slices"]})
        for dose, scores in profile.calibration["validation_psnr"].items():
            label = dose.replace(".", "_")
            tracker.log_metrics(run_id, {f"val_psnr_{key}_{label}": value for key, value in scores.items()})
        for path in files:
            tracker.log_artifact(run_id, path)
    version = registered_version(tracker, "dgdiff", dgdiff.identity)
    if version is not None:
        name, number = version.split("/")
        tracker.client.set_model_version_tag(name, number, sampling_tag(spdiff), json.dumps(profile.to_dict()))
    return {"run_id": run_id, "tagged_version": version or f"none ({REGISTERED_NAMES['dgdiff']} lacks this file)"}

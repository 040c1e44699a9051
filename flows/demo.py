"""The one-command demo on the bundled real head CT: ingest, simulate four doses, reconstruct the held-out slices
with NEED through the reconstruct flow, score NEED and every baseline against the normal-dose image, log it all to
MLflow, write comparison panels and print the dose × method table.

    need demo              # shipped `cpu` weights (weights/MODEL_CARD.md), ~10 min on 2 CPU cores
    need demo --retrain    # train SPDiff, DGDiff and RED-CNN from scratch first with `need train` (about an hour)

With tracking, the models it uses are registered MLflow models afterwards (the shipped files by
`register_shipped_models`, retrained ones by `need train`), each `@champion` where its model had none: the
deployments of prefect.yaml (`models:/need-spdiff@champion`) then run as shipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.ingest import DEFAULT_DOSES, ingest
from flows.models import SHIPPED_FILES, file_digest, shipped_weights_dir
from flows.reconstruct import reconstruct
from flows.registration import register_shipped_models
from flows.reports import demo_run_name
from flows.tracking.runs import log_quality_runs
from flows.tracking.store import open_tracker
from flows.train import train
from need_core.display import comparison_panel, metric_vs_dose_plot
from need_core.physics.validation import validate_doses
from need_core.reporting import format_quality_table
from storage.catalog import migrate_archive, open_catalog
from storage.readers import BUNDLED_HEAD_CT
from storage.readers.series import discover_series
from storage.splits import HEAD_CT_SPLIT
from tasks.baselines import baseline_images
from tasks.evaluation import DoseEvaluation, evaluate_dose, write_rows_csv

PANEL_SLICE = 55  # a held-out slice through the brain
DEMO_CHUNK_SLICES = 5  # the chunk grid's cells 45-49 … 60-64 are exactly the held-out slices: nothing computed beyond
DEMO_EXPERIMENT = "need-demo"
SHIPPED_WEIGHTS = shipped_weights_dir()  # weights/ of the checkout, or of an installed package's data folder


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo: its shipped file and the `need train` arguments that made it."""

    kind: str
    filename: str
    steps: int
    train_dose: float | None = None


DEMO_MODELS = (
    DemoModel("spdiff", SHIPPED_FILES["spdiff"], steps=16000),
    DemoModel("dgdiff", SHIPPED_FILES["dgdiff"], steps=3000),
    DemoModel("redcnn", SHIPPED_FILES["redcnn"], steps=1500, train_dose=0.25),
)
"""The `cpu`-profile models of the demo, trained with `need train ARCHIVE --model KIND --profile cpu --steps N --seed 0`
(and `--train-dose 0.25` for RED-CNN) on the head CT's training slices; weights/MODEL_CARD.md records each run."""


class MissingWeights(FileNotFoundError):
    """A shipped checkpoint of the demo is absent."""


def shipped_models(folder: Path = SHIPPED_WEIGHTS) -> dict[str, str]:
    """Paths of the shipped checkpoints by model kind; a missing file names `need demo --retrain` as the way out."""
    paths = {model.kind: folder / model.filename for model in DEMO_MODELS}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise MissingWeights(
            f"shipped weights not found: {', '.join(missing)}; run `need demo --retrain` to train "
            "them (about an hour on 2 CPU cores)"
        )
    return {kind: str(path) for kind, path in paths.items()}


def retrain_models(archive: str, folder: Path, device: str, seed: int, tracking: bool) -> dict[str, str]:
    """Train every demo model from scratch with the train flow (resuming a killed retrain), into `folder`."""
    paths = {}
    for model in DEMO_MODELS:
        path = folder / model.filename
        train(
            catalog=archive,
            model=model.kind,
            profile="cpu",
            steps=model.steps,
            resume=path.exists(),
            checkpoint=str(path),
            device=device,
            seed=seed,
            train_dose=model.train_dose,
            tracking=tracking,
            experiment=DEMO_EXPERIMENT,
        )
        paths[model.kind] = str(path)
    return paths


def model_params(models: dict[str, str], registered: dict[str, str]) -> dict[str, str]:
    """`<kind>_model` (the registered version, else the file) and `<kind>_identity` (its digest) of each model, as
    the reconstruct runs log them, so the demo's method runs name their models alike."""
    params = {}
    for kind, path in models.items():
        params[f"{kind}_model"] = registered.get(kind, path)
        params[f"{kind}_identity"] = file_digest(Path(path))
    return params


def migrate_earlier_demo(path: Path) -> None:
    """Turn a demo archive written before catalogs (schema 1) into a one-study catalog keyed by the head CT's
    series key, so the rerun finds its study and computes nothing twice."""
    if path.exists() and open_catalog(path).legacy:
        (series,) = discover_series([BUNDLED_HEAD_CT]).series
        migrate_archive(path, series.key)
        get_run_logger().info("migrated the earlier demo archive %s to a one-study catalog", path)


def score_and_plot(
    archive: str, slices: list[int], baselines: dict[float, dict[str, Any]], out: Path
) -> list[DoseEvaluation]:
    """Score NEED and the baselines on `slices` at each dose of `baselines`, and write what the demo shows in `out`:
    a comparison panel per dose, metric_vs_dose.png, per_slice_metrics.csv and metrics.json."""
    evaluations = [
        evaluate_dose(archive, dose, slices, baselines=images, panel_slices=[PANEL_SLICE])
        for dose, images in baselines.items()
    ]
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    for evaluation in evaluations:
        images = evaluation.panels[PANEL_SLICE]
        comparison_panel(
            images["reference"],
            {m: v for m, v in images.items() if m != "reference"},
            out / f"panel_dose{evaluation.dose:g}.png",
            title=f"head CT slice {PANEL_SLICE}, dose {evaluation.dose:g} (reference: normal-dose FBP)",
        )
    metric_vs_dose_plot(rows, out / "metric_vs_dose.png")
    write_rows_csv([row for evaluation in evaluations for row in evaluation.per_slice], out / "per_slice_metrics.csv")
    (out / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
    return evaluations


@flow(name="demo", flow_run_name=demo_run_name, task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count()))
def demo(
    workdir: str = "outputs/demo",
    doses: tuple[float, ...] = DEFAULT_DOSES,
    seed: int = 0,
    retrain: bool = False,
    device: str = "auto",
    tracking: bool = True,
    weights: str | None = None,
) -> list[dict[str, Any]]:
    """Run NEED and the baselines on the head CT's held-out slices at each dose; return the quality rows.

    `weights`: a folder holding the DEMO_MODELS files (default: the shipped ones); ignored with `retrain`."""
    logger = get_run_logger()
    doses = validate_doses(doses)
    out = Path(workdir)
    archive = str(out / "head_ct.zarr")
    tracker = open_tracker(tracking, DEMO_EXPERIMENT)  # an unusable tracking store fails here, before any compute
    folder = Path(weights) if weights else SHIPPED_WEIGHTS
    models = shipped_models(folder) if not retrain else None
    registered: dict[str, str] = {}
    if tracker and not retrain:
        for kind, registration in register_shipped_models(tracker, folder).items():
            logger.info("model %s", registration.describe())
            registered[kind] = f"{registration.name}/{registration.version}"
    migrate_earlier_demo(Path(archive))
    ingest(sources=[str(BUNDLED_HEAD_CT)], catalog=archive, doses=doses, seed=seed)
    if retrain:
        models = retrain_models(archive, out / "models", device, seed, tracking)
    heldout = list(HEAD_CT_SPLIT.heldout)
    baselines = {
        dose: baseline_images.submit(archive, dose, heldout, models["redcnn"], models["dgdiff"], device, seed)
        for dose in doses
    }
    reconstruct(
        catalog=archive,
        doses=doses,
        spdiff=models["spdiff"],
        dgdiff=models["dgdiff"],
        device=device,
        seed=seed,
        slices=heldout,
        chunk_slices=DEMO_CHUNK_SLICES,
        tracking=tracking,
        experiment=DEMO_EXPERIMENT,
    )
    evaluations = score_and_plot(archive, heldout, {dose: future.result() for dose, future in baselines.items()}, out)
    rows = [row for evaluation in evaluations for row in evaluation.summary]
    if tracker:
        params = {
            **model_params(models, registered),
            "heldout_slices": f"{heldout[0]}-{heldout[-1]}",
            "seed": seed,
            "demo_models": [asdict(model) for model in DEMO_MODELS],
        }
        logger.info("MLflow run %s", log_quality_runs(tracker, "demo", archive, evaluations, params))
    print(format_quality_table(rows))
    print(f"\npanels, metric_vs_dose.png and metrics.json in {out.resolve()}")
    return rows

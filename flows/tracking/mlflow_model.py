"""A NEED checkpoint as an MLflow model: the unchanged `.pt` file under `artifacts/`, an MLmodel with the model's
input/output signature, and `CheckpointModel`, a pyfunc wrapper that loads it through storage.checkpoints and runs
need_core, so `mlflow.pyfunc.load_model("models:/need-spdiff@champion").predict(...)` works outside the pipeline.

The pipeline itself never goes through pyfunc: flows.tracking.registry downloads the version's files and the flows
use the `.pt` file as they use any checkpoint path.
"""

from __future__ import annotations

import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Schema, TensorSpec

from storage.checkpoints import load_checkpoint
from storage.ledger import slice_ranges

CHECKPOINT_ARTIFACT = "checkpoint"
"""The pyfunc artifact name; MLflow copies the file to `artifacts/<file name>` inside the model folder."""
ENTRY = Path(__file__).with_name("pyfunc_entry.py")
F32 = np.dtype(np.float32)
ANY_STACK = (-1, -1, -1)
KIND_TITLES = {
    "spdiff": "SPDiff: Poisson-flow diffusion denoiser of low-dose transmission sinograms",
    "dgdiff": "DGDiff: doubly guided diffusion refiner of HU images (NEED's second stage)",
    "redcnn": "RED-CNN: supervised image-domain baseline (low-dose FBP -> normal-dose HU)",
}


def model_signature(kind: str, settings: dict[str, Any]) -> ModelSignature:
    """Inputs and outputs of `CheckpointModel.predict` for a checkpoint of `kind` (tensors by name).

    SPDiff: `transmission` (n, views, detectors) float32 normalised transmission of n contiguous slices and
    `incident_count` (1,) float64 = I0 · dose of the measurement (it picks the start time step) -> denoised
    transmission. DGDiff: `fbp_ld` and `spdiff_fbp` (n, H, W) float32 HU -> `need` (n, H, W) HU.
    RED-CNN: `fbp_ld` (n, H, W) float32 HU -> `denoised` HU."""
    if kind == "spdiff":
        views, detectors = (int(n) for n in settings.get("sinogram_shape", (-1, -1)))
        sinograms = (-1, views, detectors)
        inputs = Schema(
            [
                TensorSpec(F32, sinograms, "transmission"),
                TensorSpec(np.dtype(np.float64), (1,), "incident_count"),
            ]
        )
        return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(F32, sinograms, "transmission")]))
    if kind == "dgdiff":
        inputs = Schema([TensorSpec(F32, ANY_STACK, "fbp_ld"), TensorSpec(F32, ANY_STACK, "spdiff_fbp")])
        return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(F32, ANY_STACK, "need")]))
    if kind == "redcnn":
        inputs = Schema([TensorSpec(F32, ANY_STACK, "fbp_ld")])
        return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(F32, ANY_STACK, "denoised")]))
    raise ValueError(f"unknown model kind {kind!r}")


def describe_checkpoint(kind: str, blob: dict[str, Any], digest: str, extra: str = "", profile: str = "") -> str:
    """A model version's description: what the model is, its profile (the checkpoint's, else `profile`) and steps,
    what it was trained on, the file's digest, and `extra` (e.g. the model card's summary)."""
    settings, data = blob.get("settings", {}), blob.get("training_data", {})
    profile = settings.get("profile") or profile
    facts = [f"profile: {profile}"] if profile else []
    facts += [f"trained {blob.get('step', '?')} steps", f"checkpoint sha256 (first 16): {digest}"]
    lines = [KIND_TITLES[kind], "; ".join(facts)]
    trained_on = []
    if data.get("studies"):
        trained_on.append(f"{len(data['studies'])} studies (catalog digest {data.get('catalog_digest', '?')})")
    if data.get("archive_settings_hash"):
        trained_on.append(f"archive settings {data['archive_settings_hash']}")
    if data.get("train_slices"):
        trained_on.append(f"slices {slice_ranges(list(data['train_slices']))}")
    if data.get("train_dose") is not None:
        trained_on.append(f"paired with the {data['train_dose']:g} dose")
    if trained_on:
        lines.append("training data: " + ", ".join(trained_on))
    if blob.get("tracking_run_id"):
        lines.append(f"training run: {blob['tracking_run_id']}")
    if kind == "spdiff" and "sinogram_shape" in settings:
        lines.append("sinograms: {} views x {} detectors".format(*settings["sinogram_shape"]))
    return "\n".join(lines + ([extra.strip()] if extra.strip() else []))


class CheckpointModel(PythonModel):
    """pyfunc wrapper of a NEED checkpoint; its kind comes from the model's `model_config` (see `model_signature`
    for inputs and outputs)."""

    _skip_type_hint_validation = True  # MLflow would build a schema from `predict`'s hints: the signature is ours

    def __init__(self) -> None:
        self.kind = ""
        self.model: Any = None

    def load_context(self, context: Any) -> None:
        from need_core import dgdiff, redcnn, spdiff

        self.kind = context.model_config["kind"]
        blob = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], self.kind)
        loaders = {"spdiff": spdiff.load_model, "dgdiff": dgdiff.load_model, "redcnn": redcnn.load_model}
        self.model = loaders[self.kind](blob, device="cpu")

    def predict(self, context, model_input, params=None):  # untyped: MLflow would take hints for a per-row schema
        from need_core import dgdiff, redcnn, spdiff

        if self.kind == "spdiff":
            count = float(np.asarray(model_input["incident_count"]).reshape(-1)[0])
            return spdiff.denoise_volume(self.model, model_input["transmission"], count).transmission
        if self.kind == "dgdiff":
            refined = dgdiff.refine(
                self.model.network,
                model_input["fbp_ld"],
                model_input["spdiff_fbp"],
                self.model.schedule,
                max_step=self.model.max_start_step,
            )
            return np.asarray(refined.images_hu, dtype=np.float32)
        return redcnn.denoise_images(self.model, model_input["fbp_ld"], device="cpu")


def save_checkpoint_model(folder: Path, checkpoint: Path, kind: str, blob: dict[str, Any]) -> Path:
    """Write `checkpoint` as an MLflow pyfunc model ("models from code": flows/tracking/pyfunc_entry.py, no pickle)
    into the new folder `folder`. Requirements are named, not inferred (inference loads the model in a subprocess);
    no input example is stored (a full sinogram would be megabytes of JSON), the signature says the shapes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        mlflow.pyfunc.save_model(
            str(folder),
            python_model=str(ENTRY),
            model_config={"kind": kind},
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
            signature=model_signature(kind, blob.get("settings", {})),
            pip_requirements=[_requirement()],
            metadata={"need.kind": kind, "need.checkpoint_file": checkpoint.name},
        )
    return folder


def _requirement() -> str:
    try:
        return f"need-pipeline=={version('need-pipeline')}"
    except PackageNotFoundError:
        return "need-pipeline"

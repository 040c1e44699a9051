"""The model registry: trained checkpoints registered as MLflow models, versions of need-spdiff / need-dgdiff /
need-redcnn (with a signature and a description), found again by content digest, promoted with the `@champion`
alias, and downloaded once into a local cache for `models:/` references.

A version's files (its run's artifact folder `model-<digest>/`): `MLmodel` (pyfunc flavour, signature, the kind in
its model_config), `pyfunc_entry.py` (models from code: flows.tracking.mlflow_model.CheckpointModel),
`requirements.txt` & co., and the unchanged checkpoint `artifacts/<file>.pt`. Versions registered before held only
`checkpoint/<file>.pt`; both are read.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.tracking.store import Tracker, checked_uri
from storage.checkpoints import CheckpointError, load_checkpoint

REGISTERED_NAMES = {"spdiff": "need-spdiff", "dgdiff": "need-dgdiff", "redcnn": "need-redcnn"}
CHECKSUM_TAG = "need.checkpoint_digest"
CHAMPION = "champion"
"""The alias the deployments of prefect.yaml use (`models:/need-spdiff@champion`)."""
MODEL_ARTIFACT = "model"
MODEL_CACHE_ENV = "NEED_MODEL_CACHE"
MODEL_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")
MODEL_DESCRIPTIONS = {
    "spdiff": "NEED stage 1: SPDiff, the Poisson-flow diffusion denoiser of low-dose transmission sinograms.",
    "dgdiff": "NEED stage 3: DGDiff, the doubly guided diffusion refiner of the FBP of SPDiff's sinograms (HU).",
    "redcnn": "RED-CNN, the supervised image-domain baseline NEED is compared with.",
}

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # model downloads would print bars per file


class ModelReferenceError(ValueError):
    """A `models:/` reference names no registered model version, or its files are unusable."""


def register_checkpoint(
    tracker: Tracker, run_id: str, checkpoint: Path, kind: str, digest: str, description: str = ""
) -> str:
    """Log `checkpoint` as the run's MLflow model `model-<digest>/` (signature, pyfunc wrapper) and register it as a new
    version of need-<kind>, described (kind, profile, steps, training data, digest, then `description`) and tagged
    with its digest; the version becomes `@champion` when need-<kind> has none yet. (flows.registration checks a
    file before registering it; train registers what it saved.)"""
    from flows.tracking.mlflow_model import describe_checkpoint, save_checkpoint_model  # imports mlflow.pyfunc

    name = REGISTERED_NAMES[kind]
    try:
        blob = load_checkpoint(checkpoint, kind)
    except CheckpointError:  # registered with what is known; resolve_model refuses the file before any use
        blob = {}
    artifact = f"{MODEL_ARTIFACT}-{digest}"  # one folder per file: a resumed run registers again, never overwrites
    with tempfile.TemporaryDirectory(prefix="need-model-") as scratch:
        folder = save_checkpoint_model(Path(scratch) / artifact, checkpoint, kind, blob)
        tracker.client.log_artifacts(run_id, str(folder), artifact)
    try:
        tracker.client.create_registered_model(name, description=MODEL_DESCRIPTIONS[kind])
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    run = tracker.client.get_run(run_id)
    tags = {CHECKSUM_TAG: digest, "need.kind": kind, "need.steps": str(blob.get("step", ""))}
    text = describe_checkpoint(kind, blob, digest, description, run.data.params.get("profile", ""))
    version = tracker.client.create_model_version(
        name, source=f"{run.info.artifact_uri}/{artifact}", run_id=run_id, tags=tags, description=text
    )
    crown_if_vacant(tracker.client, name, str(version.version))
    return str(version.version)


def registered_version(tracker: Tracker, kind: str, digest: str) -> str | None:
    """The registered version (as "need-<kind>/VERSION") whose checkpoint has `digest`, or None when none has."""
    versions = tracker.client.search_model_versions(f"name = '{REGISTERED_NAMES[kind]}'")
    named = [f"{v.name}/{v.version}" for v in versions if v.tags.get(CHECKSUM_TAG) == digest]
    return named[0] if named else None


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version `name@alias` points to, or None (no such model or alias)."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def crown_if_vacant(client: MlflowClient, name: str, version: str) -> bool:
    """Point `@champion` at `version` when `name` has no champion yet (an existing one is never moved here)."""
    if alias_version(client, name, CHAMPION) is not None:
        return False
    client.set_registered_model_alias(name, CHAMPION, version)
    return True


def move_alias(client: MlflowClient, name: str, alias: str, version: str) -> str | None:
    """Point `name@alias` at `version`; return the version it pointed to before when that was another one."""
    previous = alias_version(client, name, alias)
    client.set_registered_model_alias(name, alias, version)
    return previous if previous != version else None


def registered_alias(uri: str, name: str, alias: str) -> str | None:
    """The version `name@alias` points to in the store at `uri`, or None, also when the store cannot answer."""
    try:
        return alias_version(MlflowClient(uri, registry_uri=uri), name, alias)
    except Exception:  # any failure of the store (SQLAlchemy, requests, MLflow) only means "no alias" here
        return None


def model_cache_dir() -> Path:
    """Where registered checkpoints are downloaded: $NEED_MODEL_CACHE, else ~/.cache/need/models."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "need" / "models")


def registered_model_version(reference: str) -> tuple[MlflowClient, ModelVersion]:
    """The registry's version that `models:/NAME/VERSION` or `models:/NAME@ALIAS` names (ModelReferenceError if
    none), with the client that found it; nothing is downloaded (`need` checks references with it before starting
    servers)."""
    match = MODEL_URI.match(reference)
    if not match:
        raise ModelReferenceError(f"model reference {reference!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    uri = checked_uri()
    client = MlflowClient(uri, registry_uri=uri)
    try:
        version = (
            client.get_model_version(match["name"], match["version"])
            if match["version"]
            else client.get_model_version_by_alias(match["name"], match["alias"])
        )
    except MlflowException as err:
        raise ModelReferenceError(f"no registered model version for {reference} in {uri}: {err.message}") from err
    return client, version


def fetch_registered_checkpoint(reference: str, digest_of: Callable[[Path], str]) -> tuple[Path, str]:
    """Download the files of `models:/NAME/VERSION` or `models:/NAME@ALIAS` once into the model cache.

    Returns the local checkpoint file and "NAME/VERSION". The cached file is checked against the digest recorded at
    registration (`digest_of(path)` computes it), so a damaged cache is fetched again, never used.
    """
    client, version = registered_model_version(reference)
    name = version.name
    target = model_cache_dir() / name / str(version.version)
    expected = version.tags.get(CHECKSUM_TAG)
    cached = _single_checkpoint(target) if target.is_dir() else None
    if cached is None or (expected and digest_of(cached) != expected):
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=target.parent))
        source = str(version.source)
        folder = PurePosixPath(str(urlparse(source).path)).name  # `model-<digest>` (or `checkpoint`, before)
        try:
            if version.run_id:
                client.download_artifacts(version.run_id, folder, str(staging))
            else:  # a version made from an artifact location outside any run
                download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=client.tracking_uri)
            os.replace(staging / folder, target)
        except (MlflowException, OSError) as err:
            raise ModelReferenceError(f"cannot download the checkpoint of {reference}: {err}") from err
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cached = _single_checkpoint(target)
    if cached is None:
        raise ModelReferenceError(f"{reference} holds no single checkpoint file (*.pt) in its artifacts")
    if expected and digest_of(cached) != expected:
        raise ModelReferenceError(f"checkpoint of {reference} does not match the checksum recorded at registration")
    return cached, f"{name}/{version.version}"


def _single_checkpoint(folder: Path) -> Path | None:
    """The only *.pt file of an MLflow model folder (`artifacts/*.pt`) or of an older version's folder, or None."""
    files = sorted(folder.glob("*.pt")) + sorted(folder.glob("artifacts/*.pt"))
    return files[0] if len(files) == 1 else None

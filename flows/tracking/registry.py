"""The model registry: trained checkpoints registered as versions of need-spdiff / need-dgdiff / need-redcnn, found
again by content digest, and downloaded once into a local cache for `models:/` references."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.tracking.store import Tracker, checked_uri

REGISTERED_NAMES = {"spdiff": "need-spdiff", "dgdiff": "need-dgdiff", "redcnn": "need-redcnn"}
CHECKSUM_TAG = "need.checkpoint_digest"
MODEL_CACHE_ENV = "NEED_MODEL_CACHE"
MODEL_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # model downloads would print bars per file


class ModelReferenceError(ValueError):
    """A `models:/` reference names no registered model version, or its files are unusable."""


def register_checkpoint(tracker: Tracker, run_id: str, checkpoint: Path, kind: str, digest: str) -> str:
    """Log `checkpoint` as the run's artifact `checkpoint/` and register it as a new version of need-<kind>."""
    name = REGISTERED_NAMES[kind]
    tracker.log_artifact(run_id, checkpoint, "checkpoint")
    try:
        tracker.client.create_registered_model(name)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    source = f"{tracker.client.get_run(run_id).info.artifact_uri}/checkpoint"
    version = tracker.client.create_model_version(name, source=source, run_id=run_id, tags={CHECKSUM_TAG: digest})
    return str(version.version)


def registered_version(tracker: Tracker, kind: str, digest: str) -> str | None:
    """The registered version (as "need-<kind>/VERSION") whose checkpoint has `digest`, or None when none has."""
    versions = tracker.client.search_model_versions(f"name = '{REGISTERED_NAMES[kind]}'")
    named = [f"{v.name}/{v.version}" for v in versions if v.tags.get(CHECKSUM_TAG) == digest]
    return named[0] if named else None


def model_cache_dir() -> Path:
    """Where registered checkpoints are downloaded: $NEED_MODEL_CACHE, else ~/.cache/need/models."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "need" / "models")


def fetch_registered_checkpoint(reference: str, digest_of: Callable[[Path], str]) -> tuple[Path, str]:
    """Download the checkpoint of `models:/NAME/VERSION` or `models:/NAME@ALIAS` once into the model cache.

    Returns the local file and "NAME/VERSION". The cached file is checked against the digest recorded at
    registration (`digest_of(path)` computes it), so a damaged cache is fetched again, never used.
    """
    match = MODEL_URI.match(reference)
    if not match:
        raise ModelReferenceError(f"model reference {reference!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    uri = checked_uri()
    client = MlflowClient(uri, registry_uri=uri)
    name = match["name"]
    try:
        version = (
            client.get_model_version(name, match["version"])
            if match["version"]
            else client.get_model_version_by_alias(name, match["alias"])
        )
    except MlflowException as err:
        raise ModelReferenceError(f"no registered model version for {reference} in {uri}: {err.message}") from err
    target = model_cache_dir() / name / str(version.version)
    expected = version.tags.get(CHECKSUM_TAG)
    cached = _single_checkpoint(target) if target.is_dir() else None
    if cached is None or (expected and digest_of(cached) != expected):
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version.version}-", dir=target.parent))
        try:
            client.download_artifacts(version.run_id, "checkpoint", str(staging))
            os.replace(staging / "checkpoint", target)
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
    """The only *.pt file of `folder`, or None."""
    files = sorted(folder.glob("*.pt"))
    return files[0] if len(files) == 1 else None

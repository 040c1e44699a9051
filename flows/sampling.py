"""Which sampling profile a run uses (need_core.sampling): `reference` (the spec's settings), a profile file, or by
default the profile `need calibrate` made for exactly these two checkpoints — found on the DGDiff version in the
model registry, else shipped beside the weights — and the reference when there is none."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient

from flows.models import shipped_weights_dir
from flows.tracking.location import store_can_answer, tracking_uri
from flows.tracking.registry import CHECKSUM_TAG, REGISTERED_NAMES
from need_core.sampling import REFERENCE_NAME, REFERENCE_SAMPLING, SamplingProfile, SamplingProfileError
from tasks.models import ResolvedModel

SAMPLING_TAG = "need.sampling"
"""Model-version tag prefix: `need.sampling.<spdiff digest>` on a DGDiff version holds the profile (JSON) calibrated
for that SPDiff with it."""


def profile_filename(spdiff: ResolvedModel, dgdiff: ResolvedModel) -> str:
    """The file name of the profile of these two checkpoints: `sampling_<spdiff8>_<dgdiff8>.json`."""
    return f"sampling_{spdiff.identity[:8]}_{dgdiff.identity[:8]}.json"


def sampling_tag(spdiff: ResolvedModel) -> str:
    """The DGDiff version's tag that holds the profile calibrated with this SPDiff."""
    return f"{SAMPLING_TAG}.{spdiff.identity}"


def choose_sampling(choice: str | None, spdiff: ResolvedModel, dgdiff: ResolvedModel) -> tuple[SamplingProfile, str]:
    """The profile for `choice` (None: the default) and why it was taken, for the run's log.

    A file made for other checkpoints is refused: its settings were tuned for those models only."""
    if choice == REFERENCE_NAME:
        return REFERENCE_SAMPLING, "asked for"
    if choice:
        profile = SamplingProfile.load(choice)
        if not profile.fits(spdiff.identity, dgdiff.identity):
            raise SamplingProfileError(
                f"sampling profile {choice} was calibrated for {dict(profile.models)}, not for these models "
                f"(spdiff {spdiff.identity}, dgdiff {dgdiff.identity}): run `need calibrate` for them or pass "
                "--sampling reference"
            )
        return profile, f"file {choice}"
    registered = registered_profile(spdiff, dgdiff)
    if registered is not None:
        return registered, f"registry tag {sampling_tag(spdiff)} of {REGISTERED_NAMES['dgdiff']}"
    shipped = shipped_weights_dir() / profile_filename(spdiff, dgdiff)
    if shipped.is_file():
        profile = SamplingProfile.load(shipped)
        if profile.fits(spdiff.identity, dgdiff.identity):
            return profile, f"shipped {shipped.name}"
    return REFERENCE_SAMPLING, "no calibrated profile for these models (`need calibrate` makes one)"


def registered_profile(spdiff: ResolvedModel, dgdiff: ResolvedModel) -> SamplingProfile | None:
    """The profile tagged on the registered DGDiff version with this checkpoint, for this SPDiff; None when the store
    has none or cannot answer (cheap: a SQLite store not created yet is not created)."""
    uri = tracking_uri()
    if not store_can_answer(uri):
        return None
    try:
        versions = MlflowClient(uri, registry_uri=uri).search_model_versions(f"name = '{REGISTERED_NAMES['dgdiff']}'")
    except Exception:  # any failure of the store (SQLAlchemy, requests, MLflow) only means "no profile" here
        return None
    for version in versions:
        stored = version.tags.get(sampling_tag(spdiff))
        if version.tags.get(CHECKSUM_TAG) == dgdiff.identity and stored:
            profile = SamplingProfile.from_dict(json.loads(stored))
            return profile if profile.fits(spdiff.identity, dgdiff.identity) else None
    return None


def default_profile_path(catalog: str | Path, spdiff: ResolvedModel, dgdiff: ResolvedModel) -> Path:
    """Where `need calibrate` writes a profile unless told: beside the catalog, named after the two checkpoints."""
    return Path(catalog).resolve().parent / profile_filename(spdiff, dgdiff)

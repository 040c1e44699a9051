"""The tracking store: which one ($MLFLOW_TRACKING_URI, else `mlflow.db` in the working directory), checking it
before any compute, and `Tracker`, a client bound to one checked store and experiment.

Where the store is and whether it can be reached and written is judged by flows.tracking.location (without
MLflow, so `need` checks it before starting anything); this module adds the MLflow query and the client.
A SQLite store keeps its artifacts in `mlartifacts/` next to the database, so runs never depend on the directory a
command was started from. MLflow stores that folder as an absolute URI (it resolves a relative `artifact_location`
against the working directory), so a store folder copied elsewhere would go on writing into the original's
`mlartifacts/`: opening a store rebinds the artifact URIs of a copy to its own folder (`rebind_copied_store`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.tracking.location import (
    CONNECT_TIMEOUT_S,
    TrackingUnavailable,
    check_tracking_location,
    sqlite_path,
    tracking_uri,
)

RUN_KIND_TAG = "need.run_kind"
ARTIFACT_FOLDER = "mlartifacts"
LOCAL_UI_URL = "http://127.0.0.1:5000"  # where `need ui` serves a local store
ARTIFACT_URI_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)
"""The columns of MLflow's SQL schema that hold artifact URIs under an experiment's artifact location."""
PARAM_BATCH = 90  # MLflow accepts at most 100 params per log_batch call
METRIC_BATCH = 900  # and at most 1000 metrics


def check_tracking_uri(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless the store at `uri` can be reached, written and queried (cheap; before any
    compute): flows.tracking.location's checks, then one MLflow query."""
    check_tracking_location(uri, timeout_s)
    try:
        MlflowClient(uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises many types for bad stores (SQLAlchemy, requests, MlflowException)
        raise TrackingUnavailable(f"tracking store {uri} cannot be used: {type(err).__name__}: {err}") from err


def checked_uri() -> str:
    """The configured store's URI, after checking the store can be used (TrackingUnavailable otherwise)."""
    uri = tracking_uri()
    check_tracking_uri(uri)
    return uri


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: `mlartifacts/` beside a SQLite database, else the store's default."""
    if urlparse(uri).scheme.lower() != "sqlite":
        return None
    database = sqlite_path(uri)
    return None if database is None else (database.parent / ARTIFACT_FOLDER).as_uri()


def rebind_copied_store(uri: str) -> str | None:
    """Point the artifact URIs of a copied SQLite store at its own `mlartifacts/`; return the folder it was copied
    from (None when the store is no copy, or not SQLite).

    A copy is recognised by experiments whose location is another folder's `mlartifacts` (the layout of
    `artifact_root`); their runs, model versions and logged models are rebound with them, in one transaction, so a
    copy neither writes into nor reads from the original folder. Experiments placed elsewhere are left alone."""
    own = artifact_root(uri)
    database = sqlite_path(uri) if own else None
    if own is None or database is None or not database.exists():
        return None
    with closing(sqlite3.connect(database, timeout=30)) as con, con:  # one transaction, then closed
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return None
        locations = {row[0] for row in con.execute("SELECT artifact_location FROM experiments") if row[0]}
        foreign = sorted(
            loc for loc in locations if loc != own and loc.startswith("file://") and loc.endswith(f"/{ARTIFACT_FOLDER}")
        )
        for old in foreign:
            for table, column in ARTIFACT_URI_COLUMNS:
                if table in tables:
                    con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (names are fixed)
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        (own, len(old) + 1, old, len(old) + 1, old + "/"),
                    )
    return foreign[0] if foreign else None


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The web address of a run: on the tracking server, or for a local store where `need ui` serves it."""
    base = uri.rstrip("/") if urlparse(uri).scheme.lower() in ("http", "https") else LOCAL_UI_URL
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def default_experiment(archive: str | os.PathLike) -> str:
    """One experiment per dataset: `need-<archive folder name without .zarr>`."""
    name = Path(archive).resolve().name
    return f"need-{name[:-5] if name.endswith('.zarr') else name}"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as flat `a.b` keys with JSON (or plain string) values, as MLflow params want them."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


class Tracker:
    """An MLflow client bound to one checked store and one experiment: runs, params, metrics, artifacts."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.copied_from = rebind_copied_store(uri)
        self.client = MlflowClient(uri, registry_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location=artifact_root(uri))
        )

    def start_run(
        self, name: str, kind: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Create a run (a child of `parent_id` when given) tagged with its kind; return its id."""
        all_tags = {RUN_KIND_TAG: kind, **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id

    @contextmanager
    def run(
        self,
        name: str,
        kind: str,
        parent_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> Iterator[str]:
        """A run (new, or the existing `run_id` reopened) that ends FINISHED, or FAILED if the block raises."""
        if run_id is None:
            run_id = self.start_run(name, kind, parent_id, tags)
        else:
            self.client.update_run(run_id, status="RUNNING")
        try:
            yield run_id
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def run_url(self, run_id: str) -> str:
        """The run's web address (see `run_url`)."""
        return run_url(self.uri, self.experiment_id, run_id)

    def has_run(self, run_id: str) -> bool:
        """Whether `run_id` is a live run of this store."""
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params (flattened); re-logging an identical value is allowed, a different one is an MLflow error."""
        items = list(flatten(params).items())
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[start : start + PARAM_BATCH]])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags."""
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log scalar metrics at one step."""
        self.log_points(run_id, [(key, float(value), step) for key, value in metrics.items()])

    def log_points(self, run_id: str, points: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) metric points in batches (a loss curve, per-slice values)."""
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value, step in points]
        for start in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + METRIC_BATCH])

    def log_artifact(self, run_id: str, path: str | os.PathLike, folder: str | None = None) -> None:
        """Copy a local file into the run's artifacts (under `folder`)."""
        self.client.log_artifact(run_id, str(path), folder)


def open_tracker(enabled: bool, experiment: str) -> Tracker | None:
    """A Tracker on the configured store after checking it (TrackingUnavailable otherwise); None when disabled."""
    if not enabled:
        return None
    uri = checked_uri()
    try:
        return Tracker(uri, experiment)
    except MlflowException as err:
        raise TrackingUnavailable(f"tracking store {uri}: cannot open experiment {experiment!r}: {err}") from err

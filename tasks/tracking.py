"""MLflow tracking for the flows: the store (checked before any compute), runs, artifacts and the model registry.

All MLflow calls of the project live here (and nowhere in need_core or storage). The store is
$MLFLOW_TRACKING_URI, else a SQLite file `mlflow.db` in the working directory; its artifacts go to
`mlartifacts/` next to that file, so runs never depend on the directory a command was started from.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # model downloads would print bars per file

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

DEFAULT_DB_NAME = "mlflow.db"
REGISTERED_NAMES = {"spdiff": "need-spdiff", "dgdiff": "need-dgdiff", "redcnn": "need-redcnn"}
RUN_KIND_TAG = "need.run_kind"
CHECKSUM_TAG = "need.checkpoint_digest"
MODEL_CACHE_ENV = "NEED_MODEL_CACHE"
CONNECT_TIMEOUT_S = 3.0
BATCH_LIMIT = 900  # MLflow accepts at most 1000 metrics per log_batch call
MODEL_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used (invalid URI, unreachable server, missing directory, corrupt database)."""


class ModelReferenceError(ValueError):
    """A `models:/` reference names no registered model version, or its files are unusable."""


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an absolute `sqlite:///…/mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB_NAME}"


def check_tracking_uri(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless the store at `uri` can be reached and queried (cheap; before any compute)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        database = sqlite_path(uri)
        if database is not None and not database.parent.is_dir():
            raise TrackingUnavailable(f"tracking store {uri}: directory {database.parent} does not exist; "
                                      "create it or set MLFLOW_TRACKING_URI to a usable store")
    elif scheme in ("http", "https"):
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
                pass
        except OSError as err:
            raise TrackingUnavailable(f"tracking server {uri} is unreachable ({err}); start it, fix "
                                      "MLFLOW_TRACKING_URI, or pass --no-tracking to run without tracking") from err
    elif scheme in ("", "file"):
        folder = Path(unquote(parsed.path) if scheme == "file" else uri)
        if not folder.parent.is_dir():
            raise TrackingUnavailable(f"tracking store {uri}: directory {folder.parent} does not exist")
    else:
        raise TrackingUnavailable(f"tracking URI {uri!r} has an unsupported scheme {scheme!r}; expected "
                                  "sqlite:///PATH, http(s)://HOST:PORT or a local folder")
    try:
        MlflowClient(uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises many types for bad stores (SQLAlchemy, requests, MlflowException)
        raise TrackingUnavailable(f"tracking store {uri} cannot be used: {type(err).__name__}: {err}") from err


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///relative` or `sqlite:////absolute` URI (None for an in-memory database)."""
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:]).resolve()


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: `mlartifacts/` beside a SQLite database, else the store's default."""
    if urlparse(uri).scheme.lower() != "sqlite":
        return None
    database = sqlite_path(uri)
    return None if database is None else (database.parent / "mlartifacts").as_uri()


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


def slice_ranges(slices: list[int]) -> str:
    """Compact text of slice indices: [0, 1, 2, 5] -> '0-2,5' ('' when none)."""
    parts, ordered = [], sorted(set(slices))
    start = previous = None
    for index in ordered + [None]:
        if start is not None and index == previous + 1:
            previous = index
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = index
    return ",".join(parts)


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


class Tracker:
    """An MLflow client bound to one checked store and one experiment: runs, params, metrics, artifacts, registry."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.client = MlflowClient(uri, registry_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_root(uri))

    def start_run(self, name: str, kind: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """Create a run (a child of `parent_id` when given) tagged with its kind; return its id."""
        all_tags = {RUN_KIND_TAG: kind, **(tags or {})}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        return self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id

    @contextmanager
    def run(self, name: str, kind: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None,
            run_id: str | None = None) -> Iterator[str]:
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

    def has_run(self, run_id: str) -> bool:
        """Whether `run_id` is a live run of this store."""
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Log params (flattened); re-logging an identical value is allowed, a different one is an MLflow error."""
        flat = flatten(params)
        items = list(flat.items())
        for start in range(0, len(items), 90):
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[start:start + 90]])

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
        for start in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=metrics[start:start + BATCH_LIMIT])

    def log_artifact(self, run_id: str, path: str | os.PathLike, folder: str | None = None) -> None:
        """Copy a local file into the run's artifacts (under `folder`)."""
        self.client.log_artifact(run_id, str(path), folder)

    def register_checkpoint(self, run_id: str, checkpoint: Path, kind: str, digest: str) -> str:
        """Log `checkpoint` as the run's artifact `checkpoint/` and register it as a new version of need-<kind>."""
        name = REGISTERED_NAMES[kind]
        self.log_artifact(run_id, checkpoint, "checkpoint")
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/checkpoint"
        version = self.client.create_model_version(name, source=source, run_id=run_id, tags={CHECKSUM_TAG: digest})
        return str(version.version)


def open_tracker(enabled: bool, experiment: str) -> Tracker | None:
    """A Tracker on the configured store after checking it (TrackingUnavailable otherwise); None when disabled."""
    if not enabled:
        return None
    uri = tracking_uri()
    check_tracking_uri(uri)
    try:
        return Tracker(uri, experiment)
    except MlflowException as err:
        raise TrackingUnavailable(f"tracking store {uri}: cannot open experiment {experiment!r}: {err}") from err


def model_cache_dir() -> Path:
    """Where registered checkpoints are downloaded: $NEED_MODEL_CACHE, else ~/.cache/need/models."""
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "need" / "models")


def fetch_registered_checkpoint(reference: str, digest_of: Any) -> tuple[Path, str]:
    """Download the checkpoint of `models:/NAME/VERSION` or `models:/NAME@ALIAS` once into the model cache.

    Returns the local file and "NAME/VERSION". The cached file is checked against the sha256 recorded at
    registration (`digest_of(path)` computes it), so a damaged cache is fetched again, never used.
    """
    match = MODEL_URI.match(reference)
    if not match:
        raise ModelReferenceError(f"model reference {reference!r} is not models:/NAME/VERSION or models:/NAME@ALIAS")
    uri = tracking_uri()
    check_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    name = match["name"]
    try:
        version = (client.get_model_version(name, match["version"]) if match["version"]
                   else client.get_model_version_by_alias(name, match["alias"]))
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


def log_quality_runs(
    tracker: Tracker,
    flow_name: str,
    archive_path: str,
    evaluations: list[Any],
    common_params: Mapping[str, Any],
    dose_params: Mapping[float, Mapping[str, Any]] | None = None,
    dose_tags: Mapping[float, Mapping[str, str]] | None = None,
    dose_points: Mapping[float, list[tuple[str, float, int]]] | None = None,
) -> str:
    """A parent run for one flow run and a child run per dose: params, mean and per-slice metrics, per-slice CSV,
    comparison panels, and in the parent the metric-vs-dose plot and all summary rows. Returns the parent's id.

    `dose_params`, `dose_tags` and `dose_points` (extra (key, value, step) metrics) add to the child of a dose."""
    from need_core.display import comparison_panel
    from need_core.display import metric_vs_dose_plot
    from tasks.evaluation import write_rows_csv

    tags = {"need.archive": str(Path(archive_path).resolve())}
    commit = git_commit()
    if commit:
        tags["need.git_commit"] = commit
    with tracker.run(f"{flow_name} {Path(archive_path).name}", flow_name, tags=tags) as parent, \
            tempfile.TemporaryDirectory(prefix="need-tracking-") as scratch:
        tracker.log_params(parent, {**common_params, "doses": ",".join(f"{e.dose:g}" for e in evaluations)})
        for evaluation in evaluations:
            dose = evaluation.dose
            child_tags = {**tags, "need.dose": f"{dose:g}", **(dose_tags or {}).get(dose, {})}
            with tracker.run(f"dose {dose:g}", f"{flow_name}-dose", parent_id=parent, tags=child_tags) as child:
                tracker.log_params(child, {**common_params, "dose": dose, **(dose_params or {}).get(dose, {}),
                                           "n_slices": len(evaluation.slices)})
                tracker.log_metrics(child, {f"{row['method']}_{name}": row[name] for row in evaluation.summary
                                            for name in ("psnr", "ssim", "rmse_hu")})
                tracker.log_points(child, [(f"slice/{row['method']}_{name}", row[name], row["slice"])
                                           for row in evaluation.per_slice for name in ("psnr", "ssim", "rmse_hu")]
                                  + list((dose_points or {}).get(dose, [])))
                folder = Path(scratch) / f"dose_{dose:g}"
                tracker.log_artifact(child, write_rows_csv(evaluation.per_slice, folder / "per_slice_metrics.csv"))
                for s, images in evaluation.panels.items():
                    panel = comparison_panel(images["reference"], {m: images[m] for m in images if m != "reference"},
                                             folder / f"panel_slice{s:04d}.png", title=f"slice {s}, dose {dose:g}")
                    tracker.log_artifact(child, panel, "panels")
        rows = [row for evaluation in evaluations for row in evaluation.summary]
        tracker.log_artifact(parent, metric_vs_dose_plot(rows, Path(scratch) / "metric_vs_dose.png"))
        tracker.log_artifact(parent, write_rows_csv(rows, Path(scratch) / "quality.csv"))
    return parent


def compare_rows(experiment: str | None = None) -> list[dict[str, Any]]:
    """One row per (run, dose, method) of the per-dose quality runs in `experiment` (default: every experiment)."""
    uri = tracking_uri()
    check_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no experiment {experiment!r} in {uri}; experiments: {names}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`{RUN_KIND_TAG}` LIKE '%-dose'", max_results=5000,
                              order_by=["attributes.start_time ASC"]) if ids else []
    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        for method in ("fbp_ld", "spdiff_fbp", "need"):
            if f"{method}_psnr" not in metrics:
                continue
            rows.append({
                "dose": float(params.get("dose", "nan")), "method": method,
                "psnr": metrics[f"{method}_psnr"], "ssim": metrics.get(f"{method}_ssim", float("nan")),
                "rmse_hu": metrics.get(f"{method}_rmse_hu", float("nan")),
                "spdiff": params.get("spdiff_model", "-"), "dgdiff": params.get("dgdiff_model", "-"),
                "run": f"{run.info.run_name} {run.info.run_id[:8]}",
                "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
            })
    return rows


def format_compare_table(rows: list[dict[str, Any]]) -> str:
    """The dose × method × metric table of `compare_rows`, newest run last within each dose and method."""
    header = ["dose", "method", "PSNR (dB)", "SSIM", "RMSE (HU)", "SPDiff", "DGDiff", "run", "started"]
    body = [[f"{r['dose']:g}", r["method"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['rmse_hu']:.1f}",
             r["spdiff"], r["dgdiff"], r["run"], r["started"]]
            for r in sorted(rows, key=lambda r: (-r["dose"], r["method"]))]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *body])


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line serving the local store `uri` on host:port."""
    if urlparse(uri).scheme.lower() in ("http", "https"):
        raise ValueError(f"the tracking store is already a server: open {uri} in a browser")
    import sys

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def reconstruct_params(archive: Any, spdiff_model: Any, dgdiff_model: Any, options: Any, chunk_slices: int,
                       result_key: str) -> dict[str, Any]:
    """Params shared by a reconstruct run and its dose runs: models (name/version or path, identity), geometry,
    physics, sampling options, chunk size, device."""
    from need_core.device import resolve_device

    params: dict[str, Any] = {
        "geometry": archive.settings["geometry"], "physics": archive.settings["physics"],
        "archive_settings_hash": archive.settings_hash, "chunk_slices": chunk_slices, "device": options.device,
        "device_resolved": str(resolve_device(options.device)), "seed": options.seed, "s2": options.s2,
        "divisor": options.divisor, "batch_size": options.batch_size, "result_key": result_key,
    }
    for model in (spdiff_model, dgdiff_model):
        params[f"{model.kind}_model"] = model.registered or model.reference
        params[f"{model.kind}_identity"] = model.identity
    return params


def log_reconstruct_run(tracker: Tracker, archive: Any, summary: Mapping[float, Mapping[str, Any]], spdiff_model: Any,
                        dgdiff_model: Any, options: Any, chunk_slices: int, result_key: str) -> dict[str, Any]:
    """Evaluate every dose from the archive and log the reconstruct run (parent) and its dose runs (children).

    Tracking errors never fail the flow (the results are stored): they come back as {"error": ...} with the
    command that logs the metrics again.
    """
    from need_core import spdiff
    from storage.checkpoints import load_checkpoint
    from tasks.evaluation import NothingToEvaluate, evaluate_dose

    try:
        schedule = spdiff.SPDiffSchedule.from_dict(load_checkpoint(spdiff_model.path, "spdiff")["settings"]["schedule"])
        evaluations, dose_params, dose_tags, dose_points = [], {}, {}, {}
        for dose, entry in summary.items():
            try:
                evaluations.append(evaluate_dose(str(archive.path), dose))
            except NothingToEvaluate:
                continue
            incident_count = archive.settings["physics"]["incident_count"] * dose
            steps = sorted(entry.get("dgdiff_start_steps", {}).values())
            dose_params[dose] = {"incident_count": incident_count,
                                 "spdiff_start_step": spdiff.match_time_step(incident_count, schedule),
                                 "dgdiff_start_steps": f"{steps[0]}-{steps[-1]}" if steps else "none recomputed"}
            dose_points[dose] = [("slice/dgdiff_start_step", k, s) for s, k in entry.get("dgdiff_start_steps", {}).items()]
            dose_tags[dose] = {"need.recomputed_slices": slice_ranges(entry.get("done", [])) or "none",
                               "need.failed_slices": slice_ranges(list(entry.get("failed", {}))) or "none"}
        if not evaluations:
            return {"error": "nothing reconstructed yet: no run logged"}
        common = reconstruct_params(archive, spdiff_model, dgdiff_model, options, chunk_slices, result_key)
        parent = log_quality_runs(tracker, "reconstruct", str(archive.path), evaluations, common, dose_params,
                                  dose_tags, dose_points)
    except Exception as err:  # the archive holds the results; tracking must not turn a good run into a failure
        return {"error": f"{type(err).__name__}: {err}. The results are stored; log them again with "
                         f"`need evaluate {archive.path}`"}
    return {"parent_run_id": parent, "experiment": tracker.experiment}


class TrainingRunLog:
    """The MLflow run of one training, continued by a resumed training; every method does nothing without a tracker."""

    def __init__(self, tracker: Tracker | None, kind: str, run_id: str | None, name: str,
                 params: Mapping[str, Any], tags: Mapping[str, Any]) -> None:
        self.tracker, self.kind = tracker, kind
        self.run_id: str | None = None
        if tracker is None:
            return
        resumed = run_id is not None and tracker.has_run(run_id)
        self.run_id = run_id if resumed else tracker.start_run(name, f"train-{kind}")
        if resumed:
            tracker.client.update_run(self.run_id, status="RUNNING")
        tracker.log_params(self.run_id, params)
        tracker.set_tags(self.run_id, {**tags, "need.resumed": str(resumed).lower()})

    def log_progress(self, step: int, losses: list[tuple[int, float]], validation: Any, scratch: Path) -> None:
        """The loss curve since the last call, validation metrics at `step`, and a sample panel."""
        if self.tracker is None:
            return
        from need_core.display import comparison_panel

        points = [("loss", loss, s) for s, loss in losses] + [(k, v, step) for k, v in validation.metrics.items()]
        self.tracker.log_points(self.run_id, points)
        sample = validation.sample
        panel = comparison_panel(sample["reference"], {"input": sample["input"], self.kind: sample["model"]},
                                 scratch / f"step_{step:07d}.png", title=f"{self.kind} validation, step {step}")
        self.tracker.log_artifact(self.run_id, panel, "samples")

    def finish(self, checkpoint: Path, digest: str) -> str | None:
        """Register `checkpoint` as a new version of need-<kind> (once per checkpoint digest) and end the run."""
        if self.tracker is None:
            return None
        tags = self.tracker.client.get_run(self.run_id).data.tags
        version = tags.get("need.model_version") if tags.get(CHECKSUM_TAG) == digest else None
        if version is None:
            version = self.tracker.register_checkpoint(self.run_id, checkpoint, self.kind, digest)
            self.tracker.set_tags(self.run_id, {"need.model_version": version, CHECKSUM_TAG: digest})
        self.tracker.client.set_terminated(self.run_id, status="FINISHED")
        return version

    def fail(self) -> None:
        """Mark the run failed (a later --resume continues it)."""
        if self.tracker is not None and self.run_id is not None:
            self.tracker.client.set_terminated(self.run_id, status="FAILED")


def evaluation_dose_params(tracker: Tracker, evaluation: Any, incident_count: float) -> dict[str, Any]:
    """Params of an evaluate dose run: what produced the stored results (ledger keys) and, where the model
    identities in them are registered, the model names and versions."""
    params: dict[str, Any] = {"incident_count": incident_count, "result_key": ";".join(evaluation.produced_by)}
    identities = dict(re.findall(r"(spdiff|dgdiff):([0-9a-f]{16})", " ".join(evaluation.produced_by)))
    for kind, identity in identities.items():
        versions = tracker.client.search_model_versions(f"name = '{REGISTERED_NAMES[kind]}'")
        named = [f"{v.name}/{v.version}" for v in versions if v.tags.get(CHECKSUM_TAG) == identity]
        params[f"{kind}_model"] = named[0] if named else f"unregistered {identity}"
        params[f"{kind}_identity"] = identity
    return params

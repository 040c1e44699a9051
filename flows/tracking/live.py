"""A flow's MLflow run from the moment the flow starts computing: RUNNING while it computes, with system metrics, the
standard MLflow source tags (user, source, git commit, description) and the Prefect flow run it belongs to; child
runs (one per dose) that start with it; FINISHED at the end, FAILED when the flow fails or reports failures.

    with live_run(tracker, "reconstruct head_ct", "reconstruct", source="flows/reconstruct.py",
                  description="...", params={...}) as live:
        dose_run = live.child(0.25, "dose 0.25", "reconstruct-dose")
        ...                      # compute; log metrics into live.run_id / dose_run at the end
        live.fail()              # some work failed: the run ends FAILED without an exception
"""

from __future__ import annotations

import getpass
import logging
import re
import subprocess
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from flows.tracking.store import Tracker

SYSTEM_METRICS_INTERVAL_S = 2.0
"""Seconds between system-metric samples (CPU, memory, disk, network, GPU where present); short, so a flow of a few
seconds still records some. $MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it."""
PREFECT_ID_TAG = "prefect.flow_run.id"
PREFECT_URL_TAG = "prefect.flow_run.url"
PREFECT_NAME_TAG = "prefect.flow_run.name"


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def prefect_flow_run_tags() -> dict[str, str]:
    """The id, name and UI address of the Prefect flow run this code runs in ({} outside a flow run; no address
    when the API has no UI, such as the ephemeral one)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    run_id = flow_run.get_id()
    if not run_id:
        return {}
    tags = {PREFECT_ID_TAG: str(run_id), PREFECT_NAME_TAG: str(flow_run.get_name() or "")}
    api = PREFECT_API_URL.value()
    ui = PREFECT_UI_URL.value() or (api.rstrip("/").removesuffix("/api") if api else None)
    if ui:
        tags[PREFECT_URL_TAG] = f"{ui.rstrip('/')}/flow-runs/flow-run/{run_id}"
    return tags


def source_tags(source: str, description: str) -> dict[str, str]:
    """MLflow's own run tags: who ran what, from which commit, and a description shown on the run's page."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    tags = {
        "mlflow.user": user,
        "mlflow.source.name": source,
        "mlflow.source.type": "JOB",
        "mlflow.note.content": description,
    }
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def system_metrics(tracker: Tracker, run_id: str, resume: bool = False) -> SystemMetricsMonitor:
    """A started monitor logging `system/…` metrics into the run every SYSTEM_METRICS_INTERVAL_S until `finish()`
    (or the run ends); `resume` continues the steps of a resumed run."""
    quiet = logging.getLogger("mlflow.system_metrics")
    quiet.setLevel(max(quiet.level, logging.WARNING))  # it logs every start and stop at INFO
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=resume, tracking_uri=tracker.uri
    )
    monitor.start()
    return monitor


class LiveRun:
    """A parent run started now (with its system-metrics monitor) and the child runs started under it."""

    def __init__(
        self,
        tracker: Tracker,
        name: str,
        kind: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.tracker = tracker
        self.run_id = tracker.start_run(name, kind, tags=tags)
        self.params_logged = bool(params)
        if params:
            tracker.log_params(self.run_id, params)
        self.failed = False
        self.children: dict[Hashable, str] = {}
        self.ended: set[str] = set()
        self.monitor = system_metrics(tracker, self.run_id)

    @property
    def url(self) -> str:
        """The run's web address."""
        return self.tracker.run_url(self.run_id)

    def child(
        self,
        key: Hashable,
        name: str,
        kind: str,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        parent: str | None = None,
    ) -> str:
        """The child run `key` (under `parent`, default this run), started RUNNING on first use with its tags and
        params."""
        if key not in self.children:
            run = self.tracker.start_run(name, kind, parent_id=parent or self.run_id, tags=tags)
            if params:
                self.tracker.log_params(run, params)
            self.children[key] = run
        return self.children[key]

    def end_child(self, key: Hashable, failed: bool = False) -> None:
        """End a child run FINISHED (or FAILED)."""
        run = self.children[key]
        if run not in self.ended:
            self.tracker.client.set_terminated(run, status="FAILED" if failed else "FINISHED")
            self.ended.add(run)

    def fail(self) -> None:
        """Make the run end FAILED (work failed without the flow raising yet)."""
        self.failed = True

    def end(self, failed: bool = False) -> None:
        """Stop the system metrics and end the children still running and the run: FAILED if `failed` or `fail()`
        was called, else FINISHED."""
        self.monitor.finish()
        status = "FAILED" if failed or self.failed else "FINISHED"
        for run in [*self.children.values(), self.run_id]:
            if run not in self.ended:
                self.tracker.client.set_terminated(run, status=status)
                self.ended.add(run)


@contextmanager
def live_run(
    tracker: Tracker | None,
    name: str,
    kind: str,
    source: str,
    description: str,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[LiveRun | None]:
    """A LiveRun tagged with `source_tags`, the Prefect flow run and `tags`, ended FAILED if the block raises;
    None without a tracker."""
    if tracker is None:
        yield None
        return
    live = LiveRun(
        tracker, name, kind, {**source_tags(source, description), **prefect_flow_run_tags(), **(tags or {})}, params
    )
    try:
        yield live
    except BaseException:
        live.end(failed=True)
        raise
    live.end()

"""`need ui`: the MLflow UI of the configured local store on 127.0.0.1, announced only once it answers, at the runs
table of the experiment a person most likely wants (the named one, else the one with the newest run)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from flows.runtime import die_with_parent

UI_HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # `mlflow ui` takes ~13 s here; a loaded machine several times that


def ui_command(uri: str, host: str = UI_HOST, port: int = 5000) -> list[str]:
    """The `mlflow ui` command line serving the local store `uri` on host:port."""
    if urlparse(uri).scheme.lower() in ("http", "https"):
        raise ValueError(f"the tracking store is already a server: open {uri} in a browser")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]


def require_free_port(port: int, host: str = UI_HOST) -> None:
    """A clear error, before anything starts, when `port` is taken on `host` (a server listens there; connections
    of a server that just stopped, in TIME_WAIT, do not count, as they do not stop `mlflow ui` from binding)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"port {port} on {host} is in use ({err.strerror}): choose another with --port") from None


def runs_table_url(uri: str, port: int, experiment: str | None = None) -> str:
    """The UI address of an experiment's runs table: `experiment`, else the one holding the newest run (the
    experiments list when the store has no runs)."""
    base = f"http://{UI_HOST}:{port}/#/experiments"
    client = MlflowClient(uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no experiment {experiment!r} in {uri}; experiments: {names}")
        return f"{base}/{found.experiment_id}/runs"
    ids = [e.experiment_id for e in client.search_experiments()]
    newest = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
    return f"{base}/{newest[0].info.experiment_id}/runs" if newest else base


def wait_until_answering(
    process: subprocess.Popen, port: int, log: IO[str], timeout_s: float = START_TIMEOUT_S
) -> None:
    """Return once the UI's /health answers; an error with the server's last log line if it exits first, or if it
    does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            last = [line.strip() for line in log.read().splitlines() if line.strip()][-1:] or ["no output"]
            raise RuntimeError(f"mlflow ui exited with status {process.returncode} on port {port}: {last[0]}")
        try:
            with urllib.request.urlopen(f"http://{UI_HOST}:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within {timeout_s:.0f} s")


@contextmanager
def served_ui(uri: str, port: int, verbose: bool = False) -> Iterator[subprocess.Popen]:
    """`mlflow ui` for `uri` on 127.0.0.1:`port`, answering when the block starts, stopped when it ends (and killed
    with this process however it dies); its own log lines show only when `verbose`."""
    require_free_port(port)
    with tempfile.TemporaryFile("w+") as log:
        output = None if verbose else log
        process = subprocess.Popen(
            die_with_parent(ui_command(uri, port=port)), stdout=output or subprocess.DEVNULL, stderr=output
        )
        try:
            wait_until_answering(process, port, log)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

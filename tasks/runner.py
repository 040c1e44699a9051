"""The Dask task runner every flow uses: a LocalCluster sized to the machine, or an existing cluster by address."""
from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner


def dask_task_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """One single-threaded worker process per core by default (ASTRA's CPU projector and torch each use one core well)."""
    if address:
        return DaskTaskRunner(address=address)
    n_workers = workers or os.cpu_count() or 1
    if n_workers < 1:
        raise ValueError(f"need at least one Dask worker, got {n_workers}")
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )

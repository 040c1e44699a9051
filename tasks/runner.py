"""The Dask task runner every flow uses: a LocalCluster sized to the machine, or an existing cluster by address."""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

from need_core.device import resolve_device

LOCAL_CLUSTER = {"threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
"""Every local cluster: single-threaded worker processes; scheduler and dashboard on loopback, on free ports."""


def uses_gpu(device: str) -> bool:
    """Whether tasks run on CUDA: `cuda[:N]`, or `auto` on a machine with a GPU (then they ask for the GPU resource)."""
    return resolve_device(device).type == "cuda"


def dask_task_runner(address: str | None = None, workers: int | None = None, gpu: bool = False) -> DaskTaskRunner:
    """One single-threaded worker process per core by default (ASTRA's CPU projector and torch each use one core well).

    With `gpu`, a local cluster gets one worker per visible GPU, each offering the Dask resource GPU=1 that GPU
    tasks ask for; on an existing cluster, start workers with `--resources GPU=1` yourself.
    """
    if address:
        return DaskTaskRunner(address=address)
    if gpu:
        import torch

        n_gpus = torch.cuda.device_count()
        if n_gpus < 1:
            raise ValueError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu or auto")
        return DaskTaskRunner(cluster_kwargs={**LOCAL_CLUSTER, "n_workers": workers or n_gpus, "resources": {"GPU": 1}})
    n_workers = workers or os.cpu_count() or 1
    if n_workers < 1:
        raise ValueError(f"need at least one Dask worker, got {n_workers}")
    return DaskTaskRunner(cluster_kwargs={**LOCAL_CLUSTER, "n_workers": n_workers})

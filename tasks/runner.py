"""The Dask task runner every flow uses: a LocalCluster sized to the machine, or an existing cluster by address.

A local cluster's worker processes are deaf to SIGINT: a Ctrl-C in the terminal reaches the whole process group, and
the command (flows.runtime) closes the cluster itself instead of each worker dying mid-task with its own traceback.
They still exit by themselves when the command's process dies (distributed's parent-alive pipe), however it dies.

Each worker process computes with one torch / BLAS thread (WORKER_ENVIRONMENT): DGDiff's results depend on the
thread count at the 1e-4 HU level, so one thread everywhere keeps a stored slice the same whatever the worker count
(bench/results/throughput.json measures what one 2-thread worker would gain).
"""

from __future__ import annotations

import os
import signal
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from need_core.device import resolve_device

WORKER_ENVIRONMENT: dict[str, int | None] = {
    "OMP_NUM_THREADS": 1,
    "MKL_NUM_THREADS": 1,
    "OPENBLAS_NUM_THREADS": 1,
    "MALLOC_TRIM_THRESHOLD_": None,
}
"""Environment every local worker process starts with (Dask's `distributed.nanny.pre-spawn-environ`, set for this
process below): one thread per worker for torch, OpenMP and BLAS (Dask's default too), and glibc's own heap trimming
instead of Dask's MALLOC_TRIM_THRESHOLD_=65536, under which torch's chunks spend their time in page faults (up to 2x
slower, bit-identical results: bench/throughput.py `levers`). A variable already set in the environment wins, as in
Dask."""
dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRONMENT})

LOCAL_CLUSTER = {
    "threads_per_worker": 1,
    "processes": True,
    "host": "127.0.0.1",
    "dashboard_address": "127.0.0.1:0",
    "preload_nanny": ["tasks.runner"],
}
"""Every local cluster: single-threaded worker processes deaf to SIGINT (dask_setup below); scheduler and dashboard
on loopback, on free ports."""


def dask_setup(nanny: Any) -> None:
    """Nanny preload (LOCAL_CLUSTER's `preload_nanny`): block SIGINT in the cluster's event-loop thread, where the
    nannies start their worker processes (restarts included) from threads that inherit the mask; a blocked signal
    stays blocked across fork and exec, so the workers never see SIGINT. Python runs signal handlers in the main
    thread only, so blocking the signal in a helper thread costs this process nothing.

    multiprocessing's resource tracker unblocks SIGINT in the thread that first starts it, so it is started first."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


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
        return DaskTaskRunner(
            cluster_kwargs={**LOCAL_CLUSTER, "n_workers": workers or n_gpus, "resources": {"GPU": 1}},
        )
    n_workers = workers or os.cpu_count() or 1
    if n_workers < 1:
        raise ValueError(f"need at least one Dask worker, got {n_workers}")
    return DaskTaskRunner(cluster_kwargs={**LOCAL_CLUSTER, "n_workers": n_workers})

"""The local Dask cluster every flow starts listens on loopback only, and `auto` picks the GPU exactly when one is
visible."""

from __future__ import annotations

import psutil
import torch
from distributed import LocalCluster

from tasks.runner import LOCAL_CLUSTER, uses_gpu


def listening_addresses(process: psutil.Process) -> set[str]:
    """Local IP addresses on which the process or any of its children listens (TCP)."""
    addresses = set()
    for member in [process, *process.children(recursive=True)]:
        addresses |= {c.laddr.ip for c in member.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    return addresses


def test_local_cluster_scheduler_dashboard_and_workers_listen_on_loopback_only():
    with LocalCluster(n_workers=1, **LOCAL_CLUSTER) as cluster:
        cluster.wait_for_workers(1)
        addresses = listening_addresses(psutil.Process())
    assert addresses, "the cluster should listen somewhere"
    assert addresses == {"127.0.0.1"}


def test_auto_means_the_gpu_exactly_when_one_is_visible():
    assert uses_gpu("auto") == torch.cuda.is_available()
    assert not uses_gpu("cpu")

"""The local Dask cluster every flow starts listens on loopback only, its workers never see a Ctrl-C and compute with
one thread and glibc's own heap trimming; `auto` picks the GPU exactly when one is visible."""

from __future__ import annotations

import os
import signal

import psutil
import torch
from distributed import Client, LocalCluster

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


def blocked_signals(pid: int) -> int:
    """The blocked-signal mask of a process's main thread (Linux /proc)."""
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for {pid}")


def live_children() -> list[psutil.Process]:
    """This process's children that still run: one another test left exited but unreaped (a zombie) has no command
    line to read."""
    alive = []
    for child in psutil.Process().children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_local_cluster_workers_never_see_sigint_and_this_process_still_does():
    """A Ctrl-C reaches the whole process group: the workers must leave it to the command (flows.runtime)."""
    with LocalCluster(n_workers=1, **LOCAL_CLUSTER) as cluster:
        cluster.wait_for_workers(1)
        workers = [p for p in live_children() if "spawn_main" in " ".join(p.cmdline())]
        assert workers
        for worker in workers:
            assert blocked_signals(worker.pid) & (1 << (signal.SIGINT - 1))
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_local_cluster_workers_compute_with_one_thread_and_glibcs_own_heap_trimming():
    """Dask's default MALLOC_TRIM_THRESHOLD_=65536 makes torch chunks up to 2x slower; one thread keeps results the
    same whatever the worker count (tasks.runner.WORKER_ENVIRONMENT)."""
    with LocalCluster(n_workers=1, **LOCAL_CLUSTER) as cluster, Client(cluster) as client:
        (seen,) = client.run(worker_threads_and_trim).values()
    assert seen == (1, os.environ.get("MALLOC_TRIM_THRESHOLD_"))


def worker_threads_and_trim() -> tuple[int, str | None]:
    """What a worker process computes with: torch's thread count and glibc's trim threshold variable."""
    return torch.get_num_threads(), os.environ.get("MALLOC_TRIM_THRESHOLD_")

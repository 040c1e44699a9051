"""Per-slice progress from inside a running chunk: a task on a Dask worker reports each slice as it leaves a stage,
as a Dask event the flow's client subscribes to (flows.progress), so the terminal's bar moves per slice rather than
per chunk. Outside a Dask worker (a chunk function called in-process, a benchmark's reference) reporting is a
no-op."""

from __future__ import annotations

from collections.abc import Iterable

RECONSTRUCT_PROGRESS_TOPIC = "need-reconstruct-progress"
"""The Dask event topic of reconstruct chunks' per-slice progress."""


def report_slices(topic: str, archive_path: str, dose: float, stage: str, slices: Iterable[int]) -> None:
    """Tell the flow that `slices` of the study at `archive_path` have left `stage` at `dose` (none: nothing sent)."""
    from distributed import get_worker

    listed = [int(s) for s in slices]
    try:
        worker = get_worker()
    except ValueError:  # not running on a Dask worker: nobody listens
        return
    if listed:
        worker.log_event(topic, {"archive": archive_path, "dose": float(dose), "stage": stage, "slices": listed})

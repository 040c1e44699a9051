"""The terminal's progress bar of a reconstruct run, moved per slice: chunks on Dask workers report each slice as it
leaves SPDiff and DGDiff (tasks.progress), and the flow's Dask client hears them while it waits for the chunks.
A chunk's end counts all its slices (failed ones too), so a run whose events are lost still ends at 100 %, and a
retried chunk's second report of a slice counts once."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from prefect.context import FlowRunContext
from tqdm.auto import tqdm

from tasks.progress import RECONSTRUCT_PROGRESS_TOPIC

SliceDose = tuple[str, float, int]
"""(archive path as the task received it, dose, slice)."""


class SliceProgress:
    """A tqdm bar over a run's slice-doses: finished = refined by DGDiff or in a chunk that ended; its postfix counts
    the slices past SPDiff. Use as a context manager inside the flow, entered before the chunks are submitted: it
    subscribes to their events on entry, and Dask does not replay events published before that to a new subscriber."""

    def __init__(self, expected: Iterable[SliceDose], desc: str = "reconstruct") -> None:
        self.expected = set(expected)
        self.denoised: set[SliceDose] = set()
        self.finished: set[SliceDose] = set()
        self.lock = threading.Lock()
        self.bar = tqdm(total=len(self.expected), desc=desc, unit="slice")
        self.client: Any = None

    def __enter__(self) -> SliceProgress:
        context = FlowRunContext.get()
        client = getattr(context.task_runner, "client", None) if context else None
        if client is not None:  # a Dask task runner: its workers' events reach this process
            client.subscribe_topic(RECONSTRUCT_PROGRESS_TOPIC, self.on_event)
            self.client = client
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.client is not None:
            self.client.unsubscribe_topic(RECONSTRUCT_PROGRESS_TOPIC)
        self.bar.close()

    def on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        """A chunk's report (Dask calls this in its client thread): slices that left SPDiff or DGDiff."""
        _, message = event
        slices = {(message["archive"], float(message["dose"]), int(s)) for s in message["slices"]}
        if message["stage"] == "spdiff":
            self.count(denoised=slices)
        elif message["stage"] == "dgdiff":
            self.count(denoised=slices, finished=slices)

    def chunk_ended(self, archive: str, dose: float, slices: Iterable[int]) -> None:
        """Every slice of an ended chunk is finished, done or failed."""
        ended = {(archive, float(dose), int(s)) for s in slices}
        self.count(finished=ended)

    def count(self, denoised: Iterable[SliceDose] = (), finished: Iterable[SliceDose] = ()) -> None:
        """Add slices to the tallies (only this run's, each once) and redraw the bar."""
        with self.lock:
            self.denoised |= self.expected.intersection(denoised)
            self.finished |= self.expected.intersection(finished)
            self.bar.set_postfix_str(f"{len(self.denoised)} past SPDiff", refresh=False)
            self.bar.update(len(self.finished) - self.bar.n)

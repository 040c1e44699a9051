"""Per-slice progress of a reconstruct run: chunks on Dask workers report slices as they leave SPDiff and DGDiff,
and the flow's bar counts each slice-dose of the run once, whatever arrives twice, late or not at all."""

from __future__ import annotations

from distributed import Client

from flows.progress import SliceProgress
from tasks.progress import RECONSTRUCT_PROGRESS_TOPIC, report_slices


def event(stage: str, slices: list[int], archive: str = "a.zarr", dose: float = 0.25) -> tuple[float, dict]:
    return 0.0, {"archive": archive, "dose": dose, "stage": stage, "slices": slices}


def test_the_bar_counts_refined_slices_once_and_the_postfix_denoised_ones():
    expected = [("a.zarr", 0.25, s) for s in range(4)] + [("b.zarr", 0.25, 0)]
    with SliceProgress(expected) as progress:  # outside a flow: nothing to subscribe to
        progress.on_event(event("spdiff", [0, 1, 2, 3]))
        assert progress.bar.n == 0 and len(progress.denoised) == 4
        progress.on_event(event("dgdiff", [0]))
        progress.on_event(event("dgdiff", [0]))  # a retried chunk reports its slices again
        progress.on_event(event("dgdiff", [9]))  # a slice of the cell that this run does not write
        progress.on_event(event("dgdiff", [1], dose=0.1))  # another dose's
        assert progress.bar.n == 1
        progress.chunk_ended("a.zarr", 0.25, [0, 1, 2, 3])  # the chunk's end counts the slices never heard
        assert progress.bar.n == 4
        progress.chunk_ended("b.zarr", 0.25, [0])  # a failed chunk finishes its slices too
        assert progress.bar.n == progress.bar.total == 5
        assert "4 past SPDiff" in str(progress.bar)


def test_a_task_on_a_dask_worker_reports_to_the_subscribed_client_and_elsewhere_reports_to_nobody(dask_address):
    report_slices(RECONSTRUCT_PROGRESS_TOPIC, "a.zarr", 0.25, "dgdiff", [3])  # in this process: a no-op
    heard: list[dict] = []
    with Client(dask_address) as client:
        client.subscribe_topic(RECONSTRUCT_PROGRESS_TOPIC, lambda e: heard.append(e[1]))
        client.submit(report_slices, RECONSTRUCT_PROGRESS_TOPIC, "a.zarr", 0.25, "dgdiff", [3, 4], pure=False).result()
        client.submit(lambda: None, pure=False).result()  # a round trip after the event: it has arrived
        client.unsubscribe_topic(RECONSTRUCT_PROGRESS_TOPIC)
    (message,) = heard
    assert {k: message[k] for k in ("archive", "dose", "stage")} == {
        "archive": "a.zarr",
        "dose": 0.25,
        "stage": "dgdiff",
    }
    assert list(message["slices"]) == [3, 4]

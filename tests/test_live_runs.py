"""MLflow runs of the reconstruct and evaluate flows on a real store and a real Prefect API: RUNNING while the flow
computes, standard tags and the Prefect flow run, metrics over exactly the slices a run wrote, the long-format table,
Prefect artifacts, no run for a rerun with nothing to do, FAILED when slices fail, and a copied store that keeps to
its own folder."""

from __future__ import annotations

import shutil
import threading
import time
from uuid import UUID

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.evaluate import evaluate
from flows.ingest import run_ingest
from flows.reconstruct import ReconstructFailed, run_reconstruct
from flows.tracking.live import PREFECT_ID_TAG, git_commit
from flows.tracking.quality_runs import QUALITY_TABLE
from flows.tracking.store import Tracker
from storage.archive import open_archive
from tasks.evaluation import TABLE_COLUMNS, evaluate_dose
from tasks.quick_models import write_tiny_models
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

DOSES = [0.5, 0.1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, head_ct_path, tracking_store, dask_address):
    """An ingested 6-slice archive (doses 0.5, 0.1) and tiny model checkpoints."""
    root = tmp_path_factory.mktemp("live")
    source = write_small_head_npy(head_ct_path, root)
    archive = root / "pristine.zarr"
    run_ingest(
        sources=source,
        catalog=str(archive),
        doses=DOSES,
        seed=1,
        chunk_slices=3,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )
    spdiff_path, dgdiff_path = write_tiny_models(archive, root)
    return archive, spdiff_path, dgdiff_path


def runner(prepared, dask_address, archive, experiment):
    _, spdiff_path, dgdiff_path = prepared

    def run(**overrides):
        params = dict(
            catalog=str(archive),
            doses=DOSES,
            spdiff=spdiff_path,
            dgdiff=dgdiff_path,
            chunk_slices=2,
            device="cpu",
            dask_address=dask_address,
            experiment=experiment,
        )
        return run_reconstruct(**(params | overrides))

    return run


def runs_of(tracker: Tracker, kind: str) -> list:
    return tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.`need.run_kind` = '{kind}'",
        order_by=["attributes.start_time ASC"],
    )


def flow_run_artifacts(flow_run_id: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


def flow_run_name(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(flow_run_id)).name


class StatusPoller(threading.Thread):
    """Polls the store from a second thread and records the status of every reconstruct run it sees."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__(daemon=True)
        self.tracker, self.seen, self.stop = tracker, {}, threading.Event()

    def run(self) -> None:
        client = Tracker(self.tracker.uri, self.tracker.experiment).client
        while not self.stop.is_set():
            for run in client.search_runs(
                [self.tracker.experiment_id], filter_string="tags.`need.run_kind` LIKE 're%'"
            ):
                self.seen.setdefault(run.info.run_id, set()).add(run.info.status)
            time.sleep(0.1)


def test_a_reconstruct_run_is_live_scores_what_it_made_and_shows_in_prefect(
    prepared, dask_address, tracking_store, tmp_path
):
    archive = tmp_path / "head.zarr"
    shutil.copytree(prepared[0], archive)
    run = runner(prepared, dask_address, archive, "live-runs")
    tracker = Tracker(tracking_store, "live-runs")
    poller = StatusPoller(tracker)
    poller.start()
    try:
        first = run()
    finally:
        poller.stop.set()
        poller.join()
    (parent,) = runs_of(tracker, "reconstruct")
    assert parent.info.status == "FINISHED"
    assert "RUNNING" in poller.seen[parent.info.run_id]
    children = runs_of(tracker, "reconstruct-dose")
    assert len(children) == 2 and all("RUNNING" in poller.seen[c.info.run_id] for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert first["tracking"]["parent_run_id"] == parent.info.run_id

    tags = parent.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.name"] == "flows/reconstruct.py"
    assert "doses 0.5,0.1" in tags["mlflow.note.content"] and str(archive.resolve()) in tags["mlflow.note.content"]
    if git_commit():
        assert tags["mlflow.source.git.commit"] == git_commit()
    assert flow_run_name(tags[PREFECT_ID_TAG]) == "reconstruct head · 0.5,0.1"
    assert tags["prefect.flow_run.url"].endswith(f"/flow-runs/flow-run/{tags[PREFECT_ID_TAG]}")
    full = tracker.client.get_run(parent.info.run_id)
    assert full.inputs.dataset_inputs and full.inputs.dataset_inputs[0].dataset.digest
    assert any(key.startswith("system/") for key in full.data.metrics)
    assert full.data.metrics["need_psnr_d0.1"] > 0

    artifacts = flow_run_artifacts(tags[PREFECT_ID_TAG])
    by_type = {a.type: a for a in artifacts}
    assert by_type["progress"].data == pytest.approx(100.0)
    assert "| 0.1 | need |" in by_type["markdown"].data and parent.info.run_id in by_type["markdown"].data
    assert "table" not in by_type  # nothing failed

    methods = runs_of(tracker, "reconstruct-method")
    assert sorted((m.data.params["dose"], m.data.params["method"]) for m in methods) == sorted(
        (str(d), m) for d in DOSES for m in ("fbp_ld", "spdiff_fbp", "need")
    )
    need_run = next(m for m in methods if m.data.params["method"] == "need")
    assert {"psnr", "ssim", "rmse_hu"} <= set(need_run.data.metrics)
    assert need_run.data.params["dgdiff_model"] == parent.data.params["dgdiff_identity"]  # not registered

    # slices 2-3 of dose 0.1 are redone: the new run scores exactly them, the archive's state apart
    open_archive(archive, mode="r+").mark("reconstruct", [2, 3], "pending", dose=0.1)
    run()
    latest = runs_of(tracker, "reconstruct")[-1]
    (dose_run,) = [
        c for c in runs_of(tracker, "reconstruct-dose") if c.data.tags["mlflow.parentRunId"] == latest.info.run_id
    ]
    assert dose_run.data.params["dose"] == "0.1" and dose_run.data.params["n_slices"] == "2"
    assert dose_run.data.tags["need.recomputed_slices"] == "2-3"
    expected = {row["method"]: row for row in evaluate_dose(str(archive), 0.1, [2, 3]).summary}
    whole = {row["method"]: row for row in evaluate_dose(str(archive), 0.1).summary}
    assert dose_run.data.metrics["need_psnr"] == pytest.approx(expected["need"]["psnr"])
    assert dose_run.data.metrics["archive_need_psnr"] == pytest.approx(whole["need"]["psnr"])
    assert dose_run.data.metrics["archive_n_slices"] == 6
    history = tracker.client.get_metric_history(dose_run.info.run_id, "slice/need_psnr")
    assert sorted(point.step for point in history) == [2, 3]
    table = tracker.client.load_table(tracker.experiment_id, QUALITY_TABLE, run_ids=[latest.info.run_id])
    assert list(table.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert len(table) == 3 * 2 and sorted(set(table["slice"])) == [2, 3] and set(table["dose"]) == {0.1}
    assert set(table.loc[table.method == "fbp_ld", "dgdiff_model"]) == {""}
    assert set(table.loc[table.method == "need", "dgdiff_model"]) == {parent.data.params["dgdiff_identity"]}

    # nothing to do: no new run
    again = run()
    assert again["tracking"] == {"noop": "nothing to compute"}
    assert len(runs_of(tracker, "reconstruct")) == 2


def test_a_run_with_failed_slices_ends_failed_and_lists_them_in_prefect(
    prepared, dask_address, tracking_store, tmp_path
):
    archive = tmp_path / "broken.zarr"
    shutil.copytree(prepared[0], archive)
    store = open_archive(archive, mode="r+")
    good = store.read("proj_ld", 2, 3, dose=0.1)
    store.write("proj_ld", 2, np.full_like(good, 5e4), dose=0.1)  # raw counts where transmission belongs
    with pytest.raises(ReconstructFailed):
        runner(prepared, dask_address, archive, "failed-runs")()
    tracker = Tracker(tracking_store, "failed-runs")
    (parent,) = runs_of(tracker, "reconstruct")
    assert parent.info.status == "FAILED"
    statuses = {c.data.params["dose"]: c.info.status for c in runs_of(tracker, "reconstruct-dose")}
    assert statuses == {"0.5": "FINISHED", "0.1": "FAILED"}
    artifacts = {a.type: a for a in flow_run_artifacts(parent.data.tags[PREFECT_ID_TAG])}
    failed = artifacts["table"].data
    assert "slice 2" in str(failed) and parent.info.run_id in artifacts["table"].description


def test_an_unchanged_evaluation_logs_nothing_new(prepared, dask_address, tracking_store, tmp_path):
    archive = tmp_path / "scored.zarr"
    shutil.copytree(prepared[0], archive)
    runner(prepared, dask_address, archive, "evaluations")(doses=[0.5], tracking=False)
    first = evaluate(catalog=str(archive), experiment="evaluations")
    second = evaluate(catalog=str(archive), experiment="evaluations")
    tracker = Tracker(tracking_store, "evaluations")
    (only,) = runs_of(tracker, "evaluate")
    assert first["parent_run_id"] == second["parent_run_id"] == only.info.run_id
    assert first["table"] == second["table"]
    assert only.data.tags["mlflow.source.name"] == "flows/evaluate.py"
    assert flow_run_name(only.data.tags[PREFECT_ID_TAG]) == "evaluate scored · all doses"
    table = tracker.client.load_table(tracker.experiment_id, QUALITY_TABLE, run_ids=[only.info.run_id])
    assert len(table) == 3 * 6


def test_a_copied_store_writes_into_its_own_folder(tmp_path, monkeypatch):
    original = tmp_path / "original"
    original.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("an artifact")
    tracker = Tracker(f"sqlite:///{original / 'mlflow.db'}", "copied")
    before = tracker.start_run("before", "test")
    tracker.log_artifact(before, note)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    copied = Tracker(f"sqlite:///{copy / 'mlflow.db'}", "copied")
    assert copied.copied_from == (original / "mlartifacts").as_uri()
    after = copied.start_run("after", "test")
    copied.log_artifact(after, note, "new")
    assert (copy / "mlartifacts" / after / "artifacts" / "new" / "note.txt").is_file()
    assert not (original / "mlartifacts" / after).exists()
    old = copied.client.get_run(before).info.artifact_uri
    assert old == (copy / "mlartifacts" / before / "artifacts").as_uri()
    assert Tracker(f"sqlite:///{original / 'mlflow.db'}", "copied").copied_from is None  # the original is no copy

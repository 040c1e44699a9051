"""Metrics from the archive: `need evaluate` re-logs a run made without tracking, a reconstruct run's scoring and its
logging fail separately, and no PHI of an ingested DICOM series reaches MLflow (params, tags, metrics, run names or
artifacts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from flows.cli import main
from flows.ingest import run_ingest
from flows.models import resolve_model
from flows.reconstruct import StudyPlan, run_reconstruct
from flows.reconstruct_tracking import track_reconstruct
from flows.tracking.store import Tracker, default_experiment
from storage.archive import open_archive
from storage.catalog import open_catalog
from tasks.evaluation import NothingToEvaluate, evaluate_dose, pick_panel_slices
from tasks.quick_models import write_tiny_models
from tasks.reconstruct import ReconstructOptions
from tests.pipeline_fixtures import only_study
from tests.test_readers_dicom import PHI_BIRTH, PHI_ID, PHI_NAME, write_series

PHI_STRINGS = (PHI_NAME, PHI_ID, PHI_BIRTH, "Doe", "Jane")


@pytest.fixture(scope="module")
def store(tracking_store):
    """The module's tracking store URI."""
    return tracking_store


@pytest.fixture(scope="module")
def dicom_archive(tmp_path_factory, store, dask_address):
    """A 4-slice DICOM series with a known patient name and ID, ingested at dose 0.25 and reconstructed with
    tracking and once more (a second archive) without it."""
    root = tmp_path_factory.mktemp("dicom")
    write_series(root / "series", n_slices=4)
    archive = root / "ct.zarr"
    run_ingest(
        sources=str(root / "series"),
        catalog=str(archive),
        doses=[0.25],
        seed=2,
        chunk_slices=2,
        dask_address=dask_address,
    )
    spdiff_path, dgdiff_path = write_tiny_models(archive, root, train_steps=2)
    run_reconstruct(
        catalog=str(archive),
        doses=[0.25],
        spdiff=spdiff_path,
        dgdiff=dgdiff_path,
        chunk_slices=2,
        device="cpu",
        dask_address=dask_address,
    )
    return archive, spdiff_path, dgdiff_path


def test_evaluate_relogs_a_reconstruct_run_made_without_tracking(store, dicom_archive, tmp_path, dask_address, capsys):
    source, spdiff_path, dgdiff_path = dicom_archive
    archive = tmp_path / "untracked.zarr"
    shutil.copytree(source, archive)
    store_archive = open_archive(archive, mode="r+")
    for dose in store_archive.doses:
        store_archive.mark("reconstruct", range(store_archive.n_slices), "pending", dose=dose)
    with pytest.raises(NothingToEvaluate, match="need reconstruct"):
        evaluate_dose(str(archive), 0.25)
    summary = run_reconstruct(
        catalog=str(archive),
        doses=[0.25],
        spdiff=spdiff_path,
        dgdiff=dgdiff_path,
        chunk_slices=4,
        device="cpu",
        dask_address=dask_address,
        tracking=False,
    )
    assert summary["tracking"] == {"disabled": True}

    assert main(["evaluate", str(archive), "--experiment", "relog"]) == 0
    printed = capsys.readouterr().out
    assert "| 0.25 | need |" in printed
    tracker = Tracker(store, "relog")
    children = tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.`need.run_kind` = 'evaluate-dose'"
    )
    assert len(children) == 1
    logged = children[0].data.metrics
    expected = {row["method"]: row for row in evaluate_dose(str(archive), 0.25).summary}
    for method in ("fbp_ld", "spdiff_fbp", "need"):
        assert logged[f"{method}_psnr"] == pytest.approx(expected[method]["psnr"])
        assert logged[f"{method}_rmse_hu"] == pytest.approx(expected[method]["rmse_hu"])
    assert children[0].data.params["spdiff_identity"] in only_study(summary)["result_key"]


def test_reconstruct_scoring_and_logging_fail_separately(store, dicom_archive):
    archive, spdiff_path, dgdiff_path = dicom_archive
    spdiff_model, dgdiff_model = resolve_model(spdiff_path, "spdiff"), resolve_model(dgdiff_path, "dgdiff")

    catalog = open_catalog(archive)
    (row,) = catalog.rows()
    plans = {row.study: StudyPlan(row.study, catalog.study(row.study), "key", {})}

    def track(tracker: Tracker, dose: float = 0.25) -> dict:
        summary = {row.study: {"result_key": "key", "doses": {dose: {"done": [], "failed": {}}}}}
        return track_reconstruct(
            tracker, catalog, plans, summary, (spdiff_model, dgdiff_model), ReconstructOptions(device="cpu")
        )

    assert track(Tracker(store, "separate-failures"), dose=0.3)["error"].startswith("evaluation failed: ")

    class LostStore(Tracker):
        def start_run(self, *args, **kwargs):
            raise ConnectionError("the store went away")

    logged = track(LostStore(store, "separate-failures"))
    assert logged["error"].startswith("MLflow logging failed: ConnectionError: the store went away")
    assert "need evaluate" in logged["error"]


def test_panel_slices_are_spread_over_the_volume():
    assert pick_panel_slices(list(range(10)), 3) == [0, 4, 9]  # round(4.5) -> 4 (banker's rounding)
    assert pick_panel_slices([2, 3], 3) == [2, 3]


def test_no_patient_identifiers_reach_mlflow(store, dicom_archive, tmp_path):
    archive, _, _ = dicom_archive
    assert main(["evaluate", str(archive)]) == 0
    tracker = Tracker(store, default_experiment(archive))
    client = tracker.client
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) >= 4  # reconstruct parent + dose child, evaluate parent + dose child
    for run in runs:
        texts = [
            run.info.run_name,
            *run.data.params,
            *run.data.params.values(),
            *run.data.tags.values(),
            *run.data.tags,
            *run.data.metrics,
        ]
        for phi in PHI_STRINGS:
            assert not any(phi in text for text in texts), (phi, run.info.run_id)
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        files = [p for p in folder.rglob("*") if p.is_file()]
        for path in files:
            data = path.read_bytes()
            for phi in (PHI_NAME, PHI_ID, PHI_BIRTH):
                assert phi.encode() not in data, (phi, path)
            if path.suffix == ".png":
                metadata = " ".join(f"{k}={v}" for k, v in Image.open(path).info.items())
                assert not any(phi in metadata for phi in PHI_STRINGS)
            else:
                assert not any(phi in data.decode() for phi in PHI_STRINGS)
    assert any(run.data.tags.get("need.run_kind") == "reconstruct-dose" for run in runs)

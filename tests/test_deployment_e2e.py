"""Deployments from prefect.yaml run end to end: deploy, trigger, a process worker picks the run up, the catalog
fills; the nightly cohort job, run twice, does only what is new; the nightly PACS job pulls a study of the day from a
real Orthanc and stores its NEED series back."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State

from flows.ingest import run_ingest
from flows.models import SHIPPED_FILES
from flows.registration import register_shipped_models
from flows.tracking.registry import CHAMPION, REGISTERED_NAMES
from flows.tracking.store import open_tracker
from storage.archive import open_archive
from storage.catalog import open_catalog
from storage.readers import read_volume
from storage.readers.series import discover_series
from tasks.quick_models import write_tiny_models
from tests.cohort_fixtures import add_series
from tests.orthanc_server import orthanc, write_study  # noqa: F401 (orthanc: a fixture)
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
DOSE = 0.25
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
MODELS = ("spdiff", "dgdiff")


def prefect(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the prefect CLI from the repository root against the test API (PREFECT_API_URL is inherited)."""
    result = subprocess.run(
        ["prefect", "--no-prompt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PWD": str(ROOT)},
    )
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def run_on_a_process_worker(deployment: str, params: dict[str, Any]) -> State:
    """Trigger a run of `deployment`, let one process worker execute it, and return the run's final state."""
    triggered = prefect("deployment", "run", deployment, "--params", json.dumps(params))
    (run_id,) = re.findall(r"UUID:\s*([0-9a-f-]{36})", triggered.stdout)
    prefect("worker", "start", "--pool", "need-process", "--run-once", timeout=500)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state is not None and state.is_final(), f"run {run_id} of {deployment} did not finish: {state}"
    return state


@pytest.fixture(scope="module")
def process_pool(prefect_harness):
    """The process work pool the deployments of prefect.yaml name, and the deployments these tests run (one
    `prefect deploy` for all: each call costs the CLI's start-up)."""
    prefect("work-pool", "create", "need-process", "--type", "process", "--overwrite")
    names = ("ingest-head-ct", "reconstruct-nightly", "cohort-nightly", "pacs-nightly")
    prefect("deploy", *[arg for name in names for arg in ("--name", name)])


def test_ingest_deployment_runs_on_a_process_worker(process_pool, head_ct_path, tmp_path):
    source = write_small_head_npy(head_ct_path, tmp_path, n_slices=4)
    catalog = tmp_path / "deployed.zarr"
    params = {
        "sources": [source],
        "catalog": str(catalog),
        "doses": [DOSE],
        "chunk_slices": 2,
        "spacing_mm": SMALL_SPACING,
    }
    assert run_on_a_process_worker("ingest/ingest-head-ct", params).is_completed()
    store = open_archive(catalog)
    assert store.todo("ingest") == [] and store.todo("ingest_ld", dose=DOSE) == []


def write_full_size_head_npy(head_ct_path: Path, directory: Path, first: int = 54, n_slices: int = 2) -> str:
    """Real head-CT slices at their own 256² size (the shipped weights' geometry: sinograms 336 x 420), as .npy."""
    path = directory / "head_full.npy"
    np.save(path, read_volume(head_ct_path).hu[first : first + n_slices].astype(np.float32))
    return str(path)


def test_reconstruct_nightly_runs_as_shipped_with_the_registered_champions(
    process_pool, head_ct_path, tracking_store, dask_address, tmp_path
):
    """The demo's setup (registering the shipped weights, each @champion) is all `reconstruct-nightly` needs: its
    model references are left as shipped; only the catalog (2 real slices) and the doses are the test's."""
    tracker = open_tracker(True, "need-models")
    assert tracker is not None
    registered = register_shipped_models(tracker)
    assert {kind: r.champion for kind, r in registered.items()} == {"spdiff": "1", "dgdiff": "1", "redcnn": "1"}
    catalog = tmp_path / "nightly.zarr"
    run_ingest(
        sources=[write_full_size_head_npy(head_ct_path, tmp_path)],
        catalog=str(catalog),
        doses=[DOSE],
        chunk_slices=2,
        spacing_mm=list(read_volume(head_ct_path).spacing_mm),
        dask_address=dask_address,
    )
    deployed = next(d for d in DEPLOYMENTS if d["name"] == "reconstruct-nightly")["parameters"]
    assert {deployed["spdiff"], deployed["dgdiff"]} == {f"models:/{REGISTERED_NAMES[k]}@{CHAMPION}" for k in MODELS}

    state = run_on_a_process_worker("reconstruct/reconstruct-nightly", {"catalog": str(catalog), "doses": [DOSE]})

    assert state.is_completed(), state.message
    (row,) = open_catalog(catalog).rows()
    study = open_catalog(catalog).study(row.study)
    assert study.todo("reconstruct", dose=DOSE) == [] and np.isfinite(study.dataset.need.values).all()
    cache = Path(os.environ["NEED_MODEL_CACHE"])
    for kind in MODELS:  # the worker fetched the champions from the registry (checkpoint inside the MLflow model)
        assert (cache / REGISTERED_NAMES[kind] / "1" / "artifacts" / SHIPPED_FILES[kind]).is_file()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, head_ct_path, dask_address) -> tuple[str, str]:
    """Tiny SPDiff and DGDiff checkpoints fitting the 64x64 pseudo-patients' sinograms (a few steps on a small
    study of the same geometry)."""
    folder = tmp_path_factory.mktemp("models")
    catalog = folder / "training.zarr"
    run_ingest(
        sources=[write_small_head_npy(head_ct_path, folder, n_slices=4)],
        catalog=str(catalog),
        doses=[DOSE],
        chunk_slices=4,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )
    return write_tiny_models(catalog, folder)


def truncate_pixels(series: Path) -> None:
    """Cut one file's pixel data to half: its header still reads, its pixels cannot be decoded (a cut transfer)."""
    path = min(series.iterdir())
    image = pydicom.dcmread(path)
    image.PixelData = image.PixelData[: len(image.PixelData) // 2]
    image.save_as(path, enforce_file_format=True)


def study_of(drop: Path, series: Path) -> str:
    """The study key discovery gives the series in folder `series` of the drop folder."""
    (key,) = [s.key for s in discover_series([drop]).series if s.files[0].parent == series]
    return key


def stored_files(catalog: Path, key: str) -> dict[str, bytes]:
    """Every file of a study group, by path: its data, ledgers, producers and attributes."""
    root = catalog / "studies" / key
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_cohort_nightly_ingests_and_reconstructs_only_what_is_new(process_pool, head_ct_path, tiny_models, tmp_path):
    drop, catalog = tmp_path / "incoming", tmp_path / "cohort.zarr"
    first = [add_series(head_ct_path, drop, f"p{n}_s1", f"PHI-NIGHTLY-{n}", 20 * n, 4) for n in (1, 2)]
    corrupt = add_series(head_ct_path, drop, "cut", "PHI-NIGHTLY-9", 30, 4)
    truncate_pixels(corrupt)
    old, broken = [study_of(drop, series) for series in first], study_of(drop, corrupt)
    spdiff, dgdiff = tiny_models
    params = {
        "drop_folder": str(drop),
        "catalog": str(catalog),
        "doses": [DOSE],
        "spdiff": spdiff,
        "dgdiff": dgdiff,
        "chunk_slices": 4,
        "device": "cpu",
        "tracking": False,
    }

    state = run_on_a_process_worker("nightly/cohort-nightly", params)
    assert state.is_failed() and broken in state.message  # red, naming the corrupt series ...
    rows = {row.study: row for row in open_catalog(catalog).rows()}
    assert rows[broken].ingest == "failed" and {rows[key].ingest for key in old} == {"done"}
    for key in old:  # ... but the good series are ingested and reconstructed
        assert open_catalog(catalog).study(key).todo("reconstruct", dose=DOSE) == []
    before = {key: stored_files(catalog, key) for key in old}

    corrupt.rename(tmp_path / "quarantined")
    added = add_series(head_ct_path, drop, "p3_s1", "PHI-NIGHTLY-3", 70, 4)
    new = study_of(drop, added)
    assert run_on_a_process_worker("nightly/cohort-nightly", params).is_completed()

    store = open_catalog(catalog)
    assert store.row(new).ingest == "done"
    for key in old:
        assert stored_files(catalog, key) == before[key], f"study {key}, done before, was rewritten"
    study = store.study(new)
    assert study.todo("reconstruct", dose=DOSE) == [] and np.isfinite(study.dataset.need.values).all()
    models = {producer.rsplit("/", 1)[0] for producer in store.study(old[0]).produced_by("reconstruct", dose=DOSE)}
    (producer,) = set(study.produced_by("reconstruct", dose=DOSE))
    assert {producer.rsplit("/", 1)[0]} == models  # the same models made it (the key's last part is per study)


def test_pacs_nightly_round_trip_on_a_process_worker(process_pool, orthanc, head_ct_path, tiny_models, tmp_path):  # noqa: F811
    today = date.today().strftime("%Y%m%d")
    series = {"axial": {"first_slice": 44}}
    source = write_study(head_ct_path, tmp_path / "src", "ct", "PHI-PACS-NIGHTLY", series, today)
    orthanc.upload(tmp_path / "src")
    before = set(orthanc.get("/series").json())
    spdiff, dgdiff = tiny_models
    params = {
        "url": orthanc.dicomweb,  # the worker inherits the fixture's NEED_DICOMWEB_USER / _PASSWORD
        "catalog": str(tmp_path / "pacs.zarr"),
        "doses": [DOSE],
        "spdiff": spdiff,
        "dgdiff": dgdiff,
        "chunk_slices": 4,
        "device": "cpu",
        "tracking": False,
    }

    assert run_on_a_process_worker("pacs-round-trip/pacs-nightly", params).is_completed()
    (key,) = [row.study for row in open_catalog(tmp_path / "pacs.zarr").rows()]
    (new,) = set(orthanc.get("/series").json()) - before
    series = orthanc.get(f"/series/{new}").json()
    assert len(series["Instances"]) == 4
    image = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{series['Instances'][0]}/file").content))
    assert image.PatientID == key and image.StudyInstanceUID != source.study_uid and "DERIVED" in image.ImageType

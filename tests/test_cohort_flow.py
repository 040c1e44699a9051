"""A cohort end to end on a folder tree of DICOM pseudo-patients (plus CT_small, another matrix, and a corrupt
series): ingest, info, patient-level split, tiny models trained across the training patients, reconstruct the test
split, a study the models do not fit failing alone, a SIGKILLed run resumed across studies, and a new series dropped
in computed alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from flows.evaluate import evaluate
from flows.ingest import IngestFailed, run_ingest
from flows.models import resolve_model
from flows.reconstruct import ReconstructFailed, run_reconstruct, scored_training_studies
from flows.tracking.compare import compare_rows
from flows.tracking.store import Tracker
from flows.train import train
from storage.catalog import open_catalog
from storage.readers.series import discover_series
from tests.cohort_fixtures import add_series, write_cohort

DOSE = 0.25
OUTPUTS = ("fbp_ld", "spdiff_fbp", "need")


def series_key(folder: Path) -> str:
    (found,) = discover_series([folder]).series
    return found.key


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, head_ct_path, prefect_harness, dask_address):
    """The fixture cohort ingested (the corrupt series failing alone), split by patient, and tiny models."""
    root = tmp_path_factory.mktemp("cohort")
    layout = write_cohort(head_ct_path, root / "incoming")
    keys = {name: series_key(folder) for name, folder in layout.series_dirs.items() if name in STUDY_NAMES}
    catalog = root / "cohort.zarr"
    with pytest.raises(IngestFailed, match=f"1 of 6 studies failed.*{keys['corrupt']}"):
        ingest(catalog, root / "incoming", dask_address)
    splits = {"train": ["p3_s1", "p3_s2"], "val": ["p1_s1"], "test": ["p2_s1", "ct_small"]}
    arguments = [f"--{name}-studies={','.join(keys[n] for n in names)}" for name, names in splits.items()]
    assert main(["split", str(catalog), *arguments]) == 0
    trained = [
        train(catalog=str(catalog), model=kind, profile="tiny", steps=3, validate_every=3, tracking=False)
        for kind in ("spdiff", "dgdiff")
    ]
    assert all(set(result["studies"]) == {keys["p3_s1"], keys["p3_s2"]} for result in trained)
    return root, catalog, keys, (trained[0]["checkpoint"], trained[1]["checkpoint"])


STUDY_NAMES = ("p1_s1", "p2_s1", "p3_s1", "p3_s2", "ct_small", "corrupt")


def ingest(catalog: Path, incoming: Path, dask_address: str) -> dict:
    return run_ingest(
        sources=[str(incoming)], catalog=str(catalog), doses=[DOSE], seed=0, chunk_slices=2, dask_address=dask_address
    )


def reconstruct(catalog: Path, models: tuple[str, str], dask_address: str, **chosen) -> dict:
    return run_reconstruct(
        catalog=str(catalog),
        doses=[DOSE],
        spdiff=models[0],
        dgdiff=models[1],
        chunk_slices=2,
        device="cpu",
        dask_address=dask_address,
        tracking=False,
        **chosen,
    )


def outputs(catalog: Path, key: str) -> dict[str, np.ndarray]:
    ds = open_catalog(catalog).study(key).dataset
    return {name: ds[name].values.copy() for name in OUTPUTS}


def test_ingest_builds_the_study_table_and_a_rerun_retries_only_the_failed_series(cohort, dask_address, capsys):
    root, catalog, keys, _ = cohort
    rows = {row.study: row for row in open_catalog(catalog).rows()}
    assert set(rows) == set(keys.values())
    assert rows[keys["corrupt"]].ingest == "failed" and "decoded" in rows[keys["corrupt"]].ingest_error
    assert all(rows[keys[n]].ingest == "done" for n in STUDY_NAMES if n != "corrupt")
    assert (rows[keys["ct_small"]].ny, rows[keys["p1_s1"]].ny) == (128, 64)
    assert rows[keys["p3_s1"]].subject == rows[keys["p3_s2"]].subject != rows[keys["p1_s1"]].subject
    with pytest.raises(IngestFailed, match="1 of 6") as failed:
        ingest(catalog, root / "incoming", dask_address)
    assert "localizer" not in str(failed.value)  # skipped series are warnings, not failures
    assert main(["info", str(catalog)]) == 0
    printed = capsys.readouterr().out
    assert "6 studies" in printed and f"{keys['corrupt']}: " in printed and keys["ct_small"] in printed
    assert "Doe" not in printed and "PHI-COHORT" not in printed


def test_test_split_reconstructs_and_a_study_of_another_shape_fails_alone(cohort, dask_address):
    _, catalog, keys, models = cohort
    with pytest.raises(ReconstructFailed, match=f"study {keys['ct_small']} dose 0.25: 1 slice"):
        reconstruct(catalog, models, dask_address, split="test")
    store = open_catalog(catalog)
    small = store.study(keys["ct_small"])
    message = small.errors("reconstruct", dose=DOSE)[0]
    assert (
        keys["ct_small"] in message
        and "(84, 108)" in message
        and str(tuple(small.settings["sinogram_shape"])) in message
    )
    assert store.study(keys["p2_s1"]).todo("reconstruct", dose=DOSE) == []
    assert np.isnan(outputs(catalog, keys["p1_s1"])["need"]).all()  # val and train studies untouched
    resolved = resolve_model(models[0], "spdiff"), resolve_model(models[1], "dgdiff")
    assert scored_training_studies(resolved, [keys["p2_s1"], keys["p3_s2"]]) == [keys["p3_s2"]]

    result = evaluate(catalog=str(catalog), split="test", tracking=False)
    need = next(row for row in result["rows"] if row["method"] == "need")
    assert need["n_studies"] == 1 and need["n_slices"] == 4
    assert {row["study"] for row in result["study_rows"]} == {keys["p2_s1"]}


@pytest.mark.slow
def test_killed_cohort_run_resumes_across_studies_and_a_new_series_is_computed_alone(
    cohort, head_ct_path, tmp_path, dask_address, tracking_store
):
    root, catalog, keys, models = cohort
    chosen = f"{keys['p1_s1']},{keys['p3_s1']},{keys['p3_s2']}"
    command = [
        sys.executable, "-m", "flows.cli", "reconstruct", str(catalog), "--doses", str(DOSE),
        "--spdiff", models[0], "--dgdiff", models[1], "--chunk-slices", "2", "--workers", "1",
        "--device", "cpu", "--studies", chosen, "--no-tracking",
    ]  # fmt: skip
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None and done_count(catalog, chosen) < 3:
        time.sleep(0.2)
    assert run.poll() is None, f"reconstruct ended before it could be killed: {run.stderr.read().decode()[-2000:]}"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    before = {key: outputs(catalog, key) for key in chosen.split(",")}
    done_before = done_count(catalog, chosen)
    assert 3 <= done_before < 12

    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert done_count(catalog, chosen) == 12
    store = open_catalog(catalog)
    for key, stored in before.items():
        after = outputs(catalog, key)
        done = [s for s in range(4) if np.isfinite(stored["need"][0, s]).all()]
        for name in OUTPUTS:  # what was done before the kill is untouched
            np.testing.assert_array_equal(after[name][:, done], stored[name][:, done])
        assert store.study(key).todo("reconstruct", dose=DOSE) == []

    new_folder = add_series(head_ct_path, root / "incoming", "p6_s1", "PHI-COHORT-6", first_slice=90)
    new_key = series_key(new_folder)
    with pytest.raises(IngestFailed):  # the corrupt series is still there
        summary = ingest(catalog, root / "incoming", dask_address)
    summary = open_catalog(catalog).row(new_key)
    assert summary.ingest == "done" and summary.slices == 4
    assert main(["split", str(catalog), "--test", "0.2", "--val", "0.1"]) == 0
    assert open_catalog(catalog).row(new_key).split == "train"  # others keep their sets
    kept = {key: outputs(catalog, key) for key in chosen.split(",")}
    rerun = reconstruct(catalog, models, dask_address, split="train")
    computed = {key: sum(len(e["done"]) for e in study["doses"].values()) for key, study in rerun["studies"].items()}
    assert computed == {keys["p3_s1"]: 0, keys["p3_s2"]: 0, new_key: 4}
    for key in (keys["p3_s1"], keys["p3_s2"]):
        for name in OUTPUTS:
            np.testing.assert_array_equal(outputs(catalog, key)[name], kept[key][name])

    evaluated = evaluate(catalog=str(catalog), split="train", experiment="cohort")
    tracker = Tracker(tracking_store, "cohort")
    (child,) = tracker.client.search_runs([tracker.experiment_id], "tags.`need.run_kind` = 'evaluate-dose'")
    assert child.data.metrics["n_studies"] == 3 and "need_psnr_study_std" in child.data.metrics
    pooled = next(row for row in evaluated["rows"] if row["method"] == "need")
    assert child.data.metrics["need_psnr"] == pytest.approx(pooled["psnr"]) and pooled["n_slices"] == 12
    artifacts = {a.path for a in tracker.client.list_artifacts(evaluated["parent_run_id"])}
    assert "quality_by_study.csv" in artifacts
    (need,) = compare_rows("cohort", methods=["need"])
    assert need.dataset.endswith("(3 studies)") and need.n_slices == 12


def done_count(catalog: Path, keys: str) -> int:
    store = open_catalog(catalog)
    return sum(4 - len(store.study(key).todo("reconstruct", dose=DOSE)) for key in keys.split(","))

"""Train -> register -> reconstruct by models:/ URI -> parent/child runs -> compare, against a SQLite store in a temp
dir; and training across the patients of a cohort.

SPDiff and DGDiff training read normal-dose data only: they run on a copy of the catalog whose `proj_ld` chunks are
garbage. RED-CNN, the supervised baseline, trains on the study's low-dose scans paired with `fbp_nd`.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import main
from flows.ingest import IngestFailed, run_ingest
from flows.reconstruct import run_reconstruct
from flows.tracking.store import Tracker, TrackingUnavailable
from flows.train import train
from storage.archive import CorruptChunkError, open_archive
from storage.catalog import open_catalog
from storage.checkpoints import load_checkpoint
from tasks.baselines import redcnn_rows
from tasks.train import TrainingInputError, full_turn_scans, spdiff_settings, training_studies
from tasks.train_data import plan_training, read_training_data
from tests.cohort_fixtures import write_cohort
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

EXPERIMENT = "train-flow-test"


@pytest.fixture(scope="module")
def store(tracking_store):
    """A tracker on the module's tracking store."""
    return Tracker(tracking_store, EXPERIMENT)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, head_ct_path, dask_address):
    """A one-study catalog of a 6-slice 64^2 real CT at doses 0.5 and 0.1."""
    root = tmp_path_factory.mktemp("train")
    source = write_small_head_npy(head_ct_path, root)
    path = root / "head.zarr"
    run_ingest(
        sources=[source],
        catalog=str(path),
        doses=[0.5, 0.1],
        seed=1,
        chunk_slices=3,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )
    return path


def corrupt_low_dose_copy(archive: Path, target: Path) -> Path:
    """A copy of the catalog whose low-dose projections cannot be read."""
    shutil.copytree(archive, target)
    chunks = [
        p
        for p in target.rglob("*")
        if p.is_file() and "proj_ld" in p.relative_to(target).parts and p.name != "zarr.json"
    ]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(b"garbage")
    return target


@pytest.fixture(scope="module")
def trained(store, archive, tmp_path_factory):
    """SPDiff and DGDiff (tiny) trained on normal-dose data only, registered in the store."""
    root = tmp_path_factory.mktemp("models")
    blind = corrupt_low_dose_copy(archive, root / "no_low_dose.zarr")
    with pytest.raises(CorruptChunkError, match="proj_ld slice 0 at dose 0.5 is corrupt"):
        open_archive(blind).read("proj_ld", 0, 1, dose=0.5)
    common = dict(catalog=str(blind), profile="tiny", batch_size=2, device="cpu", experiment=EXPERIMENT)
    sp = train(model="spdiff", steps=4, validate_every=2, checkpoint=str(root / "sp.pt"), **common)
    dg = train(model="dgdiff", steps=2, checkpoint=str(root / "dg.pt"), **common)
    return sp, dg, blind, common


def runs_of(store: Tracker, kind: str) -> list:
    return store.client.search_runs(
        [store.experiment_id], filter_string=f"tags.`need.run_kind` = '{kind}'", order_by=["attributes.start_time ASC"]
    )


def test_training_logs_the_run_and_registers_a_version(store, trained):
    sp, dg, _, _ = trained
    assert sp["model_version"] == "need-spdiff/1" and dg["model_version"] == "need-dgdiff/1"
    run = store.client.get_run(sp["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "spdiff" and run.data.params["profile"] == "tiny"
    assert run.data.params["settings.network.channels"] == "[8, 16, 32]"
    losses = store.client.get_metric_history(sp["run_id"], "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4] and all(np.isfinite(m.value) for m in losses)
    assert [m.step for m in store.client.get_metric_history(sp["run_id"], "val_psnr")] == [2, 4]
    artifacts = {a.path for a in store.client.list_artifacts(sp["run_id"], "samples")}
    assert artifacts == {"samples/step_0000002.png", "samples/step_0000004.png"}
    version = store.client.get_model_version("need-spdiff", "1")
    assert version.run_id == sp["run_id"]
    assert version.aliases == ["champion"]  # the first version of a model becomes its champion
    assert "profile: tiny; trained 4 steps" in version.description and version.tags["need.steps"] == "4"
    model = {
        a.path.rsplit("/", 1)[-1] for a in store.client.list_artifacts(sp["run_id"], version.source.rsplit("/", 1)[-1])
    }
    assert {"MLmodel", "artifacts"} <= model  # an MLflow model (signature, pyfunc) holding the checkpoint
    blob = load_checkpoint(sp["checkpoint"], "spdiff")
    assert blob["step"] == 4
    record = blob["training_data"]  # one study, split by slices: today's keys plus the study and its digest
    assert record["train_slices"] == list(range(6)) and record["validation_slices"] == [1, 2, 3]
    assert record["studies"] == record["validation_studies"] == sp["studies"] and len(sp["studies"]) == 1
    assert "archive_settings_hash" in record and run.data.params["catalog_digest"] == record["catalog_digest"]
    (used,) = run.inputs.dataset_inputs  # MLflow keeps one input per dataset and run: the study trains and validates
    assert used.dataset.digest == record["catalog_digest"] and used.dataset.name == "no_low_dose"
    assert [(tag.key, tag.value) for tag in used.tags] == [("mlflow.data.context", "training")]


def test_dgdiff_trains_on_crops_and_reachable_steps_only(trained):
    _, dg, _, _ = trained
    settings = load_checkpoint(dg["checkpoint"], "dgdiff")["settings"]
    assert settings["crop_size"] == 64 and settings["learning_rate"] == 2e-4
    assert settings["max_train_step"] == 14  # steps guided sampling reaches for noise sigma <= 0.25, of 1000
    assert settings["random_flip"] and settings["random_rotate"]


def test_spdiff_trains_rotated_mirrored_and_thickness_scaled_only_where_the_scan_covers_a_full_turn(
    trained, archive, monkeypatch
):
    sp, _, _, _ = trained
    training = load_checkpoint(sp["checkpoint"], "spdiff")["settings"]["training"]
    assert training["view_shift"] and training["mirror"] and training["thickness_scale"] == [0.8, 1.25]
    plan = plan_training(open_catalog(archive), "spdiff", None, None, None)
    assert full_turn_scans(plan)
    short_scan = {**plan.train[0].archive.attrs["geometry"], "angle_range_rad": 1.5 * np.pi}
    monkeypatch.setattr(type(plan.train[0].archive), "attrs", property(lambda _: {"geometry": short_scan}))
    assert not full_turn_scans(plan)
    volumes = [np.full((3, 20, 24), 0.5, dtype=np.float32)]
    settings = spdiff_settings("tiny", volumes, batch_size=2, seed=0, full_turn=False)
    assert not settings.view_shift and not settings.mirror and settings.thickness_scale == (0.8, 1.25)


def test_redcnn_trains_on_low_dose_pairs_resumes_exactly_and_serves_the_baseline(store, archive, tmp_path):
    common = dict(
        catalog=str(archive),
        model="redcnn",
        profile="tiny",
        batch_size=2,
        device="cpu",
        experiment=EXPERIMENT,
        train_dose=0.5,
    )
    once = train(steps=4, validate_every=2, checkpoint=str(tmp_path / "once.pt"), tracking=False, **common)
    half = train(steps=2, validate_every=2, checkpoint=str(tmp_path / "rc.pt"), **common)
    result = train(steps=4, validate_every=2, checkpoint=str(tmp_path / "rc.pt"), resume=True, **common)
    assert result["run_id"] == half["run_id"] and half["model_version"] == "need-redcnn/1"
    assert result["model_version"] == "need-redcnn/2"  # the resumed run registers its longer training again
    assert once["model_version"] is None and np.isfinite(result["validation"]["val_psnr"])
    run = store.client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["train_dose"] == "0.5"
    assert [m.step for m in store.client.get_metric_history(result["run_id"], "loss")] == [1, 2, 3, 4]
    assert store.client.get_model_version("need-redcnn", "2").run_id == result["run_id"]
    champion = store.client.get_model_version_by_alias("need-redcnn", "champion")
    assert str(champion.version) == "1"  # a later version never moves the champion by itself
    blob = load_checkpoint(result["checkpoint"], "redcnn")
    assert blob["step"] == 4 and blob["training_data"]["train_dose"] == 0.5
    assert blob["settings"]["paired_dose"] == 0.5 and blob["settings"]["learning_rate"] == 3e-4
    exact = load_checkpoint(once["checkpoint"], "redcnn")["model"]
    assert all(torch.equal(exact[key], blob["model"][key]) for key in exact)
    rows, images = redcnn_rows.fn(str(archive), 0.5, [2, 3], result["checkpoint"], device="cpu")
    assert rows[0]["method"] == "redcnn_50" and images["redcnn_50"].shape == (2, 64, 64)
    with pytest.raises(TrainingInputError, match="trained on other data"):
        train(steps=6, checkpoint=str(tmp_path / "rc.pt"), resume=True, tracking=False, **{**common, "train_dose": 0.1})


def test_redcnn_refuses_a_training_dose_the_archive_lacks(archive, tmp_path):
    with pytest.raises(TrainingInputError, match=r"training dose 0.25 is not a dose of the archive .* 0.5, 0.1"):
        train(catalog=str(archive), model="redcnn", steps=2, checkpoint=str(tmp_path / "never.pt"), tracking=False)
    with pytest.raises(TrainingInputError, match="applies to redcnn only"):
        train(
            catalog=str(archive),
            model="dgdiff",
            steps=2,
            train_dose=0.5,
            checkpoint=str(tmp_path / "never.pt"),
            tracking=False,
        )
    assert not (tmp_path / "never.pt").exists()


def test_resume_continues_the_same_run_and_checkpoint_exactly(store, trained, tmp_path):
    _, _, blind, common = trained
    once = train(model="spdiff", steps=4, validate_every=2, checkpoint=str(tmp_path / "once.pt"), **common)
    half = train(model="spdiff", steps=2, validate_every=2, checkpoint=str(tmp_path / "resumed.pt"), **common)
    resumed = train(
        model="spdiff", steps=4, validate_every=2, checkpoint=str(tmp_path / "resumed.pt"), resume=True, **common
    )
    assert resumed["run_id"] == half["run_id"] != once["run_id"]
    assert [m.step for m in store.client.get_metric_history(resumed["run_id"], "loss")] == [1, 2, 3, 4]
    assert store.client.get_run(resumed["run_id"]).data.tags["need.resumed"] == "true"
    exact, interrupted = (load_checkpoint(tmp_path / name, "spdiff")["ema"] for name in ("once.pt", "resumed.pt"))
    assert all(torch.equal(exact[key], interrupted[key]) for key in exact)
    with pytest.raises(ValueError, match="exists: pass --resume"):
        train(model="spdiff", steps=4, checkpoint=str(tmp_path / "once.pt"), **common)


def test_reconstruct_loads_registered_models_and_logs_parent_and_dose_runs(
    store, trained, archive, tmp_path, dask_address, capsys
):
    work = tmp_path / "recon.zarr"
    shutil.copytree(archive, work)
    store.client.set_registered_model_alias("need-dgdiff", "champion", "1")
    summary = run_reconstruct(
        catalog=str(work),
        doses=[0.5, 0.1],
        spdiff="models:/need-spdiff/1",
        dgdiff="models:/need-dgdiff@champion",
        chunk_slices=3,
        device="cpu",
        dask_address=dask_address,
        experiment=EXPERIMENT,
    )
    parent_id = summary["tracking"]["parent_run_id"]
    parent = store.client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["need.archive"] == str(work.resolve())
    assert {a.path for a in store.client.list_artifacts(parent_id)} >= {"metric_vs_dose.png", "quality.csv"}
    children = store.client.search_runs(
        [store.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    assert sorted(float(c.data.params["dose"]) for c in children) == [0.1, 0.5]
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        assert params["spdiff_model"] == "need-spdiff/1" and params["dgdiff_model"] == "need-dgdiff/1"
        assert float(params["incident_count"]) == pytest.approx(2.5e5 * float(params["dose"]))
        assert params["chunk_slices"] == "3" and params["device"] == "cpu" and "geometry.n_views" in params
        assert int(params["spdiff_start_step"]) >= 0
        assert child.data.tags["need.recomputed_slices"] == "0-5"
        for method in ("fbp_ld", "spdiff_fbp", "need"):
            assert np.isfinite(metrics[f"{method}_psnr"]) and 0 < metrics[f"{method}_ssim"] <= 1
            history = store.client.get_metric_history(child.info.run_id, f"slice/{method}_psnr")
            assert sorted(m.step for m in history) == list(range(6))
        files = {a.path for a in store.client.list_artifacts(child.info.run_id)}
        assert "per_slice_metrics.csv" in files
        assert len(store.client.list_artifacts(child.info.run_id, "panels")) == 3
    # the dose-0.1 LDCT FBP is worse than the dose-0.5 one, as stored in the archive
    psnr = {float(c.data.params["dose"]): c.data.metrics["fbp_ld_psnr"] for c in children}
    assert psnr[0.1] < psnr[0.5]

    assert main(["compare", "--experiment", EXPERIMENT]) == 0
    table = capsys.readouterr().out
    assert "need-spdiff/1" in table and "need-dgdiff/1" in table
    assert sum(line.split()[1] in ("0.5", "0.1") for line in table.splitlines()[1:]) == 6


def test_unreachable_tracking_fails_before_any_compute(trained, archive, tmp_path, monkeypatch, dask_address):
    sp, dg, blind, common = trained
    work = tmp_path / "untouched.zarr"
    shutil.copytree(archive, work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    with pytest.raises(TrackingUnavailable, match="does not exist"):
        run_reconstruct(
            catalog=str(work),
            doses=[0.5],
            spdiff=sp["checkpoint"],
            dgdiff=dg["checkpoint"],
            device="cpu",
            dask_address=dask_address,
        )
    assert np.isnan(open_archive(work).read("need", 0, 6, dose=0.5)).all()
    with pytest.raises(TrackingUnavailable):
        train(model="spdiff", steps=2, checkpoint=str(tmp_path / "never.pt"), **common)
    assert not (tmp_path / "never.pt").exists()
    # explicitly without tracking, the same run goes through
    summary = run_reconstruct(
        catalog=str(work),
        doses=[0.5],
        spdiff=sp["checkpoint"],
        dgdiff=dg["checkpoint"],
        device="cpu",
        dask_address=dask_address,
        tracking=False,
    )
    (study,) = summary["studies"].values()
    assert summary["tracking"] == {"disabled": True} and sorted(study["doses"][0.5]["done"]) == list(range(6))


@dataclass
class Cohort:
    """A catalog of pseudo-patients: P1 and P2 (and ct_small, another shape) train, P3's two studies validate."""

    path: Path
    train: list[str]
    other_shape: str
    val: list[str]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, head_ct_path, dask_address):
    """tests.cohort_fixtures' cohort ingested at dose 0.25 (its corrupt series fails alone), split by patient."""
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(head_ct_path, root / "dicom")
    path = root / "cohort.zarr"
    with pytest.raises(IngestFailed, match="1 of 6 studies failed"):
        run_ingest(
            sources=[str(root / "dicom")],
            catalog=str(path),
            doses=[0.25],
            seed=0,
            chunk_slices=4,
            dask_address=dask_address,
        )
    rows = open_catalog(path).select()
    studies_of = Counter(row.subject for row in rows)
    (small,) = [row.study for row in rows if row.ny == 128]
    p3 = sorted(row.study for row in rows if studies_of[row.subject] == 2)
    p1_p2 = sorted(row.study for row in rows if row.ny == 64 and studies_of[row.subject] == 1)
    assert len(p3) == len(p1_p2) == 2
    open_catalog(path, "r+").assign_splits({**dict.fromkeys([*p1_p2, small], "train"), **dict.fromkeys(p3, "val")})
    return Cohort(path, p1_p2, small, p3)


def copy_of(cohort: Cohort, target: Path) -> Path:
    """A copy of the cohort's catalog, whose splits a test may change."""
    shutil.copytree(cohort.path, target)
    return target


def test_spdiff_trains_across_patients_and_logs_the_cohort_as_dataset_inputs(store, cohort, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = train(
            catalog=str(cohort.path),
            model="spdiff",
            profile="tiny",
            steps=2,
            validate_every=2,
            batch_size=2,
            device="cpu",
            checkpoint=str(tmp_path / "sp.pt"),
            experiment=EXPERIMENT,
        )
    assert result["studies"] == cohort.train and result["validation_studies"] == cohort.val
    assert f"study {cohort.other_shape} (train): sinogram 168x212, not 84x108" in caplog.text
    assert result["skipped"] == [f"study {cohort.other_shape} (train): sinogram 168x212, not 84x108"]
    catalog = open_catalog(cohort.path)
    train_rows = [row for row in catalog.rows() if row.study in cohort.train]
    val_rows = [row for row in catalog.rows() if row.study in cohort.val]
    record = load_checkpoint(result["checkpoint"], "spdiff")["training_data"]
    assert record == {
        "catalog_digest": catalog.digest(train_rows),
        "studies": cohort.train,
        "validation_studies": cohort.val,
    }
    assert training_studies(result["checkpoint"], "spdiff") == set(cohort.train)
    run = store.client.get_run(result["run_id"])
    params = run.data.params
    assert (params["train_studies"], params["validation_studies"]) == ("2", "2")
    assert params["catalog_digest"] == catalog.digest(train_rows) and "train_slices" not in params
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    assert inputs["training"].digest == catalog.digest(train_rows) and inputs["training"].name == "cohort"
    assert inputs["validation"].digest == catalog.digest(val_rows)
    assert inputs["training"].source == f'{{"uri": "{cohort.path.resolve()}"}}'
    assert '"num_rows": 2' in inputs["validation"].profile
    assert np.isfinite(result["validation"]["val_psnr"])


def test_dgdiff_reads_every_train_study_and_resume_refuses_another_split(cohort, tmp_path):
    path = copy_of(cohort, tmp_path / "cohort.zarr")
    plan = plan_training(open_catalog(path), "dgdiff")
    assert [part.row.study for part in plan.train] == cohort.train
    assert read_training_data(plan, "dgdiff", None).shape == (8, 64, 64)  # both 4-slice studies
    assert [part.slices for part in plan.validation] == [(0, 1, 2), (0, 1, 2)]
    common = dict(
        catalog=str(path), model="dgdiff", profile="tiny", batch_size=2, device="cpu", tracking=False, validate_every=2
    )
    first = train(steps=2, checkpoint=str(tmp_path / "dg.pt"), **common)
    assert first["studies"] == cohort.train and np.isfinite(first["validation"]["val_psnr"])
    open_catalog(path, "r+").assign_splits({cohort.train[1]: "test"})
    with pytest.raises(TrainingInputError, match="trained on other data"):
        train(steps=4, checkpoint=str(tmp_path / "dg.pt"), resume=True, **common)
    assert load_checkpoint(tmp_path / "dg.pt", "dgdiff")["step"] == 2


def test_training_plans_refuse_what_they_cannot_train(cohort, tmp_path):
    path = copy_of(cohort, tmp_path / "cohort.zarr")
    catalog = open_catalog(path, "r+")
    with pytest.raises(TrainingInputError, match="split one study, named with --studies"):
        plan_training(catalog, "spdiff", train_slices=[0, 1])
    one = plan_training(catalog, "spdiff", studies=[cohort.val[0]])  # one study named: split by its slices
    assert not one.patient_level and one.train[0].slices == (0, 1, 2, 3) and one.validation[0].slices == (0, 1, 2)
    catalog.assign_splits({cohort.other_shape: "val"})
    plan = plan_training(catalog, "dgdiff")
    assert [part.row.study for part in plan.validation] == cohort.val
    assert plan.skipped == (f"study {cohort.other_shape} (val): image 128x128, not 64x64",)
    catalog.assign_splits(dict.fromkeys(cohort.val, "test"))
    with pytest.raises(TrainingInputError, match="no val study .* has the image shape 64x64"):
        plan_training(catalog, "dgdiff")
    catalog.assign_splits({cohort.other_shape: "test"})
    with pytest.raises(TrainingInputError, match=r"need split CATALOG --val 0.1"):
        plan_training(catalog, "dgdiff")
    catalog.assign_splits({row.study: "" for row in catalog.rows()})
    with pytest.raises(
        TrainingInputError, match=r"5 studies .*`need split CATALOG --test 0.2 --val 0.1`, or name one study"
    ):
        plan_training(catalog, "spdiff")

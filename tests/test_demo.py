"""`need demo`: refuses to start without weights, and (slow) runs end to end on the real head CT with tiny models."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from flows.demo import DEMO_EXPERIMENT, DEMO_MODELS, MissingWeights, demo, shipped_models
from flows.models import file_digest
from flows.tracking.store import RUN_KIND_TAG
from need_core import dgdiff, redcnn, spdiff
from need_core.physics import FanBeamGeometry
from storage.archive import open_archive
from storage.checkpoints import save_trainer
from storage.readers import read_volume
from storage.splits import HEAD_CT_SPLIT
from tasks.classical import classical_methods

pytestmark = pytest.mark.filterwarnings("ignore::need_core.dgdiff.hu_window.HUWindowWarning")


def test_missing_weights_name_the_file_and_the_way_out(tmp_path):
    with pytest.raises(MissingWeights, match=r"spdiff_cpu\.pt.*need demo --retrain"):
        shipped_models(tmp_path)


def write_tiny_demo_weights(folder, head_ct_path) -> None:
    """Tiny, barely trained models under the demo's file names, sized for the head CT's 256² slices and sinograms."""
    volume = read_volume(head_ct_path)
    views, detectors = FanBeamGeometry.for_image(volume.hu.shape[1:], volume.spacing_mm[1:]).sinogram_shape
    images = volume.hu[50:52].astype(np.float32)
    sp = spdiff.SPDiffTrainer(
        spdiff.TrainSettings(network=spdiff.network_profile("tiny"), batch_size=2, patch_shape=(32, 32)),
        [np.full((3, views, detectors), 0.5, np.float32)],
        device="cpu",
    )
    dg = dgdiff.DGDiffTrainer(dgdiff.TrainSettings(profile="tiny", batch_size=2, crop_size=32), images, device="cpu")
    rc = redcnn.RedCNNTrainer(
        redcnn.TrainSettings(profile="tiny", batch_size=2, patch_size=32, paired_dose=0.25),
        redcnn.PairedImages(images, images),
        device="cpu",
    )
    files = {model.kind: folder / model.filename for model in DEMO_MODELS}
    for trainer in (sp, dg, rc):
        trainer.fit(1)
        save_trainer(files[trainer.kind], trainer)


@pytest.mark.slow
def test_demo_reconstructs_the_heldout_slices_and_reports_every_method(
    tmp_path, head_ct_path, prefect_harness, tracking_store
):
    weights = tmp_path / "weights"
    weights.mkdir()
    write_tiny_demo_weights(weights, head_ct_path)
    workdir = tmp_path / "demo"

    rows = demo(workdir=str(workdir), doses=[0.25], weights=str(weights))

    methods = [row["method"] for row in rows]
    assert methods == ["fbp_ld", "fbp_hann", *classical_methods(), "redcnn_25", "dgdiff_only", "spdiff_fbp", "need"]
    assert all(row["n_slices"] == len(HEAD_CT_SPLIT.heldout) and np.isfinite(row["psnr"]) for row in rows)
    assert json.loads((workdir / "metrics.json").read_text()) == rows
    assert (workdir / "panel_dose0.25.png").stat().st_size > 10_000
    archive = open_archive(workdir / "head_ct.zarr")
    assert archive.todo("reconstruct", dose=0.25) == sorted(set(range(archive.n_slices)) - set(HEAD_CT_SPLIT.heldout))
    kinds = set(mlflow.search_runs(experiment_names=[DEMO_EXPERIMENT])[f"tags.{RUN_KIND_TAG}"])
    assert {"reconstruct", "demo", "demo-dose", "register-spdiff", "register-dgdiff"} <= kinds
    client = mlflow.MlflowClient()
    for model in DEMO_MODELS:  # the models it used are registered, each the champion of its (new) registered model
        champion = client.get_model_version_by_alias(f"need-{model.kind}", "champion")
        assert champion.tags["need.checkpoint_digest"] == file_digest(weights / model.filename)


@pytest.mark.slow
def test_retrain_trains_every_demo_model_and_resumes_a_finished_one(
    tmp_path, head_ct_path, prefect_harness, dask_address, monkeypatch
):
    from flows.demo import retrain_models
    from flows.ingest import run_ingest
    from storage.checkpoints import load_checkpoint
    from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

    source = write_small_head_npy(head_ct_path, tmp_path)
    archive = tmp_path / "small.zarr"
    run_ingest(
        sources=source,
        catalog=str(archive),
        doses=[0.25],
        seed=1,
        chunk_slices=3,
        spacing_mm=SMALL_SPACING,
        dask_address=dask_address,
    )
    monkeypatch.setattr(
        "flows.demo.DEMO_MODELS",
        tuple(type(model)(model.kind, model.filename, steps=2, train_dose=model.train_dose) for model in DEMO_MODELS),
    )

    paths = retrain_models(str(archive), tmp_path / "models", device="cpu", seed=0, tracking=False)
    again = retrain_models(str(archive), tmp_path / "models", device="cpu", seed=0, tracking=False)

    assert paths == again and set(paths) == {"spdiff", "dgdiff", "redcnn"}
    for kind, path in paths.items():
        assert load_checkpoint(path, kind)["step"] == 2

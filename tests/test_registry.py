"""Registered models: the shipped weights become described, signed MLflow model versions, each `@champion` where its
model had none; a file is registered once; a champion moves only when asked; `default_model` picks the champion,
else the shipped file; `models:/` references resolve for the new layout and for versions registered before it."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest

from flows import cli
from flows.models import SHIPPED_FILES, default_model, file_digest, resolve_model, shipped_weights_dir
from flows.registration import model_card_summary, register_model_file, register_shipped_models
from flows.tracking.registry import CHAMPION, CHECKSUM_TAG, alias_version, fetch_registered_checkpoint, move_alias
from flows.tracking.store import Tracker, open_tracker
from need_core import spdiff
from storage.checkpoints import save_trainer

SHIPPED_DIGESTS = {"spdiff": "428598fab1d79f6c", "dgdiff": "5a741b2b1214b19f", "redcnn": "e4c37021a12e5bf4"}


@pytest.fixture(scope="module")
def tracker(tracking_store) -> Tracker:
    """The module's store with the shipped weights registered (each v1 and @champion)."""
    opened = open_tracker(True, "need-models")
    assert opened is not None
    register_shipped_models(opened)
    return opened


def tiny_spdiff(path: Path, seed: int) -> Path:
    """A one-step SPDiff checkpoint (another file than the shipped one)."""
    trainer = spdiff.SPDiffTrainer(
        spdiff.TrainSettings(network=spdiff.network_profile("tiny"), batch_size=2, patch_shape=(32, 32), seed=seed),
        [np.full((3, 40, 48), 0.5, np.float32)],
        device="cpu",
    )
    trainer.fit(1)
    return save_trainer(path, trainer)


def test_default_model_without_a_store_is_the_shipped_file_and_creates_no_store(tmp_path, monkeypatch):
    database = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    reference, why = default_model("spdiff")
    assert reference == str(shipped_weights_dir() / "spdiff_cpu.pt") and Path(reference).is_file()
    assert why == f"shipped weights (no @champion in sqlite:///{database})"
    assert not database.exists()
    with pytest.raises(ValueError, match="unknown model kind"):
        default_model("unet")


def test_shipped_weights_are_registered_with_description_signature_and_champion(tracker):
    assert default_model("spdiff") == ("models:/need-spdiff@champion", "registry champion need-spdiff v1")
    assert default_model("dgdiff")[0] == "models:/need-dgdiff@champion"
    for kind, digest in SHIPPED_DIGESTS.items():
        name = f"need-{kind}"
        version = tracker.client.get_model_version(name, "1")
        assert version.tags[CHECKSUM_TAG] == digest and CHAMPION in version.aliases
        assert digest in version.description and "MODEL_CARD.md" in version.description
        assert tracker.client.get_registered_model(name).description
    spdiff_version = tracker.client.get_model_version("need-spdiff", "1").description
    assert "16000 steps" in spdiff_version and "336 views x 420 detectors" in spdiff_version
    inputs = mlflow.models.get_model_info("models:/need-spdiff/1").signature.inputs.inputs
    assert [(spec.name, spec.type, spec.shape) for spec in inputs] == [
        ("transmission", np.dtype(np.float32), (-1, 336, 420)),
        ("incident_count", np.dtype(np.float64), (1,)),
    ]
    dgdiff_inputs = mlflow.models.get_model_info("models:/need-dgdiff/1").signature.inputs.input_names()
    assert dgdiff_inputs == ["fbp_ld", "spdiff_fbp"]


def test_the_same_file_is_registered_once(tracker):
    again = register_shipped_models(tracker)
    assert {kind: (r.version, r.new) for kind, r in again.items()} == {kind: ("1", False) for kind in SHIPPED_DIGESTS}
    assert len(tracker.client.search_model_versions("name = 'need-spdiff'")) >= 1
    assert [str(v.version) for v in tracker.client.search_model_versions("name = 'need-dgdiff'")] == ["1"]


def test_a_champion_moves_only_when_asked_and_says_so(tracker, tmp_path):
    other = tiny_spdiff(tmp_path / "other_spdiff.pt", seed=1)
    quiet = register_model_file(tracker, other, "spdiff")
    assert quiet.new and quiet.champion == "1"  # a new version, the champion stays
    assert "@champion -> v1" in quiet.describe()
    moved = register_model_file(tracker, other, "spdiff", alias=CHAMPION)
    assert not moved.new and moved.version == quiet.version and moved.moved_from == "1"
    assert f"@champion moved from v1 to v{moved.version}" in moved.describe(CHAMPION)
    assert default_model("spdiff")[1] == f"registry champion need-spdiff v{moved.version}"
    move_alias(tracker.client, "need-spdiff", CHAMPION, "1")  # the other tests expect the shipped champion
    assert alias_version(tracker.client, "need-spdiff", CHAMPION) == "1"


def test_need_register_prints_the_version_and_refuses_a_wrong_kind(tracker, tmp_path, capsys):
    path = tiny_spdiff(tmp_path / "cli_spdiff.pt", seed=2)
    assert cli.main(["register", str(path), "--alias", "candidate", "--description", "from the CLI test"]) == 0
    out = capsys.readouterr().out
    version = tracker.client.get_model_version_by_alias("need-spdiff", "candidate")
    assert f"need-spdiff v{version.version} (registered" in out and "@champion -> v1" in out
    assert "from the CLI test" in version.description
    assert cli.main(["register", str(path), "--kind", "dgdiff"]) == 1
    assert "holds a 'spdiff' model, expected 'dgdiff'" in capsys.readouterr().err


def test_champion_resolves_to_the_checkpoint_inside_the_mlflow_model(tracker):
    model = resolve_model("models:/need-spdiff@champion", "spdiff")
    assert model.registered == "need-spdiff/1" and model.identity == SHIPPED_DIGESTS["spdiff"]
    assert Path(model.path).parent.name == "artifacts" and (Path(model.path).parent.parent / "MLmodel").is_file()


def test_versions_registered_before_models_still_resolve(tracker, tmp_path):
    """A version whose files are the run's `checkpoint/*.pt` (the layout before MLflow models)."""
    path = tiny_spdiff(tmp_path / "legacy_spdiff.pt", seed=3)
    run = tracker.start_run("legacy", "train-spdiff")
    tracker.log_artifact(run, path, "checkpoint")
    source = f"{tracker.client.get_run(run).info.artifact_uri}/checkpoint"
    digest = file_digest(path)
    legacy = tracker.client.create_model_version("need-spdiff", source, run, tags={CHECKSUM_TAG: digest})
    fetched, label = fetch_registered_checkpoint(f"models:/need-spdiff/{legacy.version}", file_digest)
    assert label == f"need-spdiff/{legacy.version}" and file_digest(fetched) == digest


def test_registered_redcnn_loads_and_predicts_as_an_mlflow_pyfunc(tracker):
    model = mlflow.pyfunc.load_model("models:/need-redcnn@champion")
    images = np.full((1, 64, 64), 40.0, np.float32)
    out = model.predict({"fbp_ld": images})
    assert out.shape == (1, 64, 64) and out.dtype == np.float32 and np.isfinite(out).all()


def test_model_card_summary_names_the_file_row_and_the_limits():
    text = model_card_summary(SHIPPED_FILES["dgdiff"], shipped_weights_dir() / "MODEL_CARD.md")
    assert "steps: 3000" in text and "not for clinical use" in text
    assert model_card_summary("nothing.pt", Path("/nonexistent/MODEL_CARD.md")) == ""


def test_need_reconstruct_without_models_takes_the_champions_and_says_so(tracker, capsys):
    args = cli.build_parser().parse_args(["reconstruct", "catalog.zarr", "--dgdiff", "weights/other.pt"])
    assert args.spdiff is None and args.doses is None  # every dose of the catalog, chosen by the flow
    cli.fill_default_models(args)
    assert args.spdiff == "models:/need-spdiff@champion" and args.dgdiff == "weights/other.pt"
    assert "spdiff models:/need-spdiff@champion (registry champion need-spdiff v1)" in capsys.readouterr().err

"""The reconstruct flow on a small real-CT archive with tiny models: outputs, incremental reruns, failures, locks."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import flows.reconstruct
from flows.models import resolve_model
from flows.progress import SliceProgress
from flows.reconstruct import ReconstructFailed, run_reconstruct
from need_core import spdiff
from storage.archive import ArchiveLockedError, UnknownDoseError, open_archive
from storage.checkpoints import save_trainer
from tasks.chunking import CellBatch, grid_cells
from tasks.reconstruct import ReconstructOptions, reconstruct_chunk
from tests.pipeline_fixtures import ingest_small_with_tiny_models, only_study

OUTPUTS = ("fbp_ld", "spdiff_fbp", "need")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, head_ct_path, prefect_harness, dask_address):
    """An ingested 6-slice archive (doses 0.5, 0.1) and tiny model checkpoints."""
    return ingest_small_with_tiny_models(head_ct_path, tmp_path_factory.mktemp("reconstruct"), dask_address)


@pytest.fixture
def reconstruct(prepared, dask_address, tmp_path):
    """A fresh copy of the archive and a runner of the flow on it."""
    pristine, spdiff_path, dgdiff_path = prepared
    archive = tmp_path / "archive.zarr"
    shutil.copytree(pristine, archive)

    def run(**overrides):
        params = dict(
            catalog=str(archive),
            doses=[0.5, 0.1],
            spdiff=spdiff_path,
            dgdiff=dgdiff_path,
            chunk_slices=2,
            device="cpu",
            dask_address=dask_address,
            tracking=False,
        )
        params.update(overrides)
        return run_reconstruct(**params)

    return archive, run


def stored_outputs(archive) -> dict[str, np.ndarray]:
    ds = open_archive(archive).dataset
    return {name: ds[name].values.copy() for name in OUTPUTS}


def test_every_slice_and_dose_is_reconstructed_and_a_rerun_does_nothing(reconstruct):
    archive, run = reconstruct
    summary = run()
    store = open_archive(archive)
    for dose in (0.5, 0.1):
        assert store.todo("reconstruct", dose=dose, produced_by=only_study(summary)["result_key"]) == []
        assert sorted(only_study(summary)["doses"][dose]["done"]) == list(range(6))
        assert only_study(summary)["doses"][dose]["chunks"] == 3
    outputs = stored_outputs(archive)
    assert all(np.isfinite(values).all() for values in outputs.values())
    # the low-dose FBP is noisier at 0.1 than at 0.5 against the normal-dose image
    error = {
        d: np.abs(store.dataset.fbp_ld.sel(dose=d).values - store.dataset.fbp_nd.values).mean() for d in (0.5, 0.1)
    }
    assert error[0.1] > error[0.5]

    again = run(doses=None)  # every dose the archive holds
    assert list(only_study(again)["doses"]) == [0.5, 0.1]
    assert all(entry["chunks"] == 0 for entry in only_study(again)["doses"].values())
    for name, values in stored_outputs(archive).items():
        np.testing.assert_array_equal(values, outputs[name])


def test_corrupt_slice_fails_alone_and_the_rerun_after_the_fix_matches_an_uninterrupted_run(
    reconstruct, prepared, tmp_path
):
    archive, run = reconstruct
    pristine = prepared[0]
    clean = tmp_path / "clean.zarr"
    shutil.copytree(pristine, clean)
    key = only_study(run(catalog=str(clean)))["result_key"]
    store = open_archive(archive, mode="r+")
    good_projection = store.read("proj_ld", 2, 3, dose=0.1).copy()
    store.write("proj_ld", 2, np.full_like(good_projection, 5e4), dose=0.1)  # raw counts where transmission belongs

    with pytest.raises(ReconstructFailed, match=r"dose 0.1: 1 slice") as failed:
        run()
    assert "1 cannot be made from what is stored" in str(failed.value)
    assert "rerun the same command" not in str(failed.value)  # bad stored input: a rerun would fail it again
    store = open_archive(archive, mode="r+")
    assert store.todo("reconstruct", dose=0.1) == [2]
    assert "slice 2" in store.errors("reconstruct", dose=0.1)[2]
    described = store.describe()  # what `need info` prints: the failed slice and its error, one line
    assert "failed slices and why:" in described
    assert re.search(r"reconstruct dose 0.1 slices 2: .*slice 2", described)
    # slices 0-1 and 3 were computed without slice 2 as context: stored, but recomputed once it is mended
    assert store.todo("reconstruct", dose=0.1, produced_by=key) == [0, 1, 2, 3]
    assert store.todo("reconstruct", dose=0.5, produced_by=key) == []
    before = stored_outputs(archive)

    store.write("proj_ld", 2, good_projection, dose=0.1)
    rerun = run()
    assert only_study(rerun)["doses"][0.5]["chunks"] == 0
    redone = only_study(rerun)["doses"][0.1]
    assert redone["chunks"] == 2 and sorted(redone["done"]) == [0, 1, 2, 3]
    after, uninterrupted = stored_outputs(archive), stored_outputs(clean)
    for name in OUTPUTS:
        np.testing.assert_array_equal(after[name][:, 4:], before[name][:, 4:])
        np.testing.assert_array_equal(after[name], uninterrupted[name])


def test_results_do_not_depend_on_the_workers_or_the_order_chunks_run_in(reconstruct, prepared, tmp_path):
    archive, run = reconstruct
    on_two_workers = run(doses=[0.1])
    pristine, spdiff_path, dgdiff_path = prepared
    one_process = tmp_path / "one_process.zarr"
    shutil.copytree(pristine, one_process)
    options = ReconstructOptions(device="cpu", chunk_slices=2)
    models = resolve_model(spdiff_path, "spdiff"), resolve_model(dgdiff_path, "dgdiff")
    result_key = only_study(on_two_workers)["result_key"]
    assert options.result_key(*models, open_archive(one_process)) == result_key
    for cell in reversed(grid_cells(range(6), 2, 6)):
        reconstruct_chunk.fn(str(one_process), 0.1, CellBatch((cell,)), *models, options, result_key)
    for name, values in stored_outputs(one_process).items():
        np.testing.assert_array_equal(values, stored_outputs(archive)[name])


def test_a_second_run_on_a_locked_archive_is_refused(reconstruct):
    archive, run = reconstruct
    with open_archive(archive, mode="r+").lock("reconstruct"):
        with pytest.raises(ArchiveLockedError):
            run()
    assert all(np.isnan(values).all() for values in stored_outputs(archive).values())


def test_bad_references_fail_before_any_compute(reconstruct, tmp_path):
    archive, run = reconstruct
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        run(spdiff=str(tmp_path / "missing.pt"))
    with pytest.raises(UnknownDoseError):
        run(doses=[0.3])
    assert all(np.isnan(values).all() for values in stored_outputs(archive).values())


def test_a_model_trained_for_other_physics_fails_its_study_before_any_compute(reconstruct, tmp_path):
    archive, run = reconstruct
    store = open_archive(archive)
    other_noise = spdiff.SPDiffTrainer(
        spdiff.TrainSettings(
            network=spdiff.network_profile("tiny"),
            schedule=spdiff.SPDiffSchedule(electronic_noise_var=5.0),
            batch_size=2,
            patch_shape=(32, 32),
        ),
        [store.read("proj_nd", 0, store.n_slices)],
        device="cpu",
    )
    path = save_trainer(tmp_path / "sigma5.pt", other_noise)
    with pytest.raises(ReconstructFailed, match="dose 0.1: 6 slice") as failed:
        run(spdiff=str(path))
    assert "12 cannot be made from what is stored" in str(failed.value)
    assert all(np.isnan(values).all() for values in stored_outputs(archive).values())
    errors = open_archive(archive).errors("reconstruct", dose=0.1)
    assert sorted(errors) == list(range(6)) and re.search("study .*σe² = 5 but .* σe² = 10", errors[0])


def test_chosen_slices_only_are_reconstructed(reconstruct):
    archive, run = reconstruct
    with pytest.raises(ValueError, match=r"outside"):
        run(slices=[5, 6])
    summary = run(doses=[0.1], slices=[2, 3])
    assert sorted(only_study(summary)["doses"][0.1]["done"]) == [2, 3]
    store = open_archive(archive)
    assert store.todo("reconstruct", dose=0.1) == [0, 1, 4, 5]
    need = store.dataset.need.sel(dose=0.1).values
    assert np.isfinite(need[[2, 3]]).all() and np.isnan(need[[0, 1, 4, 5]]).all()


def test_cells_batched_into_fewer_tasks_give_the_same_results(reconstruct, prepared, tmp_path, monkeypatch):
    archive, run = reconstruct
    per_cell = tmp_path / "per_cell.zarr"
    shutil.copytree(prepared[0], per_cell)
    run(catalog=str(per_cell))
    monkeypatch.setattr(flows.reconstruct, "TASKS_PER_RUN", 1)  # every study-dose's cells in one task
    batched = only_study(run())
    assert all(entry["chunks"] == 1 and len(entry["done"]) == 6 for entry in batched["doses"].values())
    for name, values in stored_outputs(archive).items():
        np.testing.assert_array_equal(values, stored_outputs(per_cell)[name])


def test_the_terminal_bar_hears_every_slice_leave_spdiff_and_dgdiff(reconstruct, monkeypatch):
    archive, run = reconstruct
    heard: list[dict] = []
    hear = SliceProgress.on_event

    def spy(progress, event):
        heard.append(event[1])
        hear(progress, event)

    monkeypatch.setattr(SliceProgress, "on_event", spy)
    run(doses=[0.5])
    by_stage = {
        stage: sorted(s for m in heard if m["stage"] == stage for s in m["slices"]) for stage in ("spdiff", "dgdiff")
    }
    assert by_stage == {"spdiff": list(range(6)), "dgdiff": list(range(6))}
    assert all(len(m["slices"]) == 1 for m in heard if m["stage"] == "dgdiff")  # one slice per CPU network batch
    (study_path,) = {m["archive"] for m in heard}
    assert study_path.startswith(str(archive))  # the study's group inside the catalog, as its tasks were given it

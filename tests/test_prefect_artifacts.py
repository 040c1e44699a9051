"""What a flow run shows in Prefect, from plain builders: run names, artifact keys, the quality report, failed slices
and per-stage timings (tests/test_live_runs.py reads the artifacts of real flow runs back from Prefect's API)."""

from __future__ import annotations

from flows.reports import artifact_key, failed_rows, quality_markdown, run_name, stage_lines


def test_flow_run_names_say_what_runs():
    assert run_name("reconstruct", {"catalog": "/data/head_ct.zarr", "doses": [0.25, 0.1]}) == (
        "reconstruct head_ct · 0.25,0.1"
    )
    assert run_name("reconstruct", {"catalog": "c.zarr", "doses": [0.5], "slices": [2, 3, 4, 9]}) == (
        "reconstruct c · 0.5 · slices 2-4,9"
    )
    assert run_name("evaluate", {"catalog": "cohort", "doses": None, "split": "test"}) == (
        "evaluate cohort · all doses · test split"
    )
    assert run_name("ingest", {"catalog": "x.zarr", "doses": (0.5,), "studies": ["a", "b"]}).endswith("2 studies")


def test_artifact_keys_are_what_prefect_accepts():
    assert artifact_key("reconstruct", "failed-slices", "/data/Head CT_2.zarr") == "reconstruct-failed-slices-head-ct-2"


def summary(failed: dict[int, str]) -> dict:
    entry = {
        "done": [0, 1],
        "failed": failed,
        "chunks": 2,
        "task_seconds": 10.0,
        "seconds": {"spdiff": 6.0, "fbp": 0.5, "dgdiff": 3.0, "io": 0.25},
    }
    return {"study-a": {"doses": {0.25: entry}}}


def test_failed_slices_and_stage_timings():
    assert failed_rows(summary({2: "ValueError: slice 2 holds raw counts"})) == [
        {"study": "study-a", "dose": 0.25, "slice": 2, "error": "ValueError: slice 2 holds raw counts"}
    ]
    lines = stage_lines(summary({}), wall_s=12.0)
    assert [line.split()[1] for line in lines[:4]] == ["spdiff", "fbp", "dgdiff", "io"]
    assert "6.00 s" in lines[0] and "60.0%" in lines[0]
    assert lines[-1].startswith("tasks") and "2 chunk(s)" in lines[-1] and "12.00 s" in lines[-1]


def test_the_quality_report_links_the_mlflow_run():
    rows = [
        {"method": "need", "dose": 0.25, "psnr": 40.0, "psnr_std": 1.0, "ssim": 0.9, "ssim_std": 0.01}
        | {"rmse_hu": 20.0, "rmse_hu_std": 2.0, "n_slices": 2}
    ]
    text = quality_markdown("reconstruct head", rows, {"parent_run_id": "abc", "url": "http://127.0.0.1:5000/#/x"})
    assert "| 0.25 | need |" in text and "[abc](http://127.0.0.1:5000/#/x)" in text
    assert "tracking disabled" in quality_markdown("reconstruct head", [], {"disabled": True})


def test_every_flow_run_is_named_after_what_it_runs(prefect_harness):
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.reports import demo_run_name, nightly_run_name, pacs_run_name, train_run_name

    def named(namer, flow_name):
        @flow(name=flow_name, flow_run_name=namer)
        def probe(catalog="", doses=None, model="", profile="", drop_folder="", url="", since="", study="") -> str:
            return str(flow_run.name)

        return probe

    assert named(demo_run_name, "demo")(doses=(0.5, 0.25)) == "demo head_ct · 0.5,0.25"
    assert named(train_run_name, "train")(catalog="/d/head_ct.zarr", model="dgdiff", profile="tiny") == (
        "train dgdiff tiny · head_ct"
    )
    assert named(nightly_run_name, "nightly")(drop_folder="/in/incoming", catalog="c.zarr", doses=[0.25]) == (
        "nightly incoming -> c · 0.25"
    )
    pull = named(pacs_run_name, "pull")
    assert pull(url="http://127.0.0.1:8042/dicom-web", catalog="p.zarr", since="20261130") == (
        "pull 127.0.0.1:8042 -> p · since 20261130"
    )

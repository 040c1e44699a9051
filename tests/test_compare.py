"""`need compare` against a real SQLite MLflow store filled by the flows' own run logging: each distinct result once
with its run count, model versions (also found through a logged checkpoint digest), filters, formats, 100 columns,
and a row per study from the long quality tables."""

from __future__ import annotations

import csv
import io

import pytest

from flows.cli import main
from flows.tracking.compare import TABLE_WIDTH, compare_rows, format_rows
from flows.tracking.quality_runs import log_quality_runs
from flows.tracking.registry import CHECKSUM_TAG
from flows.tracking.store import Tracker
from tasks.evaluation import DoseEvaluation

ARCHIVE = "/data/catalogs/head_ct.zarr"
MODELS = {"spdiff_model": "need-spdiff/1", "dgdiff_model": "need-dgdiff/1", "redcnn_model": "need-redcnn/1"}
SCORES = {"fbp_ld": 37.5, "redcnn_25": 40.1, "spdiff_fbp": 39.4, "need": 40.6}


def evaluation(dose: float, shift: float = 0.0, n_slices: int = 20) -> DoseEvaluation:
    """A dose's per-slice and summary rows as tasks.evaluation makes them."""
    summary = [
        {
            "dose": dose,
            "method": method,
            "psnr": psnr + shift - (0.5 - dose),
            "psnr_std": 0.25,
            "ssim": 0.9,
            "ssim_std": 0.01,
            "rmse_hu": 20.0,
            "rmse_hu_std": 0.5,
            "n_slices": n_slices,
        }
        for method, psnr in SCORES.items()
    ]
    per_slice = [
        {"slice": s, "method": row["method"], "psnr": row["psnr"], "ssim": row["ssim"], "rmse_hu": row["rmse_hu"]}
        for row in summary
        for s in range(n_slices)
    ]
    return DoseEvaluation(dose=dose, slices=list(range(n_slices)), per_slice=per_slice, summary=summary)


@pytest.fixture(scope="module")
def store(tracking_store):
    """A demo-like experiment: a demo run and a reconstruct run logging the same results, then a newer model's run
    at one dose; a second experiment with a cohort's run."""
    demo = Tracker(tracking_store, "compare-demo")
    for flow in ("demo", "reconstruct"):
        log_quality_runs(demo, flow, ARCHIVE, [evaluation(0.5), evaluation(0.1)], MODELS)
    newer = MODELS | {"spdiff_model": "need-spdiff/2"}
    log_quality_runs(demo, "reconstruct", ARCHIVE, [evaluation(0.1, shift=0.4)], newer)
    cohort = Tracker(tracking_store, "compare-cohort")
    rows = [
        {"study": study, "dose": 0.25, "method": "need", "slice": s, "psnr": base + s, "ssim": 0.9, "rmse_hu": 20.0}
        | {"spdiff_model": "need-spdiff/1", "dgdiff_model": "need-dgdiff/1"}
        for study, base in (("p1", 30.0), ("p2", 34.0))
        for s in range(2)
    ]
    pooled = evaluation(0.25, n_slices=4)
    pooled.summary = [row | {"n_studies": 2} for row in pooled.summary if row["method"] == "need"]
    log_quality_runs(cohort, "evaluate", "/data/cohort.zarr", [pooled], MODELS, table=rows)
    return tracking_store


def test_each_result_shows_once_with_its_run_count_and_model_versions(store):
    rows = compare_rows("compare-demo")
    one, two = "need-spdiff/1 need-dgdiff/1", "need-spdiff/2 need-dgdiff/1"
    shown = [(r.dose, r.method, r.models, r.runs) for r in rows]
    assert shown == [  # the demo and reconstruct runs logged the same results: each once, counted twice
        (0.5, "fbp_ld", "-", 2),
        (0.5, "redcnn_25", "need-redcnn/1", 2),
        (0.5, "spdiff_fbp", "need-spdiff/1", 2),
        (0.5, "need", one, 2),
        (0.1, "fbp_ld", "-", 2),
        (0.1, "fbp_ld", "-", 1),  # the newer run scored other slices (other values): its own row
        (0.1, "redcnn_25", "need-redcnn/1", 2),
        (0.1, "redcnn_25", "need-redcnn/1", 1),
        (0.1, "spdiff_fbp", "need-spdiff/1", 2),
        (0.1, "spdiff_fbp", "need-spdiff/2", 1),
        (0.1, "need", one, 2),
        (0.1, "need", two, 1),
    ]
    newer = next(r for r in rows if r.models == two)
    assert newer.psnr == pytest.approx(40.6) and newer.psnr_std == 0.25
    assert {r.dataset for r in rows} == {"head_ct"} and all(r.n_slices == 20 for r in rows)


def test_filters_pick_doses_methods_and_method_families(store):
    assert {r.method for r in compare_rows("compare-demo", doses=[0.5], methods=["need", "redcnn"])} == {
        "need",
        "redcnn_25",
    }
    assert {r.dose for r in compare_rows("compare-demo", doses=[0.5])} == {0.5}
    assert compare_rows("compare-demo", doses=[0.05]) == []


def test_table_fits_100_columns_and_csv_and_markdown_carry_every_value(store):
    rows = compare_rows()
    table = format_rows(rows).splitlines()
    assert table[0].split()[:3] == ["dataset", "dose", "method"]
    assert max(len(line) for line in table) <= TABLE_WIDTH
    assert any("cohort (2 studies)" in line and "need-spdiff/1 need-dgdiff/1" in line for line in table)
    parsed = list(csv.DictReader(io.StringIO(format_rows(rows, "csv"))))
    assert len(parsed) == len(rows) and {"psnr_std", "ssim_std", "rmse_hu_std", "runs", "run_id"} <= set(parsed[0])
    markdown = format_rows(rows, "markdown").splitlines()
    assert markdown[0].startswith("| dataset | dose |") and len(markdown) == len(rows) + 2
    assert "40.10 ± 0.25" in format_rows(rows, "markdown")


def test_a_logged_checkpoint_digest_is_named_by_its_registered_version(store):
    tracker = Tracker(store, "compare-digest")
    client = tracker.client
    client.create_registered_model("need-dgdiff")
    client.create_model_version("need-dgdiff", "file:///nowhere/dgdiff.pt", tags={CHECKSUM_TAG: "0123456789abcdef"})
    params = {"spdiff_model": "need-spdiff/1", "dgdiff_model": "/weights/dgdiff_cpu.pt"}
    params |= {"dgdiff_identity": "0123456789abcdef", "spdiff_identity": "fedcba9876543210"}
    log_quality_runs(tracker, "reconstruct", ARCHIVE, [evaluation(0.5)], params)
    (need,) = compare_rows("compare-digest", methods=["need"])
    assert need.models == "need-spdiff/1 need-dgdiff/1"
    unregistered = params | {"dgdiff_identity": "aaaaaaaaaaaaaaaa"}
    log_quality_runs(tracker, "reconstruct", ARCHIVE, [evaluation(0.5, shift=1.0)], unregistered)
    assert {r.models for r in compare_rows("compare-digest", methods=["need"])} == {
        "need-spdiff/1 need-dgdiff/1",
        "need-spdiff/1 dgdiff:aaaaaaaa",
    }


def test_by_study_rows_come_from_the_long_tables(store):
    rows = compare_rows("compare-cohort", by_study=True)
    assert [(r.dataset, r.n_slices) for r in rows] == [("cohort/p1", 2), ("cohort/p2", 2)]
    assert [r.psnr for r in rows] == [30.5, 34.5] and rows[0].psnr_std == pytest.approx(0.5)


def test_need_compare_prints_csv_and_says_when_nothing_matches(store, capsys):
    assert main(["compare", "--experiment", "compare-demo", "--format", "csv", "--method", "need"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("experiment,dataset,dose,method") and len(lines) == 1 + 3
    assert main(["compare", "--experiment", "compare-demo", "--dose", "0.05"]) == 0
    assert "no scored results" in capsys.readouterr().out
    assert main(["compare", "--experiment", "no-such-experiment"]) == 1
    assert "compare-demo" in capsys.readouterr().err

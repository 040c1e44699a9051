"""Reading runs back for people: the dose × method quality table of `need compare`, and the `mlflow ui` command of
`need ui`."""

from __future__ import annotations

import sys
import time
from typing import Any
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from flows.tracking.store import RUN_KIND_TAG, checked_uri
from tasks.evaluation import METHODS


def compare_rows(experiment: str | None = None) -> list[dict[str, Any]]:
    """One row per (run, dose, method) of the per-dose quality runs in `experiment` (default: every experiment);
    PSNR/SSIM/RMSE are means over every slice of the run's studies."""
    uri = checked_uri()
    client = MlflowClient(uri, registry_uri=uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no experiment {experiment!r} in {uri}; experiments: {names}")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            ids,
            filter_string=f"tags.`{RUN_KIND_TAG}` LIKE '%-dose'",
            max_results=5000,
            order_by=["attributes.start_time ASC"],
        )
        if ids
        else []
    )
    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        for method in METHODS:
            if f"{method}_psnr" not in metrics:
                continue
            rows.append(
                {
                    "dose": float(params.get("dose", "nan")),
                    "method": method,
                    "psnr": metrics[f"{method}_psnr"],
                    "ssim": metrics.get(f"{method}_ssim", float("nan")),
                    "rmse_hu": metrics.get(f"{method}_rmse_hu", float("nan")),
                    "studies": int(metrics.get("n_studies", 1)),
                    "psnr_study_std": metrics.get(f"{method}_psnr_study_std", 0.0),
                    "spdiff": params.get("spdiff_model", "-"),
                    "dgdiff": params.get("dgdiff_model", "-"),
                    "run": f"{run.info.run_name} {run.info.run_id[:8]}",
                    "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)),
                }
            )
    return rows


def format_compare_table(rows: list[dict[str, Any]]) -> str:
    """The dose × method × metric table of `compare_rows`, newest run last within each dose and method; a cohort run
    shows its study count and the PSNR spread over its studies' means."""
    header = [
        "dose",
        "method",
        "studies",
        "PSNR (dB)",
        "± studies",
        "SSIM",
        "RMSE (HU)",
        "SPDiff",
        "DGDiff",
        "run",
        "started",
    ]
    body = [
        [
            f"{r['dose']:g}",
            r["method"],
            str(r["studies"]),
            f"{r['psnr']:.2f}",
            f"{r['psnr_study_std']:.2f}" if r["studies"] > 1 else "-",
            f"{r['ssim']:.4f}",
            f"{r['rmse_hu']:.1f}",
            r["spdiff"],
            r["dgdiff"],
            r["run"],
            r["started"],
        ]
        for r in sorted(rows, key=lambda r: (-r["dose"], r["method"]))
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in [header, *body]
    )


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line serving the local store `uri` on host:port."""
    if urlparse(uri).scheme.lower() in ("http", "https"):
        raise ValueError(f"the tracking store is already a server: open {uri} in a browser")
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]

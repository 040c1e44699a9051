"""Reading runs back for people: `need compare`'s quality table, one row per (dataset, dose, method, models), from
the per-method runs the flows log (flows.tracking.quality_runs)."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from flows.tracking.quality_runs import QUALITY_TABLE
from flows.tracking.registry import CHECKSUM_TAG, REGISTERED_NAMES
from flows.tracking.store import RUN_KIND_TAG, checked_uri
from need_core.doses import DOSE_TOLERANCE
from storage.ledger import fit_text
from tasks.evaluation import method_family, method_models

METHOD_ORDER = ("fbp_ld", "fbp_hann", "tv", "nlm", "bm3d", "redcnn", "dgdiff_only", "spdiff_fbp", "need")
"""How rows of one dose are ordered: the classical baselines, the learned ones, NEED's halves, NEED."""
TABLE_FLOWS = ("reconstruct", "evaluate")  # the flows whose parent runs carry the long QUALITY_TABLE
TABLE_WIDTH = 100


@dataclass(frozen=True)
class QualityRow:
    """One result: a method's mean ± std over `n_slices` slices of a dataset at a dose, made with `models`; `runs`
    counts the runs that logged this same result (a demo and its reconstruct run, a rerun), `run` names the newest."""

    experiment: str
    dataset: str
    dose: float
    method: str
    n_slices: int
    psnr: float
    psnr_std: float
    ssim: float
    ssim_std: float
    rmse_hu: float
    rmse_hu_std: float
    models: str
    run: str
    run_id: str
    started: str
    runs: int = 1

    def result_key(self) -> tuple[Any, ...]:
        """What makes two rows the same result (rounded below the shown precision)."""
        scores = (round(self.psnr, 4), round(self.ssim, 6), round(self.rmse_hu, 3))
        return (self.dataset, round(self.dose, 9), self.method, self.models, self.n_slices, *scores)


def compare_rows(
    experiment: str | None = None,
    doses: Sequence[float] = (),
    methods: Sequence[str] = (),
    by_study: bool = False,
) -> list[QualityRow]:
    """The distinct results in the tracking store (one experiment, default every one), each once with the count of
    runs that logged it, filtered to `doses` and `methods` (default all); per study of a cohort with `by_study`."""
    uri = checked_uri()
    client = MlflowClient(uri, registry_uri=uri)
    experiments = chosen_experiments(client, experiment)
    ids = list(experiments)
    if by_study:
        parents = [run for kind in TABLE_FLOWS for run in search(client, ids, f"tags.`{RUN_KIND_TAG}` = '{kind}'")]
        rows = study_rows(client, parents, experiments)
    else:
        runs = [r for kind in ("method", "dose") for r in search(client, ids, f"tags.`{RUN_KIND_TAG}` LIKE '%-{kind}'")]
        rows = method_rows(runs, experiments, ModelNames(client))
    wanted = [
        row
        for row in rows
        if (not doses or any(abs(row.dose - d) <= DOSE_TOLERANCE for d in doses))
        and (not methods or row.method in methods or method_family(row.method) in methods)
    ]
    return distinct(wanted)


def chosen_experiments(client: MlflowClient, experiment: str | None) -> dict[str, str]:
    """Experiment id -> name: the one named (a clear error listing the known ones if absent), else all."""
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ValueError(f"no experiment {experiment!r} in {checked_uri()}; experiments: {names}")
        return {found.experiment_id: found.name}
    return {e.experiment_id: e.name for e in client.search_experiments()}


def search(client: MlflowClient, ids: list[str], filter_string: str) -> list[Run]:
    """Every active run of `ids` matching `filter_string`, oldest first."""
    if not ids:
        return []
    return list(
        client.search_runs(ids, filter_string=filter_string, max_results=50000, order_by=["attributes.start_time ASC"])
    )


def method_rows(runs: list[Run], experiments: dict[str, str], names: ModelNames) -> list[QualityRow]:
    """Rows of the per-method runs (`<flow>-method`), their dataset from the parent dose run; a dose run without
    method runs (logged before they existed) gives a row per `<method>_psnr` metric."""
    kinds = {run.info.run_id: run.data.tags.get(RUN_KIND_TAG, "") for run in runs}
    doses = {run.info.run_id: run for run in runs if kinds[run.info.run_id].endswith("-dose")}
    with_methods = {r.data.tags.get("mlflow.parentRunId") for r in runs if kinds[r.info.run_id].endswith("-method")}
    rows = []
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        if kinds[run.info.run_id].endswith("-method") and "psnr" in metrics:
            parent = doses.get(run.data.tags.get("mlflow.parentRunId", ""))
            models = [names(kind, params.get(f"{kind}_model", "")) for kind in REGISTERED_NAMES]
            rows.append(
                quality_row(run, experiments, dataset_name(parent or run), params["method"], metrics, "", models)
            )
        elif run.info.run_id in doses and run.info.run_id not in with_methods:
            for key in sorted(k for k in metrics if k.endswith("_psnr") and not k.startswith(("archive_", "slice/"))):
                method = key.removesuffix("_psnr")
                models = [
                    names(kind, params.get(f"{kind}_identity", params.get(f"{kind}_model", "")))
                    for kind in method_models(method)
                ]
                rows.append(quality_row(run, experiments, dataset_name(run), method, metrics, f"{method}_", models))
    return rows


def quality_row(
    run: Run,
    experiments: dict[str, str],
    dataset: str,
    method: str,
    metrics: dict[str, float],
    prefix: str,
    models: Iterable[str],
) -> QualityRow:
    """A row from a run's `<prefix>psnr`, `<prefix>psnr_std`, … metrics."""
    nan = float("nan")
    return QualityRow(
        experiment=experiments.get(run.info.experiment_id, run.info.experiment_id),
        dataset=dataset,
        dose=float(run.data.params.get("dose", nan)),
        method=method,
        n_slices=int(run.data.params.get("n_slices", 0)),
        psnr=metrics[f"{prefix}psnr"],
        psnr_std=metrics.get(f"{prefix}psnr_std", nan),
        ssim=metrics.get(f"{prefix}ssim", nan),
        ssim_std=metrics.get(f"{prefix}ssim_std", nan),
        rmse_hu=metrics.get(f"{prefix}rmse_hu", nan),
        rmse_hu_std=metrics.get(f"{prefix}rmse_hu_std", nan),
        models=" ".join(name for name in models if name) or "-",
        run=run.info.run_name or "",
        run_id=run.info.run_id,
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000)),
    )


def dataset_name(run: Run) -> str:
    """The catalog a run scored (its folder name without `.zarr`), with its study count when it scored several."""
    archive = run.data.tags.get("need.archive", "")
    name = Path(archive).name.removesuffix(".zarr") if archive else "?"
    studies = int(run.data.metrics.get("n_studies", 1))
    return f"{name} ({studies} studies)" if studies > 1 else name


def study_rows(client: MlflowClient, parents: list[Run], experiments: dict[str, str]) -> list[QualityRow]:
    """Rows per (study, dose, method, models) from the long quality tables of reconstruct and evaluate runs."""
    import pandas as pd  # only this view reads tables

    rows = []
    with tempfile.TemporaryDirectory(prefix="need-compare-") as scratch:
        for run in parents:
            try:
                path = client.download_artifacts(run.info.run_id, QUALITY_TABLE, scratch)
            except (MlflowException, OSError):
                continue  # a run that scored nothing, or logged before the table existed
            table = pd.read_json(path, orient="split")
            catalog = dataset_name(run).split(" (")[0]
            models = table[["spdiff_model", "dgdiff_model"]].fillna("").astype(str).agg(" ".join, axis=1).str.strip()
            for (study, dose, method, named), group in table.groupby(["study", "dose", "method", models]):
                metrics = {name: float(group[name].mean()) for name in ("psnr", "ssim", "rmse_hu")}
                metrics |= {f"{name}_std": float(np.std(group[name])) for name in ("psnr", "ssim", "rmse_hu")}
                row = quality_row(run, experiments, f"{catalog}/{study}", str(method), metrics, "", [str(named)])
                rows.append(replace(row, dose=float(dose), n_slices=len(group)))
    return rows


def distinct(rows: list[QualityRow]) -> list[QualityRow]:
    """Each result once (the newest run that logged it, with the count of runs), ordered by dataset, dose (highest
    first), method (METHOD_ORDER) and models."""
    newest: dict[tuple[Any, ...], QualityRow] = {}
    for row in sorted(rows, key=lambda r: r.started):
        key = row.result_key()
        newest[key] = replace(row, runs=newest[key].runs + 1) if key in newest else row
    return sorted(newest.values(), key=lambda r: (r.dataset, -r.dose, method_rank(r.method), r.models, r.started))


def method_rank(method: str) -> tuple[int, str]:
    """Where `method` sorts among a dose's rows (METHOD_ORDER, unknown methods last)."""
    family = method_family(method)
    return (METHOD_ORDER.index(family) if family in METHOD_ORDER else len(METHOD_ORDER), method)


class ModelNames:
    """`names(kind, label)`: a model as a person reads it — its registered `need-<kind>/VERSION`, found by the
    checkpoint digest a run logged when the run named a file; the label itself (shortened) when unregistered."""

    def __init__(self, client: MlflowClient) -> None:
        self.client = client
        self.by_digest: dict[str, dict[str, str]] = {}

    def __call__(self, kind: str, label: str) -> str:
        if not label or label.startswith(f"{REGISTERED_NAMES[kind]}/"):
            return label
        if kind not in self.by_digest:
            self.by_digest[kind] = self.registered(kind)
        return self.by_digest[kind].get(label, f"{kind}:{Path(label).name[:8]}")

    def registered(self, kind: str) -> dict[str, str]:
        """Checkpoint digest -> `need-<kind>/VERSION` (the oldest version of a digest registered twice)."""
        try:
            versions = self.client.search_model_versions(f"name = '{REGISTERED_NAMES[kind]}'")
        except MlflowException:
            return {}
        found: dict[str, str] = {}
        for version in sorted(versions, key=lambda v: int(v.version)):
            digest = version.tags.get(CHECKSUM_TAG)
            if digest:
                found.setdefault(digest, f"{version.name}/{version.version}")
        return found


def format_rows(rows: list[QualityRow], fmt: str = "table") -> str:
    """`rows` as a fixed-width table of at most TABLE_WIDTH columns (mean ± std of PSNR; SSIM, RMSE means; every
    value with its std in `csv` and `markdown`)."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, [f.name for f in fields(QualityRow)], lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        header = ["dataset", "dose", "method", "slices", "PSNR (dB)", "SSIM", "RMSE (HU)", "models", "runs"]
        lines = [header, ["---", "---:", "---", "---:", "---:", "---:", "---:", "---", "---:"]]
        lines += [[*row_cells(r, every_std=True), str(r.runs)] for r in rows]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: table, csv or markdown")
    header = ["dataset", "dose", "method", "n", "PSNR (dB)", "SSIM", "RMSE", "models"]
    body = [row_cells(r, every_std=False) for r in rows]
    return fixed_width([header, *body], shrink=0, width=TABLE_WIDTH)


def row_cells(r: QualityRow, every_std: bool) -> list[str]:
    """A row's cells as both views show them: PSNR always with its std, SSIM and RMSE with theirs when
    `every_std` (the 100-column table shows their means only)."""
    ssim = plus_minus(r.ssim, r.ssim_std, 4) if every_std else f"{r.ssim:.4f}"
    rmse = plus_minus(r.rmse_hu, r.rmse_hu_std, 1) if every_std else f"{r.rmse_hu:.1f}"
    psnr = plus_minus(r.psnr, r.psnr_std, 2)
    return [r.dataset, f"{r.dose:g}", r.method, str(r.n_slices), psnr, ssim, rmse, r.models]


def plus_minus(mean: float, std: float, digits: int) -> str:
    """`mean ± std` (just the mean where no std was logged)."""
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def fixed_width(lines: list[list[str]], shrink: int, width: int) -> str:
    """Columns padded to their widest cell, two spaces apart; column `shrink` is cut (with …) to fit `width`."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    if over > 0:
        widths[shrink] = max(8, widths[shrink] - over)
    return "\n".join(
        "  ".join(fit_text(cell, w).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )

"""Nightly cohort job: ingest whatever new series arrived in a drop folder, then reconstruct what is not done.

    prefect deployment run 'nightly/cohort-nightly'        # or wait for its cron schedule (prefect.yaml)

Both steps are the ingest and reconstruct flows, run as subflows: each starts its own Dask cluster and closes it
before the next begins, and each computes only what is missing, so a night with nothing new computes nothing. A
corrupt series fails alone: the others are ingested and everything pending is reconstructed, then the run fails
naming the series (the schedule shows red, the good work is stored). An empty drop folder is a quiet night.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.ingest import IngestFailed, ingest
from flows.reconstruct import reconstruct
from flows.reports import nightly_run_name
from storage.catalog import StudyRow, open_catalog
from storage.readers.series import discover_series


class NightlyFailed(RuntimeError):
    """Some series of the drop folder could not be ingested; every other study was ingested and reconstructed."""


def study_rows(catalog: str) -> dict[str, StudyRow]:
    """The catalog's study table by key (ingest state and error of each study); empty before its first ingest."""
    if not Path(catalog).exists():
        return {}
    return {row.study: row for row in open_catalog(catalog).rows()}


def reconstructed_slices(summary: dict[str, Any]) -> dict[str, dict[float, list[int]]]:
    """Per study and dose, the slices a reconstruct run computed (studies with none left out)."""
    done = {
        key: {dose: sorted(entry["done"]) for dose, entry in study["doses"].items() if entry["done"]}
        for key, study in summary["studies"].items()
    }
    return {key: doses for key, doses in done.items() if doses}


@flow(name="nightly", flow_run_name=nightly_run_name)
def nightly(
    drop_folder: str,
    catalog: str,
    doses: list[float],
    spdiff: str,
    dgdiff: str,
    chunk_slices: int = 8,
    device: str = "auto",
    seed: int = 0,
    split: str | None = None,
    tracking: bool = True,
    experiment: str | None = None,
    spacing_mm: list[float] | None = None,
) -> dict[str, Any]:
    """Ingest the new series of `drop_folder` into `catalog`, then reconstruct every slice not done of `split` (or of
    every ingested study); return the new studies, the series that failed and the slices reconstructed per study.

    `spacing_mm` (dz, dy, dx) is needed only for dropped files that do not carry it (plain .npy)."""
    logger = get_run_logger()
    arrived = discover_series([drop_folder]).series  # headers only; an absent drop folder is an error
    before = study_rows(catalog)
    if arrived:
        try:
            ingest(
                sources=[drop_folder],
                catalog=catalog,
                doses=tuple(doses),
                seed=seed,
                chunk_slices=chunk_slices,
                spacing_mm=spacing_mm,
            )
        except IngestFailed as err:  # the other series are stored: reconstruct them, fail the run at the end
            logger.error("%s", err)
    else:
        logger.info("nothing arrived in %s: no series to ingest", drop_folder)
    after = study_rows(catalog)
    done_before = {key for key, row in before.items() if row.ingest == "done"}
    new = [s.key for s in arrived if s.key in after and after[s.key].ingest == "done" and s.key not in done_before]
    failed = {s.key: after[s.key].ingest_error for s in arrived if s.key in after and after[s.key].ingest == "failed"}
    reconstructed: dict[str, dict[float, list[int]]] = {}
    if any(row.ingest == "done" for row in after.values()):
        result = reconstruct(
            catalog=catalog,
            doses=doses,
            spdiff=spdiff,
            dgdiff=dgdiff,
            chunk_slices=chunk_slices,
            device=device,
            seed=seed,
            split=split,
            tracking=tracking,
            experiment=experiment,
        )
        reconstructed = reconstructed_slices(result)
    else:
        logger.info("%s holds no ingested study yet: nothing to reconstruct", catalog)
    summary = {"catalog": catalog, "new": new, "failed": failed, "reconstructed": reconstructed}
    logger.info(
        "nightly: %d new studies, %d failed series, %d slice-doses reconstructed in %d studies",
        len(new),
        len(failed),
        sum(len(slices) for study in reconstructed.values() for slices in study.values()),
        len(reconstructed),
    )
    if failed:
        raise NightlyFailed(
            f"{len(failed)} series of {drop_folder} could not be ingested (the others are ingested and reconstructed); "
            "fix or remove them and the next run retries them: "
            + "; ".join(f"{key} ({message})" for key, message in failed.items())
        )
    return summary

"""PACS in and out over DICOMweb: pull CT series into a catalog, push reconstructed series back, and the nightly
job doing both around a reconstruction.

    need pull http://pacs:8042/dicom-web outputs/pacs.zarr --since 20260101 --doses 0.25
    need push outputs/pacs.zarr http://pacs:8042/dicom-web --method need --dose 0.25 --split test
    prefect deployment run 'pacs-round-trip/pacs-nightly'

Pull finds the CT series with QIDO-RS (one study by StudyInstanceUID, or every study in a StudyDate window),
retrieves each with WADO-RS into `<catalog>.locks/pull/<hash of the series UID>/` (outside the Zarr hierarchy,
one file per instance written atomically, so a retrieval cut off midway resumes with the missing instances only),
and ingests them with the ingest flow, which de-identifies them. The staged files are the PACS's: they carry the
patients' names and IDs, so the staging folder of each series is deleted as soon as its study is ingested (or
skipped as a scout); a series that fails keeps its files for the rerun. Series already ingested with every asked
dose are not retrieved again.

Push (flows.push) exports a derived DICOM series per study, pseudonymous (PatientID is the study key), stores it with
STOW-RS and checks with QIDO-RS that the server holds every instance.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
from prefect import flow, get_run_logger

from flows.ingest import DEFAULT_DOSES, IngestFailed, ingest
from flows.nightly import reconstructed_slices
from flows.push import PushedSeries, push
from flows.reconstruct import reconstruct
from flows.reports import pacs_run_name
from need_core.physics.validation import validate_doses
from storage.catalog import open_catalog
from storage.catalog_paths import lock_root
from storage.dicomweb import NoCtSeries, RemoteSeries, connect, parse_dicom_date, staging_name
from storage.locks import exclusive_lock
from storage.readers.series import discover_series
from tasks.runner import dask_task_runner, uses_gpu


class PullFailed(RuntimeError):
    """Some series could not be pulled; the others are ingested, and the failed ones keep their staged files."""


def staging_folder(catalog: str | Path, series_uid: str) -> Path:
    """Where a series' raw files wait for ingest: beside the catalog, never inside the store. They carry patient
    identifiers: keep the folder private; the pull deletes it once the series is ingested."""
    return lock_root(Path(catalog)) / "pull" / staging_name(series_uid)


@flow(name="pull", flow_run_name=pacs_run_name)
def pull(
    url: str,
    catalog: str,
    study: str | None = None,
    since: str | None = None,
    until: str | None = None,
    doses: tuple[float, ...] = DEFAULT_DOSES,
    seed: int = 0,
    chunk_slices: int = 8,
    dask_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Pull the CT series of `study` (a StudyInstanceUID), or of the studies dated `since`..`until` (YYYYMMDD), from
    the DICOMweb server at `url` into `catalog`, de-identified; return what was retrieved, skipped and ingested."""
    ingest_flow = ingest.with_options(task_runner=dask_task_runner(dask_address, workers))
    summary = pull_series(url, catalog, study, since, until, tuple(doses), seed, chunk_slices, ingest_flow)
    if summary["failed"]:
        raise PullFailed(failure_line(summary["failed"]))
    return summary


def pull_series(
    url: str,
    catalog: str,
    study: str | None,
    since: str | None,
    until: str | None,
    doses: tuple[float, ...],
    seed: int,
    chunk_slices: int,
    ingest_flow: Callable[..., dict[str, Any]] = ingest,
) -> dict[str, Any]:
    """The pull, failures listed in the summary's "failed" (series label -> why) instead of raised. Nothing is
    written before the server has answered the search; one pull at a time per catalog (a lock beside it)."""
    logger = get_run_logger()
    for day in (since, until):
        if day is not None:
            parse_dicom_date(day)
    doses = tuple(validate_doses(list(doses)))
    pacs = connect(url)
    wanted = {series.key: series for series in pacs.search_ct_series(study, since, until)}
    ready = already_ingested(catalog, wanted, doses)
    failed: dict[str, str] = {}
    staged: dict[str, Path] = {}
    retrieved: dict[str, int] = {}
    with exclusive_lock(lock_root(Path(catalog)) / "pull.lock", f"pulling into {catalog}"):
        for key, series in wanted.items():
            if key in ready:
                continue
            retrieval = pacs.retrieve_series(series, staging_folder(catalog, series.series_uid))
            retrieved[key] = retrieval.fetched
            logger.info("%s: %d instances retrieved, %d already staged", key, retrieval.fetched, retrieval.present)
            sizes = slice_sizes(retrieval.files)
            if len(sizes) > 1:  # the reader would refuse it too; refused here, the catalog is not touched
                failed[series.label] = f"slices have different sizes {sorted(sizes)} (Rows, Columns); not ingested"
            else:
                staged[key] = retrieval.folder
        skipped = drop_unusable(staged, wanted)
        if staged:
            try:
                ingest_flow(
                    sources=[str(folder) for folder in staged.values()],
                    catalog=catalog,
                    doses=doses,
                    seed=seed,
                    chunk_slices=chunk_slices,
                )
            except IngestFailed as err:  # the failed series are named below, their files kept
                logger.error("%s", err)
        rows = {row.study: row for row in open_catalog(catalog).rows()} if Path(catalog).exists() else {}
        for key, folder in staged.items():
            row = rows.get(key)
            if row is not None and row.ingest == "done":
                shutil.rmtree(folder)  # the raw files carry patient identifiers: gone once de-identified
            else:
                failed[wanted[key].label] = f"ingest failed ({row.ingest_error if row else 'no study written'})"
    for line in skipped.values():
        logger.info("skipped %s", line)
    return {
        "catalog": catalog,
        "url": pacs.url,
        "studies": sorted(key for key in wanted if key in rows and rows[key].ingest == "done"),
        "retrieved": retrieved,
        "already_ingested": sorted(ready),
        "skipped": skipped,
        "failed": failed,
    }


def drop_unusable(staged: dict[str, Path], wanted: dict[str, RemoteSeries]) -> dict[str, str]:
    """Take the staged series the ingest would skip (scouts, localizers, non-axial) out of `staged` and delete
    their files (patient identifiers); return why each was skipped, by key."""
    found = discover_series(list(staged.values()))
    ingestable = {source.key for source in found.series}
    skipped = {}
    for key in set(staged) - ingestable:
        folder = staged.pop(key)
        why = next((line.split(": ", 1)[-1] for line in found.skipped if line.startswith(folder.name)), "no image")
        skipped[key] = f"{wanted[key].label}: {why}"
        shutil.rmtree(folder)
    return skipped


def already_ingested(catalog: str, wanted: dict[str, RemoteSeries], doses: tuple[float, ...]) -> set[str]:
    """The wanted studies the catalog holds, ingested, at every dose: nothing to retrieve for them."""
    if not Path(catalog).exists():
        return set()
    store = open_catalog(catalog)
    done = {row.study for row in store.rows() if row.ingest == "done" and row.study in wanted}
    return {key for key in done if set(doses) <= set(store.study(key, "r").doses)}


def slice_sizes(files: tuple[Path, ...]) -> set[tuple[int, int]]:
    """The (Rows, Columns) of a staged series' instances, from their headers."""
    sizes = set()
    for path in files:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        sizes.add((int(header.get("Rows", 0)), int(header.get("Columns", 0))))
    return sizes


def failure_line(failed: dict[str, str]) -> str:
    """One line naming each series that could not be pulled."""
    return (
        f"{len(failed)} series could not be pulled (any others are ingested; the failed ones keep their staged "
        "files and are retried by a rerun): " + "; ".join(f"{label}: {why}" for label, why in failed.items())
    )


@flow(name="pacs-round-trip", flow_run_name=pacs_run_name)
def pacs_round_trip(
    url: str,
    catalog: str,
    spdiff: str,
    dgdiff: str,
    doses: list[float],
    method: str = "need",
    study: str | None = None,
    since: str | None = None,
    lookback_days: int | None = None,
    chunk_slices: int = 8,
    device: str = "auto",
    seed: int = 0,
    tracking: bool = True,
    experiment: str | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Pull the CT series of `study`, or of the studies since `since` (or of the last `lookback_days` days) from
    `url` into `catalog`, reconstruct them at each dose, and push `method`'s results back to `url`.

    Only results this run computed are pushed (each export is a new series: pushing a study twice would store it
    twice); `need push` sends any again. A night with nothing on the server is quiet; series that fail to pull fail
    alone and turn the run red at the end. `dask_address`: an existing Dask cluster (default a local one per step)."""
    logger = get_run_logger()
    if lookback_days is not None:
        since = (date.today() - timedelta(days=lookback_days)).strftime("%Y%m%d")
    try:
        ingest_flow = ingest.with_options(task_runner=dask_task_runner(dask_address))
        pulled = pull_series(url, catalog, study, since, None, tuple(doses), seed, chunk_slices, ingest_flow)
    except NoCtSeries as err:
        logger.info("%s", err)
        return {"catalog": catalog, "pulled": {}, "reconstructed": {}, "pushed": []}
    keys = pulled["studies"]
    pushed: list[PushedSeries] = []
    reconstructed: dict[str, dict[float, list[int]]] = {}
    if keys:
        on_gpu = dask_task_runner(dask_address, gpu=uses_gpu(device))  # as run_reconstruct: GPU tasks need GPU workers
        result = reconstruct.with_options(task_runner=on_gpu)(
            catalog=catalog,
            doses=doses,
            spdiff=spdiff,
            dgdiff=dgdiff,
            chunk_slices=chunk_slices,
            device=device,
            seed=seed,
            studies=keys,
            tracking=tracking,
            experiment=experiment,
        )
        reconstructed = reconstructed_slices(result)
        for dose in doses:
            fresh = [key for key in keys if dose in reconstructed.get(key, {})]
            if fresh:
                pushed.extend(push(catalog, url, method, dose, studies=fresh))
    for item in pushed:
        logger.info("stored %s %s dose %s: %d instances", item.study, item.method, item.dose, item.instances)
    if pulled["failed"]:
        raise PullFailed(failure_line(pulled["failed"]))
    return {
        "catalog": catalog,
        "pulled": pulled,
        "reconstructed": reconstructed,
        "pushed": [dataclasses.asdict(item) for item in pushed],
    }

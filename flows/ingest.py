"""Ingest flow: find every CT series in the sources, simulate each study's normal-dose and low-dose scans, and write
them into one catalog (one group per study).

    need ingest SRC... CATALOG --doses 0.5,0.25,0.1,0.05

SRC may be files or folder trees (DICOM grouped by series, one study per axial CT series; .inv3, .nii[.gz], .npy
volumes). A rerun ingests only series the catalog has not seen, finishes what a killed run left undone, retries
studies whose ingest failed, and adds new doses; a corrupt series fails alone and is listed. Re-ingesting a study
with other settings, or from a source whose content changed since (storage.source_identity: pixels, shape, spacing,
slice positions, orientation), is refused unless `overwrite=True`; a source whose files were not touched is not read.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from tqdm.auto import tqdm

from flows.preflight import legacy_archive_message
from flows.reports import ingest_run_name
from need_core.physics import PhysicsSettings
from need_core.physics.validation import validate_doses
from need_core.versions import SIMULATOR_VERSION
from storage.archive import Archive, ArchiveError
from storage.catalog import Catalog, StudyRow, open_or_create_catalog, row_for_archive
from storage.readers.series import SeriesSource, discover_series
from storage.source_identity import SourceCheck, file_fingerprint, needs_check, record_identity
from storage.validation import check_spacing_mm
from tasks.chunking import contiguous_chunks
from tasks.ingest import IngestChunk, check_study_source, ingest_chunk, prepare_study
from tasks.runner import dask_task_runner

DEFAULT_DOSES = (0.5, 0.25, 0.1, 0.05)


class IngestSettingsMismatch(RuntimeError):
    """A study already holds data made with other settings; the user must choose --overwrite or a new catalog."""


class SourceChanged(RuntimeError):
    """The source of a study already in the catalog changed since it was ingested; the user must choose --overwrite
    (rebuild the study from the source as it is now) or another catalog."""


class IngestFailed(RuntimeError):
    """Some studies could not be ingested; they are marked failed in the study table and retried by a rerun."""


def slices_needing_work(archive: Archive, doses: list[float]) -> list[int]:
    """Slices whose normal-dose data or any requested low dose is not marked done in the ledger."""
    todo = set(archive.todo("ingest"))
    for dose in doses:
        todo.update(archive.todo("ingest_ld", dose=dose))
    return sorted(todo)


def simulation_differences(archive: Archive, seed: int) -> list[str]:
    """The simulation settings (seed, physics, simulator version) in which a study differs from what is asked."""
    settings = archive.settings
    wanted = {"seed": seed, "physics": PhysicsSettings().to_dict(), "simulator": SIMULATOR_VERSION}
    return [name for name, value in wanted.items() if settings.get(name) != value]


def series_to_prepare(catalog: Catalog, series: list[SeriesSource], seed: int, overwrite: bool) -> list[SeriesSource]:
    """The series needing a (re)build of their study group: those without one (new, or whose reading failed), and
    (with `overwrite`) those made differently. A group, once in place, is complete (built aside, renamed in), so a
    study a killed run left half-simulated keeps its group and its done slices.

    Without `overwrite`, a study simulated with other settings is refused before any compute
    (IngestSettingsMismatch), so nothing already written is touched."""
    prepare, clashes = [], []
    for source in series:
        if not catalog.study_path(source.key).exists():
            prepare.append(source)
            continue
        differences = simulation_differences(catalog.study(source.key, "r"), seed)
        if differences and overwrite:
            prepare.append(source)
        elif differences:
            clashes.append(f"{source.key} ({', '.join(differences)})")
    if clashes:
        raise IngestSettingsMismatch(
            f"catalog {catalog.path} holds studies ingested with other settings: {'; '.join(clashes)}; nothing was "
            "changed. Use --overwrite to rebuild them, or choose a new catalog path."
        )
    return prepare


def sources_to_check(
    catalog: Catalog,
    series: list[SeriesSource],
    prepare: list[SeriesSource],
    spacing: tuple[float, float, float] | None,
) -> list[SeriesSource]:
    """The series of studies in the catalog, and not about to be rebuilt, whose content must be decoded again: their
    files changed since ingest (sizes, modification times, --spacing), or no identity was recorded for them."""
    rebuilt = {source.key for source in prepare}
    return [
        source
        for source in series
        if source.key not in rebuilt
        and catalog.study_path(source.key).exists()
        and needs_check(catalog.study(source.key, "r"), file_fingerprint(source.files, spacing))
    ]


def settle_source_checks(catalog: Catalog, checks: list[SourceCheck], overwrite: bool) -> list[str]:
    """The keys of the studies to rebuild because their source changed (with `overwrite`); without it a changed
    source is refused (SourceChanged) before anything is written. For the others, the identity read now is
    recorded: a new files fingerprint, or the first content digest of a study ingested before digests (logged; one
    that holds other data than its source is rebuilt with `overwrite`, else refused by the next ingest)."""
    logger = get_run_logger()
    changed = [check for check in checks if check.state == "changed"]
    if changed and not overwrite:
        raise SourceChanged(
            f"catalog {catalog.path}: the source of {len(changed)} stud{'y' if len(changed) == 1 else 'ies'} changed "
            "since ingest: "
            + "; ".join(f"{check.key} ({check.label}): {', '.join(check.changes)}" for check in changed)
            + "; nothing was changed. Use --overwrite to rebuild from the source as it is now, or ingest the changed "
            "source into another catalog."
        )
    rebuild = {check.key for check in changed} | {
        c.key for c in checks if overwrite and c.state == "unrecorded" and c.changes
    }
    for check in checks:
        if check.key in rebuild:
            logger.warning(
                "rebuilding %s (%s): its source changed: %s", check.key, check.label, ", ".join(check.changes)
            )
            continue
        record_identity(catalog.study(check.key, "r"), check.identity)
        if check.state == "unrecorded" and check.changes:
            logger.warning(
                "%s (%s) was ingested before content digests and holds other data than its source now (%s): "
                "recorded the digest of what it holds, so the next ingest refuses it; use --overwrite to rebuild it",
                check.key,
                check.label,
                ", ".join(check.changes),
            )
        elif check.state == "unrecorded":
            logger.info("%s (%s) was ingested before content digests: recorded its digest now", check.key, check.label)
    return sorted(rebuild)


@flow(name="ingest", flow_run_name=ingest_run_name, task_runner=dask_task_runner())
def ingest(
    sources: list[str] | str,
    catalog: str,
    doses: tuple[float, ...] = DEFAULT_DOSES,
    seed: int = 0,
    chunk_slices: int = 8,
    overwrite: bool = False,
    spacing_mm: list[float] | None = None,
) -> dict[str, Any]:
    """Ingest every study found in `sources` into the catalog at `catalog`; return a per-study summary.

    `spacing_mm` (dz, dy, dx) is needed only for sources that do not carry it (plain .npy)."""
    logger = get_run_logger()
    doses = validate_doses(doses)
    found = discover_series([sources] if isinstance(sources, str) else list(sources))
    for line in found.skipped + found.unreadable:
        logger.warning("skipped %s", line)
    if not found.series:
        raise IngestFailed(f"no CT series or volume found in {sources}: nothing to ingest")
    store = open_or_create_catalog(catalog)
    if store.legacy:
        raise ArchiveError(legacy_archive_message(catalog))
    with store.lock("ingest"):
        by_key = {source.key: source for source in found.series}
        spacing = check_spacing_mm(spacing_mm) if spacing_mm else None
        prepare = series_to_prepare(store, found.series, seed, overwrite)
        suspects = sources_to_check(store, found.series, prepare, spacing)
        checks = [check_study_source.submit(str(store.path), source, spacing) for source in suspects]
        prepare += [by_key[key] for key in settle_source_checks(store, [c.result() for c in checks], overwrite)]
        failed: dict[str, str] = {}
        futures = [prepare_study.submit(str(store.path), source, doses, seed, spacing) for source in prepare]
        for future, source in zip(futures, prepare, strict=True):
            try:
                future.result()
            except Exception as err:  # a corrupt series fails alone; it is listed and retried by the next run
                failed[source.key] = f"{source.label}: {err}"
        studies = {key: store.study(key, "r+") for key in by_key if key not in failed}
        listed = {row.study for row in store.rows()}
        rebuilt = {source.key for source in prepare} | (set(studies) - listed)  # in the table as pending until done
        pending = [row_for_archive(key, archive) for key, archive in studies.items() if key in rebuilt]
        store.upsert(_failed_rows(found.series, failed) + pending)
        for archive in studies.values():
            archive.add_doses(doses)
        processed = _simulate(store, studies, doses, chunk_slices, failed, by_key)
    summary = {
        "catalog": str(store.path),
        "studies": {key: {"label": by_key[key].label, "slices": s.n_slices} for key, s in studies.items()},
        "processed": processed,
        "slices": sum(s.n_slices for s in studies.values()),
        "doses": doses,
        "new": [source.key for source in prepare if source.key not in failed],
        "skipped": found.skipped + found.unreadable,
        "failed": failed,
    }
    if failed:
        raise IngestFailed(
            f"{len(failed)} of {len(found.series)} studies failed to ingest; the others are stored and the failed "
            "ones are marked in the study table. Fix or remove them and rerun the same command: "
            + "; ".join(f"{key} ({message})" for key, message in failed.items())
        )
    return summary


def _failed_rows(series: list[SeriesSource], failed: dict[str, str]) -> list[StudyRow]:
    """Table rows of the series whose study could not be built."""
    return [
        StudyRow(study=s.key, subject=s.subject_key, format=s.format, ingest="failed", ingest_error=failed[s.key][:500])
        for s in series
        if s.key in failed
    ]


def _simulate(
    store: Catalog,
    studies: dict[str, Archive],
    doses: list[float],
    chunk_slices: int,
    failed: dict[str, str],
    by_key: dict[str, SeriesSource],
) -> int:
    """Submit every (study, chunk) still to simulate in one go; mark studies done or failed in the table."""
    logger = get_run_logger()
    with ExitStack() as locks:
        for archive in studies.values():
            locks.enter_context(archive.lock("ingest"))
        futures = {}
        todo_count = 0
        for key, archive in studies.items():
            todo = slices_needing_work(archive, doses)
            todo_count += len(todo)
            for chunk in contiguous_chunks(todo, chunk_slices):
                futures[ingest_chunk.submit(str(archive.path), chunk, doses)] = IngestChunk(key, chunk)
        logger.info("ingest: %d slices of %d studies need work, %d chunks", todo_count, len(studies), len(futures))
        errors: dict[str, list[str]] = {}
        with tqdm(total=todo_count, desc="ingest", unit="slice") as progress:
            for future in as_completed(list(futures)):
                plan = futures[future]
                try:
                    future.result()
                except Exception as err:  # reported with its slices once every chunk has finished
                    errors.setdefault(plan.study, []).append(f"slices {plan.chunk.label}: {err}")
                progress.update(len(plan.chunk))
    rows = []
    for key, archive in studies.items():
        if key in errors:
            failed[key] = f"{by_key[key].label}: " + "; ".join(errors[key])
            rows.append(row_for_archive(key, archive, ingest="failed").with_changes(ingest_error=failed[key][:500]))
        else:
            rows.append(row_for_archive(key, archive, ingest="done"))
    store.upsert(rows)
    return todo_count


def run_ingest(dask_address: str | None = None, workers: int | None = None, **params: Any) -> dict[str, Any]:
    """Run the ingest flow on a chosen Dask cluster (an address, or a LocalCluster of `workers` processes)."""
    return ingest.with_options(task_runner=dask_task_runner(dask_address, workers))(**params)

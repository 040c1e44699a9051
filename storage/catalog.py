"""The catalog: one Zarr v3 store per dataset (a cohort), one group per study, the study table at the root.

    catalog = create_catalog("outputs/cohort.zarr")       # or open_catalog(path, mode="r+")
    catalog.rows()                                        # the study table, read in bulk
    archive = catalog.study("study-0123456789abcdef")     # a storage.archive.Archive of one study
    tree = catalog.tree()                                 # == xr.open_datatree(path, engine="zarr")

Each study group holds the per-study layout of storage.schema (its own geometry: studies differ in matrix and
spacing). An archive of schema version 1 (one scan at the store's root) opens as a read-only one-study catalog;
`migrate_archive` turns it into a catalog in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr
import zarr

from storage.archive import Archive, create_archive, open_archive
from storage.catalog_paths import CATALOG_KIND, STUDIES_GROUP, is_catalog_root, lock_root, root_attributes
from storage.deid import study_key
from storage.errors import ArchiveError, ArchiveExistsError, ArchiveInputError, ArchiveNotFoundError
from storage.ledger import DONE, FAILED, PENDING
from storage.locks import exclusive_lock
from storage.schema import SCHEMA_VERSION
from storage.study_table import SPLITS, StudyRow, create_table, read_table, write_table

__all__ = ["Catalog", "StudyRow", "create_catalog", "migrate_archive", "open_catalog", "open_or_create_catalog"]


def create_catalog(path: str | os.PathLike) -> Catalog:
    """Create an empty catalog at `path` (which must be absent or an empty folder)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ArchiveExistsError(f"{path} exists and is not empty: open it with open_catalog, or choose a new path")
    root = zarr.open_group(
        path,
        mode="w",
        zarr_format=3,
        attributes={"kind": CATALOG_KIND, "schema_version": SCHEMA_VERSION, "created": _utc_now()},
    )
    create_table(root)
    root.create_group(STUDIES_GROUP)
    return Catalog(path, "r+")


def open_catalog(path: str | os.PathLike, mode: str = "r") -> Catalog:
    """Open a catalog, or a schema-1 archive as a one-study catalog (read-only table; `need migrate` converts it)."""
    if mode not in ("r", "r+"):
        raise ArchiveInputError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = Path(path)
    if not path.exists():
        raise ArchiveNotFoundError(f"no catalog at {path}")
    return Catalog(path, mode)


def open_or_create_catalog(path: str | os.PathLike) -> Catalog:
    """The catalog at `path` opened for writing, created when absent (or an empty folder)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        return open_catalog(path, mode="r+")
    return create_catalog(path)


class Catalog:
    """An open catalog: the study table, each study as an Archive, locks, and bulk ledger reads for planning."""

    def __init__(self, path: Path, mode: str) -> None:
        """Check what is at `path`; use open_catalog / create_catalog rather than this."""
        self.path, self.mode = path, mode
        if is_catalog_root(path):
            self.legacy = False
            self._root = zarr.open_group(path, mode="r+" if mode == "r+" else "r", zarr_format=3)
            read_table(self._root, str(path))  # fails early on a damaged table
            return
        attributes = root_attributes(path)
        if attributes is None or "schema_version" not in attributes:
            raise ArchiveInputError(f"{path} is neither a NEED catalog nor a NEED archive")
        self.legacy = True  # a schema-1 archive: one study at the root
        self._legacy_archive = open_archive(path, mode=mode)

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r}, studies={len(self.rows())}{', legacy' if self.legacy else ''})"

    # --- the table ------------------------------------------------------------------------------------------

    def rows(self) -> list[StudyRow]:
        """The study table (one bulk read)."""
        if self.legacy:
            return [legacy_row(self._legacy_archive)]
        return read_table(self._root, str(self.path))

    def row(self, key: str) -> StudyRow:
        """One study's row; ArchiveInputError listing the keys when `key` is unknown."""
        for row in self.rows():
            if row.study == key:
                return row
        raise ArchiveInputError(f"no study {key!r} in {self.path}; it holds {[r.study for r in self.rows()]}")

    def upsert(self, rows: Iterable[StudyRow]) -> None:
        """Add rows, or replace the rows of the same keys (keeping their split unless a new one is given)."""
        self._require_table_writes("update the study table")
        with self.lock("table"):
            table = {row.study: row for row in self.rows()}
            for row in rows:
                old = table.get(row.study)
                table[row.study] = row if old is None or row.split else row.with_changes(split=old.split)
            write_table(self._root, list(table.values()))

    def assign_splits(self, splits: Mapping[str, str]) -> None:
        """Set the split ("train", "val", "test" or "") of the given studies."""
        self._require_table_writes("assign splits")
        bad = {key: split for key, split in splits.items() if split not in SPLITS}
        if bad:
            raise ArchiveInputError(f"splits must be one of {SPLITS[1:]}: got {bad}")
        with self.lock("table"):
            rows = self.rows()
            unknown = sorted(set(splits) - {row.study for row in rows})
            if unknown:
                raise ArchiveInputError(f"no studies {unknown} in {self.path}")
            write_table(self._root, [row.with_changes(split=splits.get(row.study, row.split)) for row in rows])

    def select(self, split: str | None = None, studies: Sequence[str] | None = None) -> list[StudyRow]:
        """The ingested studies of `split`, or the named `studies` (any unknown or not ingested key is an error),
        or every ingested study."""
        rows = self.rows()
        if studies is not None:
            by_key = {row.study: row for row in rows}
            unknown = [key for key in studies if key not in by_key]
            if unknown:
                raise ArchiveInputError(f"no studies {unknown} in {self.path}; it holds {sorted(by_key)}")
            chosen = [by_key[key] for key in dict.fromkeys(studies)]
            not_ingested = [row.study for row in chosen if row.ingest != "done"]
            if not_ingested:
                raise ArchiveInputError(f"studies {not_ingested} of {self.path} are not ingested: run `need ingest`")
            return chosen
        if split is not None and split not in SPLITS[1:]:
            raise ArchiveInputError(f"split must be one of {SPLITS[1:]}, got {split!r}")
        chosen = [row for row in rows if row.ingest == "done" and (split is None or row.split == split)]
        if split is not None and not chosen:
            raise ArchiveInputError(f"no ingested study of {self.path} is in the {split!r} split: run `need split`")
        return chosen

    def digest(self, rows: Sequence[StudyRow] | None = None) -> str:
        """A short stable digest of the studies (or of `rows`): keys, sizes and splits — what a model trained on."""
        chosen = sorted(self.rows() if rows is None else rows, key=lambda row: row.study)
        content = [[r.study, r.subject, r.slices, r.ny, r.nx, r.views, r.detectors, r.split] for r in chosen]
        return hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:16]

    # --- studies --------------------------------------------------------------------------------------------

    def study_path(self, key: str) -> Path:
        """Where the study group `key` lives (the root itself for a schema-1 archive)."""
        if self.legacy:
            if key != legacy_row(self._legacy_archive).study:
                raise ArchiveInputError(f"{self.path} is a one-study archive; it has no study {key!r}")
            return self.path
        if not key or "/" in key or key.startswith("."):
            raise ArchiveInputError(f"bad study key {key!r}")
        return self.path / STUDIES_GROUP / key

    def study(self, key: str, mode: str | None = None) -> Archive:
        """The study `key` as an Archive (mode defaults to the catalog's)."""
        return open_archive(self.study_path(key), mode=mode or self.mode)

    def create_study(self, key: str, *, overwrite: bool = False, **archive_args: Any) -> Archive:
        """Build the study group `key` aside and move it in (storage.archive.create_archive's arguments)."""
        self._require_table_writes("create a study")
        return create_archive(self.study_path(key), overwrite=overwrite, **archive_args)

    def remove_study_data(self, key: str) -> None:
        """Delete a study's group (a half-ingested study about to be rebuilt); its row stays."""
        self._require_table_writes("remove a study")
        with self.study(key, "r+").lock("ingest"):
            shutil.rmtree(self.study_path(key))

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the catalog's exclusive lock `name` (non-blocking); ArchiveLockedError when another process holds it."""
        folder = lock_root(self.path) / "catalog" if not self.legacy else self.path / "locks"
        with exclusive_lock(folder / f"{name}.lock", f"lock {name!r} of catalog {self.path}"):
            yield

    def tree(self) -> xr.DataTree:
        """The whole cohort as a lazy xarray DataTree (the study table at the root, `studies/<key>` below)."""
        return xr.open_datatree(self.path, engine="zarr", consolidated=False, zarr_format=3)

    def describe(self) -> str:
        """The study table, one line per study, with each dose's reconstruction as done/failed/pending slices."""
        rows = self.rows()
        kind = "one-study archive (schema 1; `need migrate` converts it)" if self.legacy else "catalog"
        counts: dict[str, dict[float, str]] = {}
        failures: list[str] = []
        for row in rows:
            if row.ingest == "failed" or not self.study_path(row.study).exists():
                continue
            study = self.study(row.study, "r")
            states = study.ledger("reconstruct")
            counts[row.study] = {
                dose: "/".join(str(int((values == code).sum())) for code in (DONE, FAILED, PENDING))
                for dose, values in zip(study.doses, states, strict=True)
            }
            failures.extend(f"  {row.study}: {line}" for line in study.failure_lines())
        doses = sorted({dose for per_dose in counts.values() for dose in per_dose}, reverse=True)
        header = ["study", "subject", "format", "slices", "image", "spacing (mm)", "sinogram", "split", "ingest"]
        header += [f"dose {dose:g}" for dose in doses]
        body = [
            [
                r.study,
                r.subject,
                r.format,
                str(r.slices),
                f"{r.ny}x{r.nx}",
                f"{r.dz_mm:.3g},{r.dy_mm:.3g},{r.dx_mm:.3g}",
                f"{r.views}x{r.detectors}",
                r.split or "-",
                r.ingest,
                *(counts.get(r.study, {}).get(dose, "-") for dose in doses),
            ]
            for r in rows
        ]
        lines = [f"NEED {kind} {self.path}: {len(rows)} studies; per dose: reconstructed slices done/failed/pending"]
        lines.extend(_table(header, body))
        if failures:
            lines.append("failed slices and why (`need info CATALOG/studies/KEY` describes one study):")
            lines.extend(failures)
        failed = [r for r in rows if r.ingest == "failed"]
        if failed:
            lines.append("failed ingests (retried by the next `need ingest`):")
            lines.extend(f"  {r.study}: {r.ingest_error}" for r in failed)
        return "\n".join(lines)

    # --- helpers --------------------------------------------------------------------------------------------

    def _require_table_writes(self, action: str) -> None:
        if self.legacy:
            raise ArchiveError(f"cannot {action}: {self.path} is a schema-1 archive; run `need migrate {self.path}`")
        if self.mode != "r+":
            raise ArchiveError(f"cannot {action}: the catalog at {self.path} is open read-only (use mode='r+')")


def row_for_archive(key: str, archive: Archive, split: str = "", ingest: str = "pending") -> StudyRow:
    """The table row describing an ingested study's archive."""
    settings, attrs = archive.settings, archive.attrs
    dz, dy, dx = archive.spacing_mm
    ny, nx = settings["image_shape"][1:]
    views, detectors = settings["sinogram_shape"]
    return StudyRow(
        study=key,
        subject=str(settings.get("subject_key") or ""),
        format=str(attrs.get("source", {}).get("format", "unknown")),
        slices=archive.n_slices,
        ny=int(ny),
        nx=int(nx),
        dz_mm=float(dz),
        dy_mm=float(dy),
        dx_mm=float(dx),
        views=int(views),
        detectors=int(detectors),
        split=split,
        ingest=ingest,
    )


def legacy_row(archive: Archive) -> StudyRow:
    """The one row of a schema-1 archive: its key derives from its settings, its ingest state from its ledgers."""
    return row_for_archive(legacy_key(archive), archive, ingest=ingest_state(archive))


def ingest_state(archive: Archive) -> str:
    """The ingest state of a study: done when its normal-dose data and every dose it holds are ingested."""
    done = not archive.todo("ingest") and all(not archive.todo("ingest_ld", dose=d) for d in archive.doses)
    return "done" if done else "pending"


def legacy_key(archive: Archive) -> str:
    """The study key of a schema-1 archive, which recorded no series identity: a salted hash of its settings."""
    return study_key("archive", archive.settings_hash)


def migrate_archive(path: str | os.PathLike, key: str | None = None) -> Catalog:
    """Turn the schema-1 archive at `path` into a catalog holding it as its one study, in place.

    `key` is the study's key (that of its source series, so a later ingest of the same source finds it); without
    it the key derives from the archive's settings. The archive directory is renamed (atomically) into a staging
    catalog beside the locks, which is renamed to `path` once complete; an interrupted migration is finished by
    running it again."""
    path = Path(path)
    staging = lock_root(path) / "migrating"
    if not path.exists() and staging.exists():
        return _finish_migration(staging, path)
    catalog = open_catalog(path)
    if not catalog.legacy:
        raise ArchiveInputError(f"{path} is already a catalog (schema {SCHEMA_VERSION}); nothing to migrate")
    archive = catalog._legacy_archive
    if key is not None and not key.startswith("study-"):
        raise ArchiveInputError(f"a study key looks like study-<16 hex>, got {key!r}")
    with archive.lock("ingest"), archive.lock("reconstruct"):
        shutil.rmtree(staging, ignore_errors=True)
        create_catalog(staging)
        os.rename(path, staging / STUDIES_GROUP / (key or legacy_key(archive)))
    return _finish_migration(staging, path)


def _finish_migration(staging: Path, path: Path) -> Catalog:
    """Second half of migrate_archive: mark the moved study as schema 2, fill the table, rename into place."""
    (study_dir,) = [child for child in (staging / STUDIES_GROUP).iterdir() if (child / "zarr.json").is_file()]
    group = zarr.open_group(study_dir, mode="r+", zarr_format=3)
    group.attrs["schema_version"] = SCHEMA_VERSION
    shutil.rmtree(study_dir / "locks", ignore_errors=True)
    catalog = open_catalog(staging, mode="r+")
    archive = catalog.study(study_dir.name, "r")
    catalog.upsert([row_for_archive(study_dir.name, archive, ingest=ingest_state(archive))])
    os.rename(staging, path)
    shutil.rmtree(lock_root(staging), ignore_errors=True)
    return open_catalog(path, mode="r+")


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    """Left-aligned text columns."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [header, *body]]


def _utc_now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

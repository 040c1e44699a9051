"""`need verify --repair`: make the bad chunks `need verify` found recomputable by the ordinary reruns.

A bad chunk of data that the pipeline made is deleted (it then reads as unwritten) and its slice's ledger cell set
back to pending, so the next `need ingest` (proj_nd, fbp_nd, proj_ld) or `need reconstruct` (results) recomputes
exactly that slice with the same seeds and settings. A bad chunk of a study's source image (image_hu) cannot be
recomputed from the catalog: the study's group is dropped (its table row stays, pending) and the next `need ingest`
of its source rebuilds it. Anything else (ledgers, coordinates, the study table) is left for a restore from a copy.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from storage.archive import open_archive
from storage.catalog import open_catalog
from storage.catalog_paths import catalog_of_study
from storage.verify import BadChunk, VerifyReport

LEDGER_OF = {"proj_nd": "ingest", "fbp_nd": "ingest", "proj_ld": "ingest_ld"} | {
    name: "reconstruct" for name in ("fbp_ld", "spdiff_fbp", "need", "proj_spdiff")
}
"""The ledger whose cell says a slice of each recomputable variable is done."""


@dataclass
class RepairReport:
    """What a repair did: slices set back to pending per (study, ledger, dose), studies dropped for a rebuild, and
    the bad chunks left for a restore."""

    pending: dict[tuple[str, str, float | None], list[int]] = field(default_factory=dict)
    rebuild: list[str] = field(default_factory=list)
    left: list[BadChunk] = field(default_factory=list)

    def format(self) -> str:
        lines = []
        for (study, ledger, dose), slices in sorted(self.pending.items(), key=str):
            at = f" at dose {dose:g}" if dose is not None else ""
            lines.append(f"{study}: {ledger} slices {sorted(slices)}{at} set to pending")
        lines += [f"{study}: source image corrupt; its group is dropped for a rebuild" for study in self.rebuild]
        lines += [f"{bad.study_path.name}: {bad.var} {bad.file.name}: restore it from a copy" for bad in self.left]
        ledgers = {ledger for _, ledger, _ in self.pending}
        if self.rebuild or ledgers & {"ingest", "ingest_ld"}:
            lines.append("next: `need ingest SRC CATALOG` (the same sources) recomputes them")
        if "reconstruct" in ledgers or self.rebuild:
            lines.append("then: `need reconstruct CATALOG ...` recomputes the pending results")
        return "\n".join(lines) or "nothing to repair"


def repair(report: VerifyReport) -> RepairReport:
    """Act on every bad chunk of `report` as the module says; each study under its ingest and reconstruct locks
    (ArchiveLockedError while a run holds them: nothing is touched)."""
    done = RepairReport()
    by_study: dict[Path, list[BadChunk]] = defaultdict(list)
    for bad in report.bad_chunks:
        by_study[bad.study_path].append(bad)
    for path, chunks in by_study.items():
        if any(bad.var == "image_hu" for bad in chunks):
            _drop_for_rebuild(path, chunks, done)
            continue
        archive = open_archive(path, mode="r+")
        with archive.lock("ingest"), archive.lock("reconstruct"):
            for bad in chunks:
                ledger = LEDGER_OF.get(bad.var)
                if ledger is None or bad.slice is None:
                    done.left.append(bad)
                    continue
                bad.file.unlink(missing_ok=True)
                dose = bad.dose if ledger != "ingest" else None
                archive.mark(ledger, [bad.slice], "pending", dose=dose)
                slices = done.pending.setdefault((archive.study_name, ledger, dose), [])
                slices.append(bad.slice)
    return done


def _drop_for_rebuild(path: Path, chunks: list[BadChunk], done: RepairReport) -> None:
    """A study whose source image is corrupt: its group goes, its row stays pending (a catalog's study only)."""
    catalog = catalog_of_study(path)
    if catalog is None:
        done.left.extend(chunks)  # a single-scan archive of schema 1 has no table to rebuild it from
        return
    open_catalog(catalog, mode="r+").remove_study_data(path.name)
    done.rebuild.append(path.name)

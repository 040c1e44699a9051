"""The reconstruct task: one chunk of slices at one dose through SPDiff -> FBP -> DGDiff, written back to the
archive."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import numpy as np
from prefect import task

from need_core import dgdiff, spdiff
from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, transmission_to_line_integrals
from need_core.random_streams import DGDIFF_STAGE, SPDIFF_STAGE, reconstruction_stream
from need_core.sampling import REFERENCE_SAMPLING, SamplingProfile
from need_core.spdiff.validation import TransmissionError, check_transmission_volume
from storage.archive import Archive, CorruptChunkError, open_archive
from storage.checkpoints import CheckpointError
from tasks.chunking import DEFAULT_CHUNK_SLICES, CellBatch, GridCell, SliceChunk, contiguous_chunks
from tasks.models import ResolvedModel, load_dgdiff, load_spdiff, worker_device
from tasks.progress import RECONSTRUCT_PROGRESS_TOPIC, report_slices

OUTPUTS = ("fbp_ld", "spdiff_fbp", "need")
NOT_RESULT_SHAPING = ("device", "batch_size", "write_projections")
"""ReconstructOptions fields that change how a result is computed, never what it is."""
WITHOUT_CONTEXT = "|without-context"  # produced_by suffix of slices computed beside an unusable (bad or corrupt) slice


class ModelArchiveMismatch(ValueError):
    """A model cannot process this archive's data (other sinogram shape, other electronic noise)."""


@dataclass(frozen=True)
class ReconstructOptions:
    """Sampling settings that, with the two models and the archive's settings, define what a stored result is.

    `sampling` is the per-dose sampling profile (need_core.sampling: the reference or a calibrated one).
    `chunk_slices` shapes results: SPDiff sees each slice with its neighbours, so a slice's chain interacts with the
    chains of its grid cell (and one context slice either side); cells lie on a fixed grid of that size."""

    device: str = "auto"
    seed: int = 0
    batch_size: int | None = None
    sampling: SamplingProfile = REFERENCE_SAMPLING
    chunk_slices: int = DEFAULT_CHUNK_SLICES
    write_projections: bool = False

    def __post_init__(self) -> None:
        if self.chunk_slices < 1:
            raise ValueError(f"chunk_slices must be at least 1, got {self.chunk_slices}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    def network_batch(self, device: str) -> int:
        """Slices per network call: `batch_size`, else 8 on a GPU and 1 on a CPU, where one slice per call is
        faster (bench/results/speed.json: 0.7-0.9x the speed with 8 per call on 2 cores, and 3-6x the memory)."""
        return self.batch_size or (8 if device.startswith("cuda") else 1)

    def result_key(self, spdiff_model: ResolvedModel, dgdiff_model: ResolvedModel, archive: Archive) -> str:
        """The ledger's produced_by: changes whenever a model, a result-shaping setting or the archive changes."""
        shaping: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in (*NOT_RESULT_SHAPING, "sampling")
        }
        shaping["profile"] = self.sampling.result_settings()  # its settings per dose: not its name or provenance
        blob = json.dumps({"sampling": shaping, "archive": archive.settings_hash}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return f"spdiff:{spdiff_model.identity}/dgdiff:{dgdiff_model.identity}/{digest}"


@dataclass
class ChunkReport:
    """What one chunk did: slices written, slices refused for bad data (with why), time per stage."""

    dose: float
    done: list[int] = field(default_factory=list)
    bad_input: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"spdiff": 0.0, "fbp": 0.0, "dgdiff": 0.0, "io": 0.0})
    task_seconds: float = 0.0
    spdiff_start_step: int | None = None
    dgdiff_start_steps: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkContext:
    """Everything a run of slices needs besides its data: where to write, at which dose, with what."""

    archive: Archive
    dose: float
    geometry: FanBeamGeometry
    physics: PhysicsSettings
    spdiff_model: ResolvedModel
    dgdiff_model: ResolvedModel
    options: ReconstructOptions
    device: str
    result_key: str
    progress: Callable[[str, list[int]], None]
    """Reports slices of the chunk's `todo` leaving a stage (tasks.progress), so the flow's bar moves per slice."""


def retry_unless_bad_input(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's hook signature)
    """Retry transient failures only: bad data, a corrupt stored chunk or a bad checkpoint fails the same way every
    time."""
    try:
        state.result()
    except (ValueError, FileNotFoundError, CheckpointError, CorruptChunkError):
        return False
    except Exception:
        return True
    return True


def check_models_fit_archive(spdiff_model: ResolvedModel, archive: Archive) -> None:
    """Refuse, before any compute, an SPDiff model trained for another sinogram shape or electronic noise."""
    model = load_spdiff(spdiff_model, "cpu")
    physics = PhysicsSettings.from_dict(archive.settings["physics"])
    shape = tuple(archive.settings["sinogram_shape"])
    if tuple(model.sinogram_shape) != shape:
        raise ModelArchiveMismatch(
            f"SPDiff {spdiff_model.reference} was trained on sinograms {tuple(model.sinogram_shape)} "
            f"(views, detectors) but {archive.path} holds {shape}: use a model trained for "
            "this geometry"
        )
    if model.schedule.electronic_noise_var != physics.sigma_e2:
        raise ModelArchiveMismatch(
            f"SPDiff {spdiff_model.reference} was trained for electronic noise σe² = "
            f"{model.schedule.electronic_noise_var:g} but {archive.path} was simulated with "
            f"σe² = {physics.sigma_e2:g}: use a model trained with the archive's physics"
        )


@task(
    name="reconstruct-chunk",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="dose {dose} · slices {batch.label}",
)
def reconstruct_chunk(
    archive_path: str,
    dose: float,
    batch: CellBatch,
    spdiff_model: ResolvedModel,
    dgdiff_model: ResolvedModel,
    options: ReconstructOptions,
    result_key: str,
) -> ChunkReport:
    """Reconstruct each grid cell of the batch whole and write its `todo` slices; slices whose projections are
    unusable are reported, the others written. A retried task skips the cells an earlier attempt finished.

    A cell is computed whole, whatever is to do, so a rerun writes exactly what an uninterrupted run wrote."""
    started = time.perf_counter()
    archive = open_archive(archive_path, mode="r+")
    report = ChunkReport(dose=dose)
    context = ChunkContext(
        archive=archive,
        dose=dose,
        geometry=FanBeamGeometry.from_dict(archive.settings["geometry"]),
        physics=PhysicsSettings.from_dict(archive.settings["physics"]),
        spdiff_model=spdiff_model,
        dgdiff_model=dgdiff_model,
        options=options,
        device=worker_device(options.device),
        result_key=result_key,
        progress=partial(report_slices, RECONSTRUCT_PROGRESS_TOPIC, archive_path, dose),
    )
    still_to_do = set(archive.stale_slices("reconstruct", dose, result_key).tolist())
    for cell in batch.cells:
        todo = tuple(s for s in cell.todo if s in still_to_do)
        if todo:
            reconstruct_cell(context, GridCell(cell.cell, todo), report)
    report.task_seconds = time.perf_counter() - started
    return report


def reconstruct_cell(context: ChunkContext, chunk: GridCell, report: ChunkReport) -> None:
    """One grid cell: read it with one context slice either side, check every slice, reconstruct its usable runs.

    A slice whose stored chunk is corrupt is unusable like one with bad values: it fails alone (no retry can mend
    it) and its neighbours are computed as at a volume edge."""
    archive, dose, result_key = context.archive, context.dose, context.result_key
    cell = chunk.cell
    clock = time.perf_counter()
    lo, hi = max(0, cell.start - 1), min(archive.n_slices, cell.stop + 1)
    projections, corrupt = archive.read_intact("proj_ld", lo, hi, dose=dose)
    report.seconds["io"] += time.perf_counter() - clock
    usable = {}
    for offset, s in enumerate(range(lo, hi)):
        if corrupt is not None and s in corrupt.slices:
            usable[s] = False
            if s in chunk.todo:
                report.bad_input[s] = corrupt.slice_message(s)
            continue
        try:
            check_transmission_volume(projections[offset : offset + 1], name=f"low-dose projections of slice {s}")
            usable[s] = True
        except TransmissionError as err:
            usable[s] = False
            if s in chunk.todo:
                report.bad_input[s] = str(err)

    # A slice computed without a neighbour that an intact cell would have had is stored, but as made by other
    # settings, so the run after the neighbour is mended recomputes the cell exactly as an uninterrupted run did.
    produced_by = result_key if all(usable.values()) else f"{result_key}{WITHOUT_CONTEXT}"
    good = [s for s in range(cell.start, cell.stop) if usable[s]]
    for run in contiguous_chunks(good, max_slices=len(cell)):
        has_below = run.start - 1 >= lo and usable[run.start - 1]
        has_above = run.stop < hi and usable[run.stop]
        first, last = run.start - has_below, run.stop + has_above
        write = [s for s in chunk.todo if run.start <= s < run.stop]
        if write:
            reconstruct_run(
                replace(context, result_key=produced_by),
                run,
                write,
                projections[first - lo : last - lo],
                (has_below, has_above),
                report,
            )


def reconstruct_run(
    context: ChunkContext,
    run: SliceChunk,
    write: list[int],
    projections: np.ndarray,
    halo: tuple[bool, bool],
    report: ChunkReport,
) -> None:
    """SPDiff -> FBP -> DGDiff on contiguous usable slices (with their context), then the `write` slices' data first,
    ledger second."""
    c, options = context, context.options
    incident_count = c.physics.incident_count_at(c.dose)
    study = c.archive.settings_hash
    first = run.start - int(halo[0])
    model = load_spdiff(c.spdiff_model, c.device)
    chosen = options.sampling.at(c.dose)
    clock = time.perf_counter()
    denoised = spdiff.denoise_volume(
        model,
        projections,
        incident_count,
        halo=halo,
        batch_size=options.network_batch(c.device),
        seed=options.seed,
        slice_ids=range(first, first + projections.shape[0]),
        stream=reconstruction_stream(study, c.dose, SPDIFF_STAGE),
        device=c.device,
        ending=chosen.spdiff_ending,
    )
    report.seconds["spdiff"] += time.perf_counter() - clock
    report.spdiff_start_step = denoised.start_step
    c.progress("spdiff", write)

    clock = time.perf_counter()
    targets = projections[int(halo[0]) : projections.shape[0] - int(halo[1])]
    images = {
        "fbp_ld": fbp_hu(transmission_to_line_integrals(targets), c.geometry, c.physics),
        "spdiff_fbp": fbp_hu(transmission_to_line_integrals(denoised.transmission), c.geometry, c.physics),
    }
    report.seconds["fbp"] += time.perf_counter() - clock

    refiner = load_dgdiff(c.dgdiff_model, c.device)
    clock = time.perf_counter()
    refined = dgdiff.refine(
        refiner.network,
        images["fbp_ld"],
        images["spdiff_fbp"],
        refiner.schedule,
        guidance=chosen.guidance,
        batch_size=options.network_batch(c.device),
        seed=options.seed,
        slice_ids=list(range(run.start, run.stop)),
        stream=reconstruction_stream(study, c.dose, DGDIFF_STAGE),
        device=c.device,
        max_step=refiner.max_start_step,
        on_batch=lambda slices: c.progress("dgdiff", [s for s in slices if s in write]),
    )
    images["need"] = refined.images_hu
    report.seconds["dgdiff"] += time.perf_counter() - clock

    clock = time.perf_counter()
    rows = [s - run.start for s in write]
    for name in OUTPUTS:
        write_rows(c.archive, name, write, np.asarray(images[name], dtype=np.float32)[rows], c.dose)
    if options.write_projections:
        write_rows(c.archive, "proj_spdiff", write, np.asarray(denoised.transmission, dtype=np.float32)[rows], c.dose)
    c.archive.mark("reconstruct", write, "done", dose=c.dose, produced_by=c.result_key)
    report.seconds["io"] += time.perf_counter() - clock
    report.done.extend(write)
    report.dgdiff_start_steps.update({s: int(refined.start_steps[s - run.start]) for s in write})


def write_rows(archive: Archive, name: str, slices: list[int], values: np.ndarray, dose: float) -> None:
    """Write one row of `values` per slice, as few region writes as the slices' contiguous runs allow."""
    row = 0
    for span in contiguous_chunks(slices, max_slices=len(slices)):
        archive.write(name, span.start, values[row : row + len(span)], dose=dose)
        row += len(span)

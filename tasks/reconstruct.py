"""The reconstruct task: one chunk of slices at one dose through SPDiff -> FBP -> DGDiff, written back to the archive."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from prefect import task

from need_core import dgdiff, spdiff
from need_core.physics import FanBeamGeometry, PhysicsSettings, fbp_hu, transmission_to_line_integrals
from need_core.spdiff.validation import TransmissionError, check_transmission_volume
from storage.archive import Archive, open_archive
from storage.checkpoints import CheckpointError
from tasks.chunking import SliceChunk, contiguous_chunks
from tasks.models import ResolvedModel, load_dgdiff, load_spdiff, worker_device

OUTPUTS = ("fbp_ld", "spdiff_fbp", "need")


@dataclass(frozen=True)
class ReconstructOptions:
    """Sampling settings that, with the two models and the archive's settings, define what a stored result is."""

    device: str = "auto"
    seed: int = 0
    batch_size: int | None = None
    s2: float = 0.8
    divisor: int = 10
    write_projections: bool = False

    def network_batch(self, device: str) -> int:
        """Slices per network call: `batch_size`, else 8 on a GPU and 1 on a CPU, where one slice per call is
        faster (bench/results/speed.json: 0.6-0.7x the speed with 8 per call on 2 cores, and 4x the memory)."""
        return self.batch_size or (8 if device.startswith("cuda") else 1)

    def result_key(self, spdiff_model: ResolvedModel, dgdiff_model: ResolvedModel, archive: Archive) -> str:
        """The ledger's produced_by: changes whenever a model, a result-shaping setting or the archive changes."""
        shaping = {k: v for k, v in asdict(self).items() if k not in ("device", "batch_size", "write_projections")}
        blob = json.dumps({"sampling": shaping, "archive": archive.settings_hash}, sort_keys=True)
        return f"spdiff:{spdiff_model.identity}/dgdiff:{dgdiff_model.identity}/{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class ChunkReport:
    """What one chunk did: slices written, slices refused for bad data (with why), time per stage."""

    dose: float
    done: list[int] = field(default_factory=list)
    bad_input: dict[int, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"spdiff": 0.0, "fbp": 0.0, "dgdiff": 0.0, "io": 0.0})
    task_seconds: float = 0.0
    spdiff_start_step: int = -1
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


def retry_unless_bad_input(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's hook signature)
    """Retry transient failures only: bad data or a bad checkpoint fails the same way every time."""
    try:
        state.result()
    except (ValueError, FileNotFoundError, CheckpointError):
        return False
    except Exception:
        return True
    return True


@task(
    name="reconstruct-chunk",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    task_run_name="dose {dose} · slices {chunk.label}",
)
def reconstruct_chunk(
    archive_path: str,
    dose: float,
    chunk: SliceChunk,
    spdiff_model: ResolvedModel,
    dgdiff_model: ResolvedModel,
    options: ReconstructOptions,
    result_key: str,
) -> ChunkReport:
    """Reconstruct the chunk's slices; slices whose projections are unusable are reported, the others written."""
    started = time.perf_counter()
    archive = open_archive(archive_path, mode="r+")
    report = ChunkReport(dose=dose)
    context = ChunkContext(
        archive=archive, dose=dose, geometry=FanBeamGeometry.from_dict(archive.settings["geometry"]),
        physics=PhysicsSettings.from_dict(archive.settings["physics"]), spdiff_model=spdiff_model,
        dgdiff_model=dgdiff_model, options=options, device=worker_device(options.device), result_key=result_key,
    )

    clock = time.perf_counter()
    lo, hi = max(0, chunk.start - 1), min(archive.n_slices, chunk.stop + 1)
    projections = archive.read("proj_ld", lo, hi, dose=dose)
    report.seconds["io"] += time.perf_counter() - clock
    usable = {}
    for offset, s in enumerate(range(lo, hi)):
        try:
            check_transmission_volume(projections[offset : offset + 1], name=f"low-dose projections of slice {s}")
            usable[s] = True
        except TransmissionError as err:
            usable[s] = False
            if chunk.start <= s < chunk.stop:
                report.bad_input[s] = str(err)

    good = [s for s in range(chunk.start, chunk.stop) if usable[s]]
    for run in contiguous_chunks(good, max_slices=len(chunk)):
        has_below = run.start - 1 >= lo and usable[run.start - 1]
        has_above = run.stop < hi and usable[run.stop]
        first, last = run.start - has_below, run.stop + has_above
        reconstruct_run(context, run, projections[first - lo : last - lo], (has_below, has_above), report)
    report.task_seconds = time.perf_counter() - started
    return report


def reconstruct_run(
    context: ChunkContext, run: SliceChunk, projections: np.ndarray, halo: tuple[bool, bool], report: ChunkReport
) -> None:
    """SPDiff -> FBP -> DGDiff on contiguous usable slices (with their context), then data first, ledger second."""
    c, options = context, context.options
    incident_count = c.physics.incident_count * c.dose
    model = load_spdiff(c.spdiff_model, c.device)
    clock = time.perf_counter()
    denoised = spdiff.denoise_volume(model, projections, incident_count, halo=halo,
                                     batch_size=options.network_batch(c.device),
                                     seed=options.seed + run.start, device=c.device)
    report.seconds["spdiff"] += time.perf_counter() - clock
    report.spdiff_start_step = spdiff.match_time_step(incident_count, model.schedule)

    clock = time.perf_counter()
    targets = projections[int(halo[0]) : projections.shape[0] - int(halo[1])]
    images = {
        "fbp_ld": fbp_hu(transmission_to_line_integrals(targets), c.geometry, c.physics),
        "spdiff_fbp": fbp_hu(transmission_to_line_integrals(denoised), c.geometry, c.physics),
    }
    report.seconds["fbp"] += time.perf_counter() - clock

    network, schedule = load_dgdiff(c.dgdiff_model, c.device)
    clock = time.perf_counter()
    refined = dgdiff.refine(network, images["fbp_ld"], images["spdiff_fbp"], schedule, s2=options.s2,
                            divisor=options.divisor, batch_size=options.network_batch(c.device), seed=options.seed,
                            slice_ids=list(range(run.start, run.stop)), device=c.device)
    images["need"] = refined.images_hu
    report.seconds["dgdiff"] += time.perf_counter() - clock

    clock = time.perf_counter()
    for name in OUTPUTS:
        c.archive.write(name, run.start, np.asarray(images[name], dtype=np.float32), dose=c.dose)
    if options.write_projections:
        c.archive.write("proj_spdiff", run.start, np.asarray(denoised, dtype=np.float32), dose=c.dose)
    c.archive.mark("reconstruct", list(range(run.start, run.stop)), "done", dose=c.dose, produced_by=c.result_key)
    report.seconds["io"] += time.perf_counter() - clock
    report.done.extend(range(run.start, run.stop))
    report.dgdiff_start_steps.update({s: int(k) for s, k in zip(range(run.start, run.stop), refined.start_steps)})

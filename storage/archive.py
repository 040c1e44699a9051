"""The dataset archive: one Zarr v3 store per dataset, read as an xarray Dataset, with a per-slice status ledger.

Layout (storage.schema): `image_hu`, `proj_nd`, `fbp_nd` (slice, ...), `proj_ld`, `fbp_ld`, `spdiff_fbp`, `need`,
`proj_spdiff` (dose, slice, ...), ledgers `status_<name>` with `_produced_by` / `_error` strings, coordinates
`slice`, `z_mm`, `dose`. One chunk per slice and dose, so writes of different slices never touch the same chunk
and several processes may write at once. Schema changes (add_doses) take the archive's "schema" lock. New stores
seal every chunk with a crc32c checksum (storage.skeleton); a chunk that fails it, or does not decode, raises
CorruptChunkError naming study, variable, slice and dose (stores made before checksums still open and work).

    archive = create_archive(path, image_hu=..., spacing_mm=..., z_mm=..., doses=[0.25], geometry={...},
                             physics=PhysicsSettings().to_dict(), seed=0,
                             source={...}, sinogram_shape=(672, 672))
    archive.write("proj_ld", start=0, data=sinograms, dose=0.25)
    archive.mark("ingest_ld", range(0, 4), "done", dose=0.25, produced_by=archive.settings_hash)
    archive.dataset.sel(dose=0.25).proj_ld
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec
from zarr.core.metadata import ArrayV3Metadata
from zarr.storage import LocalStore

from need_core.doses import DOSE_TOLERANCE
from need_core.versions import SIMULATOR_VERSION
from storage.catalog_paths import catalog_of_study, is_catalog_root, lock_root, study_lock_dir
from storage.errors import (
    ArchiveError,
    ArchiveExistsError,
    ArchiveInputError,
    ArchiveLockedError,
    ArchiveNotFoundError,
    ArchiveSchemaError,
    CorruptChunkError,
    UnknownDoseError,
)
from storage.ledger import (
    DONE,
    FAILED,
    LEDGER_DIMS,
    PENDING,
    STATE_NAMES,
    check_ledger_name,
    error_variable,
    fit_text,
    produced_by_variable,
    slice_ranges,
    state_code,
    status_variable,
)
from storage.locks import exclusive_lock, is_locked
from storage.placement import build_then_place
from storage.schema import DATA_VARIABLES, LEDGER_VARIABLES, SCHEMA_VERSION, validate_layout
from storage.skeleton import build_skeleton
from storage.validation import (
    check_doses,
    check_finite,
    check_physics,
    check_shape2,
    check_spacing_mm,
    check_volume_array,
    check_z_mm,
    to_jsonable,
)

__all__ = [
    "SCHEMA_VERSION",
    "Archive",
    "ArchiveError",
    "ArchiveExistsError",
    "ArchiveInputError",
    "ArchiveLockedError",
    "ArchiveNotFoundError",
    "ArchiveSchemaError",
    "CorruptChunkError",
    "UnknownDoseError",
    "create_archive",
    "make_settings",
    "open_archive",
    "settings_hash",
]

LOCK_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
MAX_PRODUCED_BY_CHARS = 256
SETTINGS_KEYS = ("geometry", "physics", "seed", "sinogram_shape", "image_shape", "subject_key", "simulator")
DECODE_ERRORS = (ValueError, RuntimeError)
"""What zarr raises for a stored chunk it cannot decode: ValueError for a crc32c mismatch, RuntimeError from zstd."""
INGESTED_VARIABLES = ("image_hu", "proj_nd", "fbp_nd", "proj_ld")
RESULT_VARIABLES = ("fbp_ld", "spdiff_fbp", "need", "proj_spdiff")


def repair_hint(var: str) -> str:
    """How to mend a corrupt chunk of `var` (storage.repair): data the pipeline made is recomputed by a rerun once
    `need verify --repair` set it pending; a source image by re-ingesting its study; the rest from a copy."""
    if var == "image_hu":
        return "`need verify CATALOG --repair` drops the study for a rebuild by `need ingest SRC CATALOG`"
    if var in INGESTED_VARIABLES:
        return "`need verify CATALOG --repair` sets the slice pending, then `need ingest SRC CATALOG` recomputes it"
    if var in RESULT_VARIABLES:
        return "`need verify CATALOG --repair` sets the slice pending, then `need reconstruct` recomputes it"
    return "restore the file from a copy"


def has_checksum(array: zarr.Array) -> bool:
    """Whether the stored chunks of `array` carry a crc32c checksum."""
    metadata = array.metadata
    return isinstance(metadata, ArrayV3Metadata) and any(isinstance(codec, Crc32cCodec) for codec in metadata.codecs)


def corruption_reason(err: Exception, chunk_key: str) -> str:
    """Why a stored chunk failed to decode, in words, naming its file (relative to the study group)."""
    if isinstance(err, ValueError) and "checksum" in str(err):
        return f"checksum mismatch in its stored chunk {chunk_key}"
    return f"its stored chunk {chunk_key} does not decode: {type(err).__name__}: {err}"


def make_settings(
    *,
    geometry: Mapping[str, Any],
    physics: Mapping[str, Any],
    seed: int,
    sinogram_shape: tuple[int, int],
    image_shape: tuple[int, int, int],
    subject_key: str = "",
) -> dict[str, Any]:
    """The settings an archive is made with, JSON-normalised, so `archive.settings == make_settings(...)` compares
    exactly.

    `subject_key` is the de-identified subject (source["subject_key"] at creation), so a re-ingest of another
    volume into the same archive is detected; `simulator` is need_core's SIMULATOR_VERSION, so an archive simulated
    by older rules is told apart.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ArchiveInputError(f"seed must be an integer, got {seed!r}")
    if not isinstance(geometry, Mapping):
        raise ArchiveInputError(f"geometry must be a dict, got {type(geometry).__name__}")
    return {
        "geometry": to_jsonable(dict(geometry), "geometry", ArchiveInputError),
        "physics": check_physics(physics, ArchiveInputError),
        "seed": int(seed),
        "sinogram_shape": list(check_shape2(sinogram_shape, "sinogram_shape", ArchiveInputError)),
        "image_shape": [int(size) for size in image_shape],
        "subject_key": str(subject_key),
        "simulator": SIMULATOR_VERSION,
    }


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short stable key of a settings dict (sha256 of its canonical JSON, 16 hex digits)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def create_archive(
    path: str | os.PathLike,
    *,
    image_hu: np.ndarray,
    spacing_mm: tuple[float, float, float],
    z_mm: np.ndarray,
    doses: Iterable[float],
    geometry: Mapping[str, Any],
    physics: Mapping[str, Any],
    seed: int,
    source: Mapping[str, Any],
    sinogram_shape: tuple[int, int],
    overwrite: bool = False,
) -> Archive:
    """Create an archive atomically (built aside, renamed in) holding `image_hu`; every other variable empty.

    An existing archive at `path` raises ArchiveExistsError unless `overwrite` (it is then replaced only after the
    new one is complete, and never while one of its locks is held); foreign data at `path` is always refused.
    """
    path = Path(path)
    image = check_volume_array(image_hu, "image_hu", ArchiveInputError)
    settings = make_settings(
        geometry=geometry,
        physics=physics,
        seed=seed,
        sinogram_shape=sinogram_shape,
        image_shape=image.shape,
        subject_key=str(dict(source).get("subject_key", "")),
    )
    attrs = {
        **settings,
        "spacing_mm": list(check_spacing_mm(spacing_mm, ArchiveInputError)),
        "source": to_jsonable(dict(source), "source", ArchiveInputError),
        "settings_hash": settings_hash(settings),
    }
    z = check_z_mm(z_mm, image.shape[0], ArchiveInputError)
    dose_list = check_doses(doses, ArchiveInputError)

    def build(staging: Path) -> None:
        build_skeleton(
            staging,
            image_hu=image,
            z_mm=z,
            doses=dose_list,
            sinogram_shape=tuple(settings["sinogram_shape"]),
            attrs=attrs,
        )

    catalog = catalog_of_study(path)
    staging = lock_root(catalog) / "staging" if catalog is not None else None
    build_then_place(path, build, overwrite, before_replace=_refuse_if_locked, staging_parent=staging)
    return open_archive(path, mode="r+")


ArchiveMode = Literal["r", "r+"]


def open_archive(path: str | os.PathLike, mode: str = "r") -> Archive:
    """Open an existing archive read-only ("r") or for writing ("r+"), checking its schema (ArchiveSchemaError).

    `path` may be a study group (`CATALOG/studies/<key>`), a lone archive, or a catalog holding exactly one study
    (the one-study case of a single scan); a catalog of several studies must name the study."""
    if mode not in ("r", "r+"):
        raise ArchiveInputError(f"mode must be 'r' or 'r+', got {mode!r}")
    path = Path(path)
    if not path.exists():
        raise ArchiveNotFoundError(f"no archive at {path}")
    if is_catalog_root(path):
        path = _only_study(path)
    return Archive(path, cast(ArchiveMode, mode))  # checked above


def _only_study(catalog: Path) -> Path:
    """The one study group of a catalog; ArchiveInputError when it holds none or several."""
    studies = sorted(child for child in (catalog / "studies").glob("*") if (child / "zarr.json").is_file())
    if len(studies) != 1:
        keys = ", ".join(study.name for study in studies) or "none"
        raise ArchiveInputError(
            f"{catalog} is a catalog of {len(studies)} studies ({keys}): name one as {catalog}/studies/<key>, "
            "or use the cohort commands (need info / reconstruct / evaluate CATALOG)"
        )
    return studies[0]


def _refuse_if_locked(path: Path) -> None:
    """Raise ArchiveLockedError when any lock of the archive at `path` is held (used before replacing it)."""
    held = sorted(lock.stem for lock in study_lock_dir(path).glob("*.lock") if is_locked(lock))
    if held:
        raise ArchiveLockedError(
            f"cannot replace the archive at {path}: its lock(s) {held} are held by a running process"
        )


class Archive:
    """An open archive: region reads/writes of slices, dose bookkeeping, the status ledger and locks."""

    PENDING, DONE, FAILED = PENDING, DONE, FAILED

    def __init__(self, path: Path, mode: ArchiveMode) -> None:
        """Open and validate the store at `path`; use open_archive / create_archive rather than this."""
        self.path = path
        self.mode = mode
        self._store = LocalStore(path, read_only=(mode == "r"))
        try:
            group = zarr.open_group(store=self._store, mode=mode, zarr_format=3)
            arrays = dict(group.arrays())
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            raise ArchiveSchemaError(f"{path} is not a readable Zarr v3 group: {type(err).__name__}: {err}") from err
        self._attrs: dict[str, Any] = dict(group.attrs)  # JSON values; validate_layout checks the schema
        self._sizes = validate_layout(self._attrs, arrays, where=str(path))

    def __repr__(self) -> str:
        return f"Archive({str(self.path)!r}, mode={self.mode!r}, slices={self.n_slices}, doses={self.doses})"

    # --- metadata -------------------------------------------------------------------------------------------

    @property
    def dataset(self) -> xr.Dataset:
        """The archive as a lazy (dask-backed) xarray Dataset, opened afresh on each access."""
        return xr.open_zarr(self.path, consolidated=False, zarr_format=3)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's attributes (schema_version, geometry, physics, seed, spacing_mm, source, created, ...)."""
        return dict(self._attrs)

    @property
    def settings(self) -> dict[str, Any]:
        """geometry, physics, seed, sinogram_shape, image_shape, subject_key, simulator: what a re-ingest must match
        (see make_settings); a key an older archive lacks is None."""
        return {key: self._attrs.get(key) for key in SETTINGS_KEYS}

    @property
    def settings_hash(self) -> str:
        """settings_hash(self.settings): a short key to record as produced_by of ingest results."""
        return settings_hash(self.settings)

    @property
    def study_name(self) -> str:
        """How messages name this study: its key in a catalog, else its path."""
        return self.path.name if catalog_of_study(self.path) is not None else str(self.path)

    @property
    def checksummed(self) -> bool:
        """Whether every chunk carries a crc32c checksum (stores made before checksums have none; they still open)."""
        return all(has_checksum(self._array(name)) for name in DATA_VARIABLES)

    @property
    def n_slices(self) -> int:
        """Number of slices of the volume."""
        return self._sizes["slice"]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel spacing (dz, dy, dx) in mm of image_hu."""
        return tuple(self._attrs["spacing_mm"])

    @property
    def doses(self) -> list[float]:
        """The dose fractions held, in the order they were added (read from the store on each call)."""
        return [float(dose) for dose in cast(np.ndarray, self._array("dose")[:])]

    def dose_index(self, dose: float) -> int:
        """Index of `dose` along the dose dim (tolerance 1e-9); UnknownDoseError lists the doses held."""
        doses = self.doses
        for index, held in enumerate(doses):
            if abs(held - float(dose)) <= DOSE_TOLERANCE:
                return index
        raise UnknownDoseError(f"dose {dose!r} is not in the archive at {self.path}: it holds doses {doses}")

    def add_doses(self, doses: Iterable[float]) -> list[float]:
        """Append dose fractions not yet held (others are ignored); return the added ones.

        Existing chunks stay untouched."""
        self._require_writable("add doses")
        requested = check_doses(doses, ArchiveInputError)
        with self.lock("schema"):
            held = self.doses
            new = [dose for dose in requested if all(abs(dose - old) > DOSE_TOLERANCE for old in held)]
            if not new:
                return []
            total = len(held) + len(new)
            for name, spec in {**DATA_VARIABLES, **LEDGER_VARIABLES}.items():
                if "dose" in spec.dims:
                    array = self._array(name)
                    array.resize((total, *array.shape[1:]))
            dose_array = self._array("dose")
            dose_array.resize((total,))
            dose_array[len(held) :] = np.asarray(new, dtype=np.float64)
        return new

    # --- data -----------------------------------------------------------------------------------------------

    def read(self, var: str, start: int, stop: int, dose: float | None = None) -> np.ndarray:
        """Slices [start, stop) of data variable `var` (at `dose` for per-dose variables); unwritten cells are NaN.

        A stored chunk that fails its checksum or does not decode raises CorruptChunkError naming its slices."""
        values, corrupt = self.read_intact(var, start, stop, dose)
        if corrupt is not None:
            raise corrupt
        return values

    def read_intact(
        self, var: str, start: int, stop: int, dose: float | None = None
    ) -> tuple[np.ndarray, CorruptChunkError | None]:
        """Like `read`, but corrupt slices read as NaN and come back as a CorruptChunkError (None when all are
        intact), so a caller can go on without them. A failed read of several slices is retried one slice at a
        time to find which are bad."""
        index = self._data_index(var, dose)
        self._check_range(start, stop)
        array = self._array(var)
        whole: tuple[int | slice, ...] = (*index, slice(start, stop))
        try:
            return np.asarray(array[whole]), None
        except DECODE_ERRORS as whole_read_error:
            values = np.full((stop - start, *array.shape[len(index) + 1 :]), np.nan, dtype=array.dtype)
            bad: dict[int, str] = {}
            for s in range(start, stop):
                try:
                    values[s - start] = array[(*index, s)]
                except DECODE_ERRORS as err:
                    chunk_key = array.metadata.encode_chunk_key((*index, s, *[0] * (values.ndim - 1)))
                    bad[s] = corruption_reason(err, f"{var}/{chunk_key}")
            if not bad:  # no single slice fails: not a corrupt chunk
                raise whole_read_error
        return values, CorruptChunkError(self.study_name, var, bad, dose, repair_hint(var))

    def write(self, var: str, start: int, data: np.ndarray, dose: float | None = None) -> None:
        """Write contiguous slices starting at `start` (data shaped (n, ...) like the variable); data must be finite."""
        self._require_writable(f"write {var}")
        index = self._data_index(var, dose)
        array = self._array(var)
        values = np.asarray(data)
        slice_shape = array.shape[len(index) + 1 :]
        if values.ndim != len(slice_shape) + 1 or values.shape[1:] != slice_shape or values.shape[0] < 1:
            raise ArchiveInputError(
                f"data for {var} must have shape (n_slices, {', '.join(map(str, slice_shape))}), got {values.shape}"
            )
        self._check_range(start, start + values.shape[0])
        as_float = values.astype(np.float32)
        check_finite(as_float, f"data for {var}", ArchiveInputError)
        key: tuple[int | slice, ...] = (*index, slice(start, start + values.shape[0]))
        array[key] = as_float

    # --- ledger ---------------------------------------------------------------------------------------------

    def ledger(self, name: str, dose: float | None = None) -> np.ndarray:
        """int8 state codes (0 pending, 1 done, 2 failed) of ledger `name`: (dose, slice), or (slice,) for one
        dose/ingest."""
        return self._ledger_values(status_variable(name), name, dose)

    def mark(
        self,
        name: str,
        slices: int | Iterable[int],
        state: str,
        dose: float | None = None,
        produced_by: str = "",
        error: str = "",
    ) -> None:
        """Set `state` for `slices`, recording what produced them (done) or why they failed; pending clears both.

        The strings are written before the state, so a done cell always carries its producer.
        """
        self._require_writable(f"mark ledger {name}")
        code = state_code(state)
        cells = self._ledger_cells(name, dose, slices)
        if not isinstance(produced_by, str) or "\n" in produced_by or len(produced_by) > MAX_PRODUCED_BY_CHARS:
            raise ArchiveInputError(f"produced_by must be a one-line string of at most {MAX_PRODUCED_BY_CHARS} chars")
        if not isinstance(error, str):
            raise ArchiveInputError(f"error must be a string, got {type(error).__name__}")
        count = len(cells[-1])
        producer = produced_by if code != 0 else ""
        message = error if code == FAILED else ""
        shape = (1, count) if len(cells) == 2 else (count,)
        self._array(produced_by_variable(name)).oindex[cells] = np.full(shape, producer, dtype=object)
        self._array(error_variable(name)).oindex[cells] = np.full(shape, message, dtype=object)
        self._array(status_variable(name)).oindex[cells] = np.full(shape, code, dtype=np.int8)

    def stale_slices(self, name: str, dose: float, produced_by: str) -> np.ndarray:
        """Sorted slices of ledger `name` at `dose` not done by `produced_by`, in two bulk reads: the states of the
        dose's row, then the producers of its done cells only (one chunk per cell: unread cells cost nothing)."""
        if check_ledger_name(name)[0] != "dose":
            raise ArchiveInputError(f"ledger {name!r} has no dose dim")
        row = self.dose_index(dose)
        states = np.asarray(self._array(status_variable(name))[row])
        done = np.flatnonzero(states == DONE)
        stale = np.flatnonzero(states != DONE)
        if done.size:
            producers = np.asarray(self._array(produced_by_variable(name)).oindex[row, done])
            stale = np.union1d(stale, done[producers != produced_by])
        return stale.astype(np.int64)

    def produced_by(self, name: str, dose: float | None = None) -> list[str]:
        """Per slice, what produced the result of ledger `name` at `dose` ("" where nothing is recorded)."""
        return [str(value) for value in self._ledger_values(produced_by_variable(name), name, dose, one_dose=True)]

    def errors(self, name: str, dose: float | None = None) -> dict[int, str]:
        """{slice: error message} for the failed slices of ledger `name` at `dose`."""
        states = self._ledger_values(status_variable(name), name, dose, one_dose=True)
        messages = self._ledger_values(error_variable(name), name, dose, one_dose=True)
        return {int(i): str(messages[i]) for i in np.flatnonzero(states == FAILED)}

    def todo(self, name: str, dose: float | None = None, produced_by: str | None = None) -> list[int]:
        """Slices still to do for ledger `name`: not done, or (when `produced_by` is given) done by something else."""
        states = self._ledger_values(status_variable(name), name, dose, one_dose=True)
        stale = states != DONE
        if produced_by is not None:
            producers = self._ledger_values(produced_by_variable(name), name, dose, one_dose=True)
            stale |= producers != produced_by
        return [int(i) for i in np.flatnonzero(stale)]

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the archive's exclusive lock `name` (non-blocking); ArchiveLockedError if another process holds it."""
        if not isinstance(name, str) or not LOCK_NAME.match(name):
            raise ArchiveInputError(f"lock name must match {LOCK_NAME.pattern}, got {name!r}")
        with exclusive_lock(study_lock_dir(self.path) / f"{name}.lock", f"lock {name!r} of archive {self.path}"):
            yield

    def describe(self) -> str:
        """A human summary: dims, doses, geometry, physics, source and done/failed/pending counts per ledger and
        dose."""
        attrs = self._attrs
        z = cast(np.ndarray, self._array("z_mm")[:])
        ny, nx = self._sizes["y"], self._sizes["x"]
        lines = [
            f"NEED archive {self.path} (schema {attrs['schema_version']}, created {attrs['created']})",
            f"  slices: {self.n_slices} (z {z[0]:.2f} .. {z[-1]:.2f} mm), image {ny} x {nx}, "
            f"spacing (dz, dy, dx) {tuple(round(v, 4) for v in self.spacing_mm)} mm",
            f"  sinogram: {self._sizes['view']} views x {self._sizes['det']} detector bins",
            f"  doses: {', '.join(f'{d:g}' for d in self.doses) or 'none'}",
            f"  geometry: {_one_line(attrs['geometry'])}",
            f"  physics: {_one_line(attrs['physics'])}",
            f"  seed: {attrs['seed']}   settings hash: {self.settings_hash}",
            f"  source: {_one_line(attrs['source'])}",
            "  checksums: "
            + (
                "crc32c on every chunk"
                if self.checksummed
                else "none (made before checksums): `need verify` checks only that chunks decode"
            ),
            "  ledgers (done / failed / pending):",
        ]
        for name, dims in LEDGER_DIMS.items():
            states = self.ledger(name)
            rows = (
                [("", states)]
                if dims == ("slice",)
                else [(f" dose {d:g}", states[i]) for i, d in enumerate(self.doses)]
            )
            for label, row in rows:
                counts = [int((row == code).sum()) for code in STATE_NAMES]
                lines.append(f"    {name}{label}: {counts[DONE]} / {counts[FAILED]} / {counts[PENDING]}")
        failures = self.failure_lines()
        if failures:
            lines.append("  failed slices and why:")
            lines.extend(f"    {line}" for line in failures)
        return "\n".join(lines)

    def failure_lines(self, width: int = 240) -> list[str]:
        """One line per ledger, dose and error message: the failed slices that share it and the message (cut to
        `width` characters), so `need info` shows why slices failed without a traceback."""
        lines: list[str] = []
        for name, dims in LEDGER_DIMS.items():
            for dose in self.doses if "dose" in dims else [None]:
                by_message: dict[str, list[int]] = {}
                for s, message in self.errors(name, dose).items():
                    by_message.setdefault(" ".join(message.split()) or "no message recorded", []).append(s)
                at = f" dose {dose:g}" if dose is not None else ""
                lines.extend(
                    f"{name}{at} slices {slice_ranges(found)}: {fit_text(message, width)}"
                    for message, found in by_message.items()
                )
        return lines

    # --- helpers --------------------------------------------------------------------------------------------

    def _array(self, name: str) -> zarr.Array:
        """The zarr array `name`, opened afresh so that shape changes by other processes are seen."""
        return zarr.open_array(self._store, path=name, mode=self.mode, zarr_format=3)

    def _require_writable(self, action: str) -> None:
        if self.mode != "r+":
            raise ArchiveError(f"cannot {action}: the archive at {self.path} is open read-only (use mode='r+')")

    def _data_index(self, var: str, dose: float | None) -> tuple[int, ...]:
        """Leading index (the dose index, or nothing) for data variable `var`, checking `dose` fits its dims."""
        spec = DATA_VARIABLES.get(var)
        if spec is None:
            raise ArchiveInputError(f"unknown variable {var!r}: expected one of {sorted(DATA_VARIABLES)}")
        return self._dose_prefix(var, "dose" in spec.dims, dose)

    def _dose_prefix(self, what: str, per_dose: bool, dose: float | None) -> tuple[int, ...]:
        if per_dose:
            if dose is None:
                raise ArchiveInputError(f"{what} is stored per dose: pass dose= one of {self.doses}")
            return (self.dose_index(dose),)
        if dose is not None:
            raise ArchiveInputError(f"{what} has no dose dim: do not pass dose (got {dose!r})")
        return ()

    def _check_range(self, start: int, stop: int) -> None:
        if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))):
            raise ArchiveInputError(f"slice bounds must be integers, got {start!r}, {stop!r}")
        if not 0 <= start < stop <= self.n_slices:
            raise ArchiveInputError(f"slice range [{start}, {stop}) is outside [0, {self.n_slices}) or empty")

    def _ledger_cells(self, name: str, dose: float | None, slices: int | Iterable[int]) -> tuple:
        """Orthogonal index of the ledger cells (dose index, slice list) for `slices`, each checked in range."""
        dims = check_ledger_name(name)
        wanted = [slices] if isinstance(slices, (int, np.integer)) else list(slices)
        if not wanted:
            raise ArchiveInputError("no slices given to mark")
        for index in wanted:
            if not isinstance(index, (int, np.integer)) or not 0 <= index < self.n_slices:
                raise ArchiveInputError(f"slice {index!r} is not an integer in [0, {self.n_slices})")
        if len(set(wanted)) != len(wanted):
            raise ArchiveInputError(f"slices to mark contain duplicates: {wanted}")
        prefix = self._dose_prefix(f"ledger {name!r}", dims[0] == "dose", dose)
        positions = [int(index) for index in wanted]
        return ([prefix[0]], positions) if prefix else (positions,)

    def _ledger_values(self, variable: str, name: str, dose: float | None, one_dose: bool = False) -> np.ndarray:
        """Values of a ledger variable: all of it, or the row of `dose` (required when `one_dose` and per dose)."""
        per_dose = check_ledger_name(name)[0] == "dose"
        array = self._array(variable)
        if per_dose and dose is None and not one_dose:
            return np.asarray(array[:])
        prefix = self._dose_prefix(f"ledger {name!r}", per_dose, dose)
        return np.asarray(array[prefix[0]] if prefix else array[:])


def _one_line(mapping: Mapping[str, Any]) -> str:
    """key=value pairs of a dict on one line (nested values as compact JSON)."""
    return ", ".join(f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in mapping.items()) or "-"

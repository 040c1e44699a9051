"""Checks of a command's arguments, paths, checkpoints and stores that need no server, run before Prefect or Dask
start, so a mistake is reported in a second instead of after half a minute of start-up.

What is checked, per command (`CHECKS`): counts (`--chunk-slices`, `--workers`, `--steps`, ...) at least 1, seeds
not negative, slice ranges not empty; that each SRC exists and holds a volume file or DICOM; that the catalog exists
(or, for ingest and pull, can be created) and can be written by commands that write it; that checkpoint files exist
and load; that the tracking store (when tracking is on, or a `models:/` reference needs the registry) can be reached
and written, and a SQLite registry knows the model named; that a Dask scheduler given by address accepts
connections. Nothing here starts a server or writes anything but a probe file it removes at once; heavy imports
(torch, MLflow, readers) happen only for the checks needing them, after the cheap ones. Where a flow owns a rule, the
rule lives in one function both call (tasks.chunking.check_chunk_slices, need_core.doses.validate_doses,
need_core.device.resolve_device, storage.validation.check_spacing_mm, storage.checkpoints.load_checkpoint).
"""

from __future__ import annotations

import argparse
import re
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from flows.tracking.location import check_tracking_location, sqlite_path, tracking_uri
from need_core.doses import DOSE_TOLERANCE, validate_doses
from storage.catalog_paths import STUDIES_GROUP, is_catalog_root, lock_root, root_attributes
from storage.errors import ArchiveError, ArchiveInputError, ArchiveNotFoundError
from storage.source_files import first_candidate, volume_suffixes
from storage.writable import require_writable_dir
from tasks.chunking import check_chunk_slices

CONNECT_TIMEOUT_S = 2.0
COUNTS = {
    "workers": "--workers",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "validate_every": "--validate-every",
    "patients": "--patients",
}
SLICE_LISTS = {"slices": "--slices", "train_slices": "--train-slices", "validation_slices": "--validation-slices"}
MODEL_FLAGS = {"spdiff": "--spdiff", "dgdiff": "--dgdiff"}


def check_before_start(args: argparse.Namespace) -> None:
    """Raise ValueError / FileNotFoundError / RuntimeError naming the first problem of `args` that can be seen
    without servers."""
    check_numbers(args)
    for check in CHECKS.get(args.command, ()):
        check(args)


# --- numbers --------------------------------------------------------------------------------------------------------


def check_numbers(args: argparse.Namespace) -> None:
    """Counts at least 1, seeds not negative, slice lists not empty (a range like 5-3 selects nothing)."""
    if getattr(args, "chunk_slices", None) is not None:
        check_chunk_slices(args.chunk_slices)
    for name, flag in COUNTS.items():
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.command == "example-cohort" and args.slices < 1:
        raise ValueError(f"--slices must be at least 1, got {args.slices}")
    seed = getattr(args, "seed", None)
    if seed is not None and seed < 0:
        raise ValueError(f"--seed must be a whole number >= 0, got {seed}")
    for name, flag in SLICE_LISTS.items():
        value = getattr(args, name, None)
        if isinstance(value, list) and not value:
            raise ValueError(f"{flag} selects no slice (a range is FIRST-LAST with FIRST <= LAST, e.g. 0-39,70-105)")
    if getattr(args, "spacing", None) is not None:
        from storage.validation import check_spacing_mm  # loads torch: only when a spacing is given

        try:
            check_spacing_mm(args.spacing)
        except ValueError as err:
            raise ValueError(f"--spacing: {err}") from None
    if getattr(args, "train_dose", None) is not None:
        validate_doses([args.train_dose])


# --- sources and catalogs -------------------------------------------------------------------------------------------


def check_sources(sources: list[str]) -> None:
    """Every SRC exists and holds a volume file or a DICOM file, told by name or first bytes (storage.source_files;
    whether the DICOM is an axial CT series, discovery tells once the flow runs)."""
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"source {source} does not exist; expected a folder or a file")
        if first_candidate(path) is None:
            what = "is neither a DICOM file nor a volume" if path.is_file() else "holds no DICOM file or volume"
            raise ValueError(f"source {source} {what}; expected DICOM files or {volume_suffixes()} volumes")


def legacy_archive_message(catalog: str | Path) -> str:
    """What to do with a single-scan archive from before catalogs, given where a catalog is wanted."""
    return (
        f"{catalog} is a single-scan archive from before catalogs: run `need migrate {catalog} --source SRC` "
        "once (SRC: the series it was ingested from), then ingest again"
    )


def check_catalog_exists(catalog: str) -> Path:
    """The catalog (or archive, or study group) at `catalog` exists and is a NEED store."""
    path = Path(catalog)
    if not path.exists():
        raise ArchiveNotFoundError(f"no catalog at {catalog}")
    attributes = root_attributes(path)
    if attributes is None or "schema_version" not in attributes:
        raise ArchiveInputError(f"{catalog} is neither a NEED catalog nor a NEED archive")
    return path


def check_catalog_writable(path: Path) -> None:
    """The catalog's root, its study groups' folder and its lock folder (beside it) take new files."""
    require_writable_dir(path, "catalog")
    if (path / STUDIES_GROUP).is_dir():
        require_writable_dir(path / STUDIES_GROUP, "catalog studies folder")
    require_writable_dir(lock_root(path), "catalog lock folder")


def check_ingest_target(catalog: str) -> None:
    """Ingest writes into an existing catalog, or creates one (absent or an empty folder) where it can write."""
    path = Path(catalog)
    if path.exists() and not path.is_dir():
        raise ArchiveInputError(f"{catalog} is a file, not a catalog")
    if path.is_dir() and any(path.iterdir()):
        if not is_catalog_root(path):
            attributes = root_attributes(path)
            if attributes is not None and "schema_version" in attributes:
                raise ArchiveError(legacy_archive_message(catalog))
            raise ArchiveInputError(f"{catalog} is neither a NEED catalog nor a NEED archive")
    check_catalog_writable(path)


def check_catalog_table(catalog: str) -> None:
    """A command that writes the study table (split) needs a catalog, not a schema-1 archive."""
    if not is_catalog_root(Path(catalog)):
        raise ArchiveError(f"{catalog} is a schema-1 archive, not a catalog: run `need migrate {catalog}` first")


# --- models, tracking, servers --------------------------------------------------------------------------------------


def check_checkpoint(reference: str, kind: str, flag: str) -> None:
    """A checkpoint file exists and loads as `kind` (storage.checkpoints); a `models:/` reference needs the registry:
    the tracking store must be usable."""
    if reference.startswith("models:/"):
        check_tracking(f"{flag} {reference} is looked up in the model registry")
        from flows.tracking.registry import ModelReferenceError, registered_model_version  # loads MLflow

        try:
            registered_model_version(reference)
        except ModelReferenceError as err:
            raise ModelReferenceError(f"{flag}: {err}") from None
        return
    from storage.checkpoints import CheckpointError, load_checkpoint  # loads torch: only when a file is named

    try:
        load_checkpoint(Path(reference).expanduser(), kind)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{flag}: {err}") from None
    except CheckpointError as err:  # torch's reasons can run over many lines: the first says what is wrong
        raise CheckpointError(f"{flag}: {str(err).splitlines()[0]}") from None


def check_checkpoint_present(reference: str, flag: str) -> None:
    """The half of check_checkpoint that needs neither torch nor MLflow (seconds each), run before them: a named
    file exists; a `models:/` reference into a SQLite store names a model registered there (registry_names)."""
    if not reference.startswith("models:/"):
        path = Path(reference).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{flag}: checkpoint not found: {path}")
        return
    check_tracking(f"{flag} {reference} is looked up in the model registry")
    uri = tracking_uri()
    database = sqlite_path(uri) if uri.startswith("sqlite:") else None
    name = reference.removeprefix("models:/").split("/")[0].split("@")[0]
    if database is not None and name not in registry_names(database):
        raise ValueError(f"{flag}: no registered model version for {reference} in {uri}: no model {name!r} there")


def registry_names(database: Path) -> set[str]:
    """The registered model names of an MLflow SQLite store, read without MLflow (none: no file, or no registry
    table yet, as in a store no model was ever registered in)."""
    if not database.is_file():
        return set()
    try:
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as db:
            return {name for (name,) in db.execute("SELECT name FROM registered_models")}
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return set()
        raise


def check_tracking(why: str = "") -> None:
    """The tracking store can be reached and written (flows.tracking.location; MLflow is not loaded)."""
    from flows.tracking.location import TrackingUnavailable

    try:
        check_tracking_location(tracking_uri())
    except TrackingUnavailable as err:
        raise TrackingUnavailable(f"{err}{f' ({why})' if why else ''}") from None


def check_reachable(url: str, what: str) -> None:
    """A server given by address (tcp://HOST:PORT, HOST:PORT, http(s)://HOST[:PORT]) accepts a TCP connection."""
    parsed = urlparse(url if "://" in url else f"tcp://{url}")
    default = {"http": 80, "https": 443}.get(parsed.scheme.lower())
    try:
        port = parsed.port or default
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise ValueError(f"{what} {url!r} is not an address like tcp://HOST:PORT or http://HOST:PORT")
    try:
        with socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise ValueError(f"{what} {url} is unreachable ({err.strerror or err})") from None


def check_device(device: str) -> None:
    """An explicit device must be one need_core.device knows (checked by name, without torch) and, for CUDA, exist
    here (asked for without a GPU is an error)."""
    if device in ("auto", "cpu"):
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    from need_core.device import resolve_device  # loads torch

    resolve_device(device)


# --- per command ----------------------------------------------------------------------------------------------------


def _dask(args: argparse.Namespace) -> None:
    if args.dask_address:
        check_reachable(args.dask_address, "Dask scheduler --dask-address")


def _tracking(args: argparse.Namespace) -> None:
    if getattr(args, "tracking", True):
        check_tracking("pass --no-tracking to run without it")


def _ingest(args: argparse.Namespace) -> None:
    check_sources(args.sources)
    check_ingest_target(args.catalog)
    if args.spacing is None:
        check_volumes_have_spacing(args.sources)


def check_volumes_have_spacing(sources: list[str]) -> None:
    """A .npy volume carries no voxel spacing: ingesting one needs --spacing."""
    for source in sources:
        path = Path(source)
        found = [path] if path.is_file() else sorted(path.rglob("*.npy"))[:1]
        if found and found[0].suffix.lower() == ".npy":
            raise ValueError(f"{found[0]} is a .npy volume, which has no voxel spacing: give --spacing DZ,DY,DX (mm)")


def check_selection(catalog: str, args: argparse.Namespace) -> None:
    """The chosen studies (--split / --studies) exist and are ingested, each asked dose is held by one of them, and
    --slices lie inside a study (storage.catalog: table and study attrs only, no data)."""
    from storage.catalog import open_catalog  # loads torch (seconds)

    store = open_catalog(catalog)
    rows = store.select(split=getattr(args, "split", None), studies=getattr(args, "studies", None))
    studies = [store.study(row.study, "r") for row in rows]
    if not studies:
        return  # nothing ingested yet: the flow says so
    held = sorted({dose for study in studies for dose in study.doses})
    for dose in getattr(args, "doses", None) or ():
        if not any(abs(dose - other) <= DOSE_TOLERANCE for other in held):
            raise ArchiveInputError(
                f"dose {dose:g} is not in {catalog} (its studies hold {', '.join(f'{d:g}' for d in held)}):"
                f" add it with `need ingest SRC {catalog} --doses ...`"
            )
    slices = getattr(args, "slices", None)
    if slices:
        smallest = min(study.n_slices for study in studies)
        outside = sorted(s for s in set(slices) if not 0 <= s < smallest)
        if outside:
            raise ArchiveInputError(f"--slices {outside[:5]} lie outside the study (slices 0-{smallest - 1})")


def _catalog_target(args: argparse.Namespace) -> None:
    check_ingest_target(args.catalog)


def _written_catalog(args: argparse.Namespace) -> None:
    check_catalog_writable(check_catalog_exists(args.catalog))


def _selection(args: argparse.Namespace) -> None:
    check_selection(args.catalog, args)


def _pacs_server(args: argparse.Namespace) -> None:
    from storage.dicomweb import public_url

    try:
        check_reachable(args.url, "DICOMweb server")
    except ValueError:
        raise ValueError(f"cannot reach the DICOMweb server {public_url(args.url)} (connection refused)") from None


def _read_catalog(args: argparse.Namespace) -> None:
    check_catalog_exists(args.catalog)


def _model_files(args: argparse.Namespace) -> None:
    for kind, flag in MODEL_FLAGS.items():
        check_checkpoint_present(getattr(args, kind), flag)


def _models(args: argparse.Namespace) -> None:
    for kind, flag in MODEL_FLAGS.items():
        check_checkpoint(getattr(args, kind), kind, flag)


def _sampling(args: argparse.Namespace) -> None:
    """A --sampling profile file must exist and be a profile (which models it fits, the flow checks)."""
    if args.sampling not in (None, "reference"):
        from need_core.sampling import SamplingProfile  # loads torch: only when a file is named

        SamplingProfile.load(args.sampling)


def _device(args: argparse.Namespace) -> None:
    check_device(args.device)


def _train(args: argparse.Namespace) -> None:
    check_catalog_exists(args.catalog)
    if args.checkpoint and args.resume:
        check_checkpoint(args.checkpoint, args.model, "--checkpoint")
    if args.checkpoint:  # the default (flows.train.default_checkpoint) is next to the catalog
        require_writable_dir(Path(args.checkpoint).parent, "--checkpoint folder")


def _split(args: argparse.Namespace) -> None:
    check_catalog_table(args.catalog)
    _written_catalog(args)


def _migrate(args: argparse.Namespace) -> None:
    path = Path(args.archive)
    if not (not path.exists() and (lock_root(path) / "migrating").exists()):  # else: finishing a cut-off migration
        check_catalog_exists(args.archive)
        require_writable_dir(path, "archive")
        require_writable_dir(path.absolute().parent, "folder of the archive")
    if args.source:
        check_sources([args.source])


def _export(args: argparse.Namespace) -> None:
    check_catalog_exists(args.catalog)
    require_writable_dir(Path(args.out_dir), "output folder")


def _demo(args: argparse.Namespace) -> None:
    require_writable_dir(Path(args.workdir), "--workdir")


def _example_cohort(args: argparse.Namespace) -> None:
    require_writable_dir(Path(args.out), "output folder")


Check = Callable[[argparse.Namespace], None]
CHECKS: dict[str, tuple[Check, ...]] = {
    "ingest": (_ingest, _dask),
    "pull": (_catalog_target, _pacs_server, _dask),  # what else is wrong with the server, flows.pacs tells at once
    "reconstruct": (_written_catalog, _tracking, _dask, _model_files, _selection, _sampling, _device, _models),
    "train": (_train, _tracking, _device),
    "calibrate": (_read_catalog, _tracking, _model_files, _device, _models),
    "evaluate": (_read_catalog, _tracking, _selection),
    "demo": (_demo, _tracking, _device),
    "export": (_export,),
    "verify": (_read_catalog,),
    "info": (_read_catalog,),
    "split": (_split,),
    "migrate": (_migrate,),
    "example-cohort": (_example_cohort,),
}
"""The checks of each command, cheapest first (paths, stores and model files before the torch-loading selection,
device and checkpoint checks).
compare, ui and push (local commands that check their store or server first, at once) have none."""

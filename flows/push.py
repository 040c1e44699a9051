"""Push: a catalog's results stored on a PACS over DICOMweb.

    need push outputs/pacs.zarr http://pacs:8042/dicom-web --method need --dose 0.25 --split test

Each chosen study's result is exported as a derived DICOM CT series (storage.export: new UIDs, DERIVED image type,
pseudonymous patient whose PatientID is the study key) into a temporary folder, stored with STOW-RS, and checked
with QIDO-RS: the server must hold every instance. A server that cannot be used fails before anything is exported;
a study without results fails (ExportError) before anything is stored.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pydicom

from storage.dicomweb import DicomwebError, Pacs, connect
from storage.export import ExportedSeries, export_results


class PushFailed(DicomwebError):
    """The server did not end up holding every exported instance."""


@dataclass(frozen=True)
class PushedSeries:
    """One series stored on the server: which study, method and dose it holds, its UID and instance count."""

    study: str
    method: str
    dose: float | None
    series_uid: str
    instances: int
    slices: int
    total_slices: int


def push(
    catalog: str,
    url: str,
    method: str,
    dose: float | None,
    studies: list[str] | None = None,
    split: str | None = None,
) -> list[PushedSeries]:
    """Export `method` at `dose` of the chosen studies as DICOM series (storage.export) into a temporary folder,
    STOW-RS them to `url`, and confirm with QIDO-RS that the server holds every instance of each."""
    pacs = connect(url)
    pacs.check()  # an unusable server fails before any export work
    pushed: list[PushedSeries] = []
    with tempfile.TemporaryDirectory(prefix="need-push-") as scratch:
        for series in export_results(catalog, Path(scratch), method, dose, studies=studies, split=split, fmt="dicom"):
            try:
                pushed.append(store_series(pacs, series))
            except DicomwebError as err:
                if not pushed:
                    raise
                done = ", ".join(f"{item.study} ({item.series_uid})" for item in pushed)
                raise PushFailed(f"{err}; stored before this failure: {done}") from None
    return pushed


def store_series(pacs: Pacs, series: ExportedSeries) -> PushedSeries:
    """STOW-RS one exported series, then check that the server holds every instance of it."""
    pacs.store(series.files)
    header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    series_uid = str(header.SeriesInstanceUID)
    held = pacs.series_instances(str(header.StudyInstanceUID), series_uid)
    if held != len(series.files):
        raise PushFailed(
            f"{pacs.url} holds {held} of the {len(series.files)} instances stored for study {series.study} "
            f"({series.method}, dose {series.dose}) in series {series_uid}"
        )
    return PushedSeries(series.study, series.method, series.dose, series_uid, held, series.slices, series.total_slices)

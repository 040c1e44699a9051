"""A PACS round trip against a real Orthanc: pull a CT study over DICOMweb, reconstruct it with tiny models in the
pacs-round-trip flow, which pushes the NEED series back by STOW-RS; then Orthanc's own REST API shows the new series
with every instance, readable pixels, and the study key as the patient (never the source patient's ID)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from flows.cli import main
from flows.pacs import pacs_round_trip, pull
from storage.catalog import open_catalog
from tasks.quick_models import write_tiny_models
from tests.orthanc_server import orthanc, write_study  # noqa: F401 (orthanc: a fixture)

DOSE = 0.25


@pytest.mark.slow
def test_pull_reconstruct_push_round_trip(orthanc, head_ct_path, tmp_path, prefect_harness, dask_address, capsys):  # noqa: F811
    source = write_study(head_ct_path, tmp_path / "src", "ct", "PHI-ROUND-TRIP", {"axial": {"first_slice": 44}})
    orthanc.upload(tmp_path / "src")
    catalog = tmp_path / "pacs.zarr"
    pulled = pull(
        url=orthanc.dicomweb, catalog=str(catalog), study=source.study_uid, doses=(DOSE,), dask_address=dask_address
    )
    (key,) = pulled["studies"]
    spdiff, dgdiff = write_tiny_models(open_catalog(catalog).study_path(key), tmp_path / "models")
    before = set(orthanc.get("/series").json())

    result = pacs_round_trip(
        url=orthanc.dicomweb,
        catalog=str(catalog),
        spdiff=spdiff,
        dgdiff=dgdiff,
        doses=[DOSE],
        study=source.study_uid,
        chunk_slices=2,
        device="cpu",
        tracking=False,
        dask_address=dask_address,
    )
    assert result["pulled"]["already_ingested"] == [key] and result["reconstructed"] == {key: {DOSE: [0, 1, 2, 3]}}
    (pushed,) = result["pushed"]
    assert pushed["study"] == key and pushed["instances"] == 4

    (new,) = set(orthanc.get("/series").json()) - before
    series = orthanc.get(f"/series/{new}").json()
    assert series["MainDicomTags"]["SeriesInstanceUID"] == pushed["series_uid"] and len(series["Instances"]) == 4
    for instance in series["Instances"]:
        image = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{instance}/file").content))
        assert image.PatientID == key and "PHI-ROUND-TRIP" not in str(image.PatientName)
        assert "DERIVED" in image.ImageType and image.StudyInstanceUID != source.study_uid
        hu = image.pixel_array * float(image.RescaleSlope) + float(image.RescaleIntercept)
        assert hu.shape == (64, 64) and np.isfinite(hu).all() and hu.std() > 10  # an image, not a blank

    assert main(["push", str(catalog), orthanc.dicomweb, "--method", "fbp_ld", "--dose", str(DOSE)]) == 0
    printed = capsys.readouterr().out
    assert f"{key} fbp_ld dose 0.25: series " in printed and "4 instances stored on" in printed
    assert len(set(orthanc.get("/series").json()) - before) == 2

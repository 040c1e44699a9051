"""A real Orthanc (Debian `orthanc` + `orthanc-dicomweb`) on 127.0.0.1 for the PACS tests: a free HTTP port, no DICOM
port, storage in a temporary folder, HTTP basic auth required (user USER, password PASSWORD), DICOMweb at
/dicom-web. Started once per test module in ~0.1 s, killed at teardown.

    def test_x(orthanc):                  # the fixture, via `from tests.orthanc_server import orthanc`
        orthanc.upload(folder)             # POST /instances of every file in folder (REST API, not DICOMweb)
        pull(orthanc.dicomweb, ...)        # with NEED_DICOMWEB_USER/PASSWORD set by the fixture
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
import requests

from tests.system_tools import require_tool

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "need-test", "not-a-real-secret"
START_TIMEOUT_S = 20.0


@dataclass
class Orthanc:
    """A running Orthanc: its REST root `url`, DICOMweb root `dicomweb`, and an authenticated REST session."""

    url: str
    dicomweb: str
    session: requests.Session

    def upload(self, folder: Path) -> list[str]:
        """Store every file of `folder` through the REST API (POST /instances); return the Orthanc instance IDs."""
        ids = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            response = self.session.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
            response.raise_for_status()
            ids.append(response.json()["ID"])
        return ids

    def get(self, path: str) -> requests.Response:
        """GET a REST resource, failing on an HTTP error."""
        response = self.session.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """Orthanc with DICOMweb, its credentials in $NEED_DICOMWEB_USER / $NEED_DICOMWEB_PASSWORD for the module."""
    program = require_tool("Orthanc", "orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.fail(f"{DICOMWEB_PLUGIN} missing: run `apt-get install -y orthanc-dicomweb` (.ci/run does)")
    root = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    config = {
        "Name": "need-test",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("w")
    process = subprocess.Popen([program, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    patch = pytest.MonkeyPatch()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if session.get(f"{url}/system", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not start on port {port}: {(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.05)
        patch.setenv("NEED_DICOMWEB_USER", USER)
        patch.setenv("NEED_DICOMWEB_PASSWORD", PASSWORD)
        yield Orthanc(url, f"{url}/dicom-web", session)
    finally:
        patch.undo()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@dataclass
class PacsStudy:
    """A study written for the PACS tests: its StudyInstanceUID and its series UIDs by name."""

    study_uid: str
    series: dict[str, str]


def write_study(
    head_ct_path: Path,
    root: Path,
    name: str,
    patient_id: str,
    series: dict[str, dict],
    study_date: str = "20240105",
) -> PacsStudy:
    """Write one study of real 64x64 head-CT series under root/name/<series>/ (tests.cohort_fixtures.add_series
    options per series: first_slice, n_slices, image_type; plus modality and `small_slice`, an index whose slice is
    rewritten at 32x32), all with one StudyInstanceUID and `study_date`."""
    from pydicom.uid import generate_uid

    from tests.cohort_fixtures import add_series

    study_uid = generate_uid()
    uids = {}
    for series_name, options in series.items():
        options = dict(options)
        modality = options.pop("modality", "CT")
        small_slice = options.pop("small_slice", None)
        folder = add_series(head_ct_path, root / name, series_name, patient_id, **options)
        for index, path in enumerate(sorted(folder.iterdir(), key=lambda p: int(pydicom.dcmread(p).InstanceNumber))):
            image = pydicom.dcmread(path)
            image.StudyInstanceUID, image.StudyDate, image.Modality = study_uid, study_date, modality
            if index == small_slice:
                pixels = image.pixel_array[::2, ::2].copy()
                image.Rows = image.Columns = 32
                image.PixelData = pixels.tobytes()
            image.save_as(path, enforce_file_format=True)
            uids[series_name] = str(image.SeriesInstanceUID)
    return PacsStudy(study_uid, uids)

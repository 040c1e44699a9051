"""Screenshots for the README: reconstructions pushed by `need push` to a real Orthanc, opened in Orthanc's web
viewer and in Orthanc Explorer (headless Chromium).

    python docs/pacs_screenshots.py outputs/demo/head_ct.zarr --dose 0.25

Needs Debian's orthanc, orthanc-dicomweb, orthanc-webviewer and chromium. Orthanc runs on 127.0.0.1 with a
temporary storage folder and is stopped at the end; the PNGs go to docs/.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

PLUGINS = Path("/usr/share/orthanc/plugins")
DOCS = Path(__file__).resolve().parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_orthanc(root: Path) -> tuple[subprocess.Popen, str]:
    """Orthanc with DICOMweb and the web viewer on a free loopback port; returns the process and its URL."""
    port = free_port()
    config = {
        "Name": "need-docs",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so"), str(PLUGINS / "libOrthancWebViewer.so")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["Orthanc", str(root / "orthanc.json")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"{url}/system", timeout=1).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("Orthanc did not start")


def screenshot(url: str, out: Path, size: str = "1280,800", budget_ms: int = 15000) -> None:
    """A PNG of `url` once its scripts ran for `budget_ms` of virtual time."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("catalog")
    parser.add_argument("--dose", type=float, default=0.25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_orthanc(Path(tmp))
        try:
            for method in ("fbp_ld", "need"):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "flows.cli",
                        "push",
                        args.catalog,
                        f"{url}/dicom-web",
                        "--method",
                        method,
                        "--dose",
                        str(args.dose),
                    ],
                    check=True,
                )
            series = requests.get(f"{url}/series?expand", timeout=10).json()
            by_method = {}
            for item in series:
                description = item["MainDicomTags"].get("SeriesDescription", "")
                by_method["need" if description.startswith("NEED") else "fbp_ld"] = item
            study = by_method["need"]["ParentStudy"]
            screenshot(f"{url}/app/explorer.html#study?uuid={study}", DOCS / "pacs_orthanc_study.png", "1280,700")
            for method, item in by_method.items():
                middle = item["Instances"][len(item["Instances"]) // 2]
                screenshot(
                    f"{url}/web-viewer/app/viewer.html?series={item['ID']}&instance={middle}",
                    DOCS / f"pacs_viewer_{method}.png",
                    "900,700",
                )
        finally:
            process.terminate()
            process.wait(timeout=20)


if __name__ == "__main__":
    main()

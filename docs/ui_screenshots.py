"""Screenshots for the README of what a demo leaves in the two UIs (headless Chromium through Playwright): MLflow's
runs table of the demo's per-method runs grouped by method, and a Prefect flow run's artifacts.

    prefect server start --host 127.0.0.1 --port 4200 &          # a Prefect server that outlives the demo
    PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db need demo
    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db python docs/ui_screenshots.py --prefect http://127.0.0.1:4200

Needs Debian's chromium and `pip install playwright` (its own browser download is not needed). The MLflow UI is
started here on a free loopback port and stopped at the end; the PNGs go to docs/.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python docs/X.py` puts only docs/ on the path

from flows.tracking.store import checked_uri  # noqa: E402 (path set above)
from flows.tracking.ui import runs_table_url, served_ui  # noqa: E402

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1600, "height": 900}
METHOD_RUNS = "tags.`need.run_kind` = 'demo-method'"
COLUMN_TOGGLES = ("Dataset", "Source", "Models", "psnr", "psnr_std", "ssim", "rmse_hu", "dose", "n_slices")
"""Columns switched in the runs table: the default attribute columns off, the method runs' metrics and params on."""
LOAD_TIMEOUT_MS = 90_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mlflow_runs_by_method(page: Page, url: str, out: Path) -> Path:
    """The demo's method runs (one per dose and method) grouped by the `need.method` tag, with PSNR (± std), SSIM,
    RMSE, dose and slice-count columns."""
    page.goto(url)
    page.get_by_text("Group by").first.wait_for(timeout=LOAD_TIMEOUT_MS)
    assistant = page.get_by_role("button", name="Close")
    if assistant.count():
        assistant.first.click()
    search = page.get_by_placeholder("metrics.rmse", exact=False).first
    search.fill(METHOD_RUNS)
    search.press("Enter")
    page.wait_for_timeout(3000)
    page.get_by_text("Columns").first.click()
    for name in COLUMN_TOGGLES:
        page.get_by_placeholder("Search columns").fill(name)
        page.wait_for_timeout(700)
        page.locator(".du-bois-light-tree-treenode").filter(has_text=re.compile(rf"^{name}$")).first.click()
    page.keyboard.press("Escape")
    page.get_by_text("Group by").first.click()
    page.get_by_placeholder("Search").last.fill("need.method")
    page.wait_for_timeout(700)
    page.get_by_text("need.method", exact=True).last.click()
    page.keyboard.press("Escape")
    page.wait_for_timeout(3000)
    page.screenshot(path=str(out))
    return out


def newest_flow_run(api: str, name_like: str) -> dict[str, Any]:
    """The newest flow run whose name contains `name_like`, from the Prefect API."""
    body = {"flow_runs": {"name": {"like_": name_like}}, "sort": "START_TIME_DESC", "limit": 1}
    found = requests.post(f"{api}/flow_runs/filter", json=body, timeout=30).json()
    if not found:
        raise SystemExit(f"no flow run named like {name_like!r} on {api}: run the demo against that server first")
    return dict(found[0])


def prefect_artifacts(page: Page, ui: str, out_run: Path, out_table: Path) -> list[Path]:
    """The reconstruct flow run's artifacts tab, and its quality table artifact opened."""
    api = f"{ui.rstrip('/')}/api"
    run = newest_flow_run(api, "reconstruct head_ct")
    page.goto(f"{ui}/runs/flow-run/{run['id']}")
    page.get_by_text("Artifacts", exact=True).first.click(timeout=LOAD_TIMEOUT_MS)
    page.wait_for_timeout(5000)
    page.screenshot(path=str(out_run))
    body = {"artifacts": {"flow_run_id": {"any_": [run["id"]]}, "type": {"any_": ["markdown"]}}}
    artifacts = requests.post(f"{api}/artifacts/filter", json=body, timeout=30).json()
    quality = next((a for a in artifacts if "quality" in (a.get("key") or "")), artifacts[0])
    page.goto(f"{ui}/artifacts/artifact/{quality['id']}")
    page.wait_for_timeout(6000)
    page.screenshot(path=str(out_table), full_page=True)
    return [out_run, out_table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="need-demo")
    parser.add_argument("--prefect", default="http://127.0.0.1:4200", help="the Prefect server's UI address")
    args = parser.parse_args()
    uri, port = checked_uri(), free_port()
    with served_ui(uri, port), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport=VIEWPORT)
        shots = [mlflow_runs_by_method(page, runs_table_url(uri, port, args.experiment), DOCS / "mlflow_runs.png")]
        shots += prefect_artifacts(
            page, args.prefect.rstrip("/"), DOCS / "prefect_flow_run.png", DOCS / "prefect_quality.png"
        )
        browser.close()
    for shot in shots:
        print(shot)


if __name__ == "__main__":
    main()

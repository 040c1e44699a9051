"""A deployment from prefect.yaml runs end to end: deploy, trigger, a process worker picks it up, the archive
appears."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from storage.archive import open_archive
from tests.pipeline_fixtures import SMALL_SPACING, write_small_head_npy

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def prefect(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the prefect CLI from the repository root against the test API (PREFECT_API_URL is inherited)."""
    result = subprocess.run(
        ["prefect", "--no-prompt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PWD": str(ROOT)},
    )
    assert result.returncode == 0, f"prefect {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_ingest_deployment_runs_on_a_process_worker(prefect_harness, head_ct_path, tmp_path):
    source = write_small_head_npy(head_ct_path, tmp_path, n_slices=4)
    archive = tmp_path / "deployed.zarr"
    prefect("work-pool", "create", "need-process", "--type", "process", "--overwrite")
    prefect("deploy", "--name", "ingest-head-ct")
    params = {
        "source": source,
        "archive": str(archive),
        "doses": [0.25],
        "chunk_slices": 2,
        "spacing_mm": SMALL_SPACING,
    }
    prefect("deployment", "run", "ingest/ingest-head-ct", "--params", json.dumps(params))
    prefect("worker", "start", "--pool", "need-process", "--run-once", timeout=500)
    store = open_archive(archive)
    assert store.todo("ingest") == [] and store.todo("ingest_ld", dose=0.25) == []

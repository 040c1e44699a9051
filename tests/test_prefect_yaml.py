"""prefect.yaml loads, every entrypoint imports, each deployment's parameters fit its flow's signature (names and
types), and the nightly jobs are scheduled."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]
BY_NAME = {d["name"]: d for d in DEPLOYMENTS}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_match_the_flow(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    parameters = deployment.get("parameters", {})
    unknown = set(parameters) - set(signature.parameters)
    assert not unknown, f"{deployment['name']}: parameters {unknown} are not arguments of {flow.name}"
    required = {name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    missing = required - set(parameters)
    assert not missing, f"{deployment['name']}: required flow arguments {missing} have no value"
    flow.validate_parameters(parameters)  # the types a worker would check before the run starts
    assert deployment["work_pool"]["name"] == "need-process"
    for schedule in deployment.get("schedules", []):
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])


def test_every_flow_has_a_deployment_and_the_nightly_jobs_are_scheduled():
    entrypoints = {d["entrypoint"] for d in DEPLOYMENTS}
    assert {
        "flows/ingest.py:ingest",
        "flows/train.py:train",
        "flows/reconstruct.py:reconstruct",
        "flows/evaluate.py:evaluate",
        "flows/nightly.py:nightly",
        "flows/pacs.py:pacs_round_trip",
    } <= entrypoints
    for name, cron in (
        ("reconstruct-nightly", "0 2 * * *"),
        ("cohort-nightly", "0 1 * * *"),
        ("pacs-nightly", "0 3 * * *"),
    ):
        (schedule,) = BY_NAME[name]["schedules"]
        assert schedule["cron"] == cron and schedule["active"] and schedule["timezone"] == "UTC"


def test_cohort_nightly_feeds_its_own_catalog_with_the_champion_models():
    parameters = BY_NAME["cohort-nightly"]["parameters"]
    assert parameters["drop_folder"] == "data/incoming" and parameters["catalog"] == "outputs/cohort.zarr"
    assert parameters["catalog"] not in {
        d.get("parameters", {}).get("catalog") for d in DEPLOYMENTS if d["name"] != "cohort-nightly"
    }
    assert parameters["spdiff"] == "models:/need-spdiff@champion"
    assert parameters["dgdiff"] == "models:/need-dgdiff@champion"


def test_pacs_nightly_pulls_the_last_day_into_its_own_catalog_and_pushes_need():
    parameters = BY_NAME["pacs-nightly"]["parameters"]
    assert parameters["url"].endswith("/dicom-web") and parameters["lookback_days"] == 1
    assert parameters["catalog"] == "outputs/pacs.zarr" and parameters["method"] == "need"
    assert parameters["catalog"] not in {
        d.get("parameters", {}).get("catalog") for d in DEPLOYMENTS if d["name"] != "pacs-nightly"
    }
    assert "password" not in str(parameters).lower()  # credentials come from the worker's environment
    assert parameters["spdiff"] == "models:/need-spdiff@champion"
    assert parameters["dgdiff"] == "models:/need-dgdiff@champion"

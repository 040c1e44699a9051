"""prefect.yaml loads, every entrypoint imports, and each deployment's parameters fit its flow's signature."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = CONFIG["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_entrypoint_imports_and_parameters_match_the_flow(deployment, monkeypatch):
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    unknown = set(deployment.get("parameters", {})) - set(signature.parameters)
    assert not unknown, f"{deployment['name']}: parameters {unknown} are not arguments of {flow.name}"
    required = {name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    missing = required - set(deployment.get("parameters", {}))
    assert not missing, f"{deployment['name']}: required flow arguments {missing} have no value"
    assert deployment["work_pool"]["name"] == "need-process"


def test_reconstruct_runs_nightly_and_every_flow_has_a_deployment():
    by_entrypoint = {d["entrypoint"].split(":")[0]: d for d in DEPLOYMENTS}
    assert {"flows/ingest.py", "flows/train.py", "flows/reconstruct.py", "flows/evaluate.py"} <= set(by_entrypoint)
    (schedule,) = by_entrypoint["flows/reconstruct.py"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"]

"""Shared test settings: a project-local Prefect home, quiet servers, and the bundled real head CT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One state folder per pytest-xdist worker ("main" without xdist): workers never share a SQLite store or a Prefect home.
_TEST_STATE = Path(__file__).resolve().parent.parent / ".pytest-state" / os.environ.get("PYTEST_XDIST_WORKER", "main")
_TEST_STATE.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("PREFECT_HOME", str(_TEST_STATE / "prefect"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Tests use tiny tensors while Dask workers share the cores: one BLAS/OpenMP thread per process avoids
# oversubscription, where spinning threads make tiny models run 10-100x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{_TEST_STATE / 'mlflow.db'}")

torch.set_num_threads(1)

BUNDLED_HEAD_CT = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


@pytest.fixture(scope="session")
def head_ct_path() -> Path:
    """The real head CT from Debian's invesalius-examples (installed by .ci/run)."""
    if not BUNDLED_HEAD_CT.is_file():
        pytest.fail(f"bundled head CT missing at {BUNDLED_HEAD_CT}: run `apt-get install -y invesalius-examples`")
    return BUNDLED_HEAD_CT


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (~20 s), shared by every flow test."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # Dask workers started later report here too
        yield
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def dask_address(prefect_harness):
    """One warm two-process Dask cluster for the session; flows reach it by address, as on a real cluster."""
    from distributed import LocalCluster

    from tasks.runner import LOCAL_CLUSTER

    with LocalCluster(n_workers=2, **LOCAL_CLUSTER) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def tracking_store(tmp_path_factory):
    """A SQLite MLflow store and model cache in a temp dir, for one test module (creating tables takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        uri = f"sqlite:///{root / 'mlflow.db'}"
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("NEED_MODEL_CACHE", str(root / "cache"))
        yield uri

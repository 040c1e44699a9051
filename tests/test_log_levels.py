"""flows.log_levels: Dask, distributed and Prefect internals at WARNING by default, everything at INFO with
--verbose, the flows' own messages at INFO either way; an environment that already chose a level keeps it."""

from __future__ import annotations

import logging
import os

import pytest

from flows.log_levels import QUIET_LEVELS, quiet_logging


@pytest.fixture
def clean_levels():
    """No level chosen in the environment; the environment and the governed loggers' levels restored afterwards."""
    environment = dict(os.environ)
    for variable in QUIET_LEVELS:
        os.environ.pop(variable, None)
    names = [name for _, loggers in QUIET_LEVELS.values() for name in loggers]
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    os.environ.clear()
    os.environ.update(environment)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def test_quiet_by_default_for_this_process_and_the_processes_it_starts(clean_levels):
    quiet_logging(verbose=False)
    assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "WARNING"  # read by Dask workers as they start
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "WARNING"  # read by Prefect at import, here and in workers
    assert logging.getLogger("distributed.scheduler").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("prefect.task_runner.dask").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("prefect.task_runs").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("prefect.flow_runs").getEffectiveLevel() == logging.INFO
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"  # read by MLflow as it configures its loggers at import
    assert logging.getLogger("mlflow.store.db.utils").getEffectiveLevel() == logging.WARNING  # "Creating tables..."


def test_verbose_lets_everything_through_at_info(clean_levels):
    quiet_logging(verbose=True)
    for name in ("distributed.nanny", "prefect", "prefect.task_runs", "uvicorn"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.INFO, name


def test_a_level_the_environment_already_chose_is_kept(clean_levels):
    os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"
    quiet_logging(verbose=False)
    assert logging.getLogger("prefect").getEffectiveLevel() == logging.DEBUG

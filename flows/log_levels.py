"""How much a `need` command prints: by default Dask, distributed and Prefect's own machinery only speaks at WARNING
(start-up banners, per-worker and per-task state lines, the temporary server), while the flows' own messages (plans,
per-stage summaries, warnings about the data) stay at INFO; `--verbose` lets everything through at INFO.

Levels are set twice: as environment variables, which Prefect reads when it is imported, Dask when its config loads,
and every child process (Prefect server, Dask workers) inherits; and on the loggers of this process, for libraries
already imported. Call `quiet_logging` first, before any command imports Prefect or starts a server. Without
--verbose a level already set in the environment wins (PREFECT_LOGGING_LEVEL=DEBUG need ... still debugs).
"""

from __future__ import annotations

import logging
import os

QUIET_LEVELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PREFECT_LOGGING_LEVEL": ("WARNING", ("prefect", "prefect.extra", "prefect.client", "prefect.infrastructure")),
    "PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL": ("WARNING", ("prefect.task_runs",)),
    "PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL": ("INFO", ("prefect.flow_runs",)),
    "PREFECT_SERVER_LOGGING_LEVEL": ("WARNING", ("prefect.server", "uvicorn", "fastapi")),
    "DASK_LOGGING__DISTRIBUTED": ("WARNING", ("distributed",)),
    "MLFLOW_LOGGING_LEVEL": ("WARNING", ("mlflow",)),
    "NEED_LOGGING_ALEMBIC": ("WARNING", ("alembic",)),
}
"""Environment variable -> (quiet level, the loggers it governs). Flow runs stay at INFO: their messages are the
flows' own. NEED_LOGGING_ALEMBIC is this project's (MLflow's database migrations log through alembic)."""
VERBOSE_LEVEL = "INFO"


def quiet_logging(verbose: bool) -> None:
    """Set the internals' log levels for this process and the servers and workers it will start: WARNING (unless
    the environment already says otherwise), or INFO for everything with `verbose`."""
    for variable, (quiet, loggers) in QUIET_LEVELS.items():
        if verbose:
            os.environ[variable] = VERBOSE_LEVEL
        else:
            os.environ.setdefault(variable, quiet)
        level = os.environ[variable].upper()
        for name in loggers:
            logging.getLogger(name).setLevel(level)

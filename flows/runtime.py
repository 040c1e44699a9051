"""Process-level setup for running flows locally: one Prefect API that the flow and its Dask workers share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging.handlers import APILogHandler
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)


@contextmanager
def shared_prefect_api() -> Iterator[str | None]:
    """Use the configured Prefect API, or start one local server and point this process and its children at it.

    Without this, each Dask worker process would start its own temporary Prefect server (seconds of start-up
    and a separate database per worker, so task runs would not show up with their flow run).
    """
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        APILogHandler().flush()  # send queued run logs while the server still listens
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()

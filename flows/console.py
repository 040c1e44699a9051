"""What the terminal shows of a failing flow run: `need` ends with one line naming the error and its fix, so the
engine's own copy of it (the traceback of "Encountered exception during execution", and "Finished in state
Failed(...)") is kept off the console unless --verbose. Prefect's UI still receives both (its API handler sits on
the flow-run logger itself, before the records reach the console handler on the root logger)."""

from __future__ import annotations

import logging

ENGINE_LOGGER = "prefect.flow_runs"
ENGINE_ERROR_STARTS = ("Encountered exception during execution", "Finished in state Failed")


class EngineErrorFilter(logging.Filter):
    """Drops the flow engine's records of a flow's exception; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(ENGINE_LOGGER):
            return True
        return not str(record.msg).startswith(ENGINE_ERROR_STARTS)


def keep_engine_errors_off_the_console(verbose: bool) -> None:
    """Install EngineErrorFilter on the console handlers Prefect's logging set up (call after Prefect is imported);
    with `verbose` nothing is filtered."""
    if verbose:
        return
    import prefect.main  # noqa: F401 (importing it configures Prefect's logging, handlers included)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, EngineErrorFilter) for f in handler.filters
        ):
            handler.addFilter(EngineErrorFilter())

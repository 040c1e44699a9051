"""The terminal keeps the flow engine's copy of a flow's exception (its traceback, "Finished in state Failed") off
the console unless --verbose: `need` prints the error once, as one line."""

from __future__ import annotations

import logging

from flows.console import EngineErrorFilter, keep_engine_errors_off_the_console


def engine_record(message: str, name: str = "prefect.flow_runs") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, message, (), None)


def test_the_engine_copies_of_a_flow_exception_are_dropped_and_nothing_else():
    keep = EngineErrorFilter().filter
    assert not keep(engine_record("Encountered exception during execution: %r"))
    assert not keep(engine_record("Finished in state Failed('Flow run encountered an exception')"))
    assert keep(engine_record("Finished in state Completed()"))
    assert keep(engine_record("chunk s dose 0.1 slices 0-1: 2 done, 0 failed"))
    assert keep(engine_record("Encountered exception during execution: %r", name="distributed.worker"))


def test_the_filter_sits_on_prefects_console_handler_only_without_verbose():
    import prefect.main  # noqa: F401 (configures Prefect's logging)

    keep_engine_errors_off_the_console(verbose=True)
    consoles = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    assert consoles and not any(isinstance(f, EngineErrorFilter) for h in consoles for f in h.filters)
    keep_engine_errors_off_the_console(verbose=False)
    keep_engine_errors_off_the_console(verbose=False)  # once per handler, however often it is called
    assert all(sum(isinstance(f, EngineErrorFilter) for f in h.filters) == 1 for h in consoles)
    api = logging.getLogger("prefect.flow_runs").handlers
    assert api and not any(isinstance(f, EngineErrorFilter) for h in api for f in h.filters)  # the UI keeps them
    for handler in consoles:
        handler.filters = [f for f in handler.filters if not isinstance(f, EngineErrorFilter)]

"""The terminal keeps the flow engine's copy of a flow's exception (its traceback, "Finished in state Failed") and
the flows' UI-only lines (per chunk) off the console unless --verbose: `need` prints the error once, as one line."""

from __future__ import annotations

import logging

from flows.console import UI_ONLY, ConsoleFilter, quiet_console


def engine_record(message: str, name: str = "prefect.flow_runs", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_the_engine_copies_of_a_flow_exception_are_dropped_and_other_lines_kept():
    keep = ConsoleFilter().filter
    assert not keep(engine_record("Encountered exception during execution: %r"))
    assert not keep(engine_record("Finished in state Failed('Flow run encountered an exception')"))
    assert keep(engine_record("Finished in state Completed()"))
    assert keep(engine_record("chunk s dose 0.1 slices 0-1: 2 done, 0 failed"))
    assert keep(engine_record("Encountered exception during execution: %r", name="distributed.worker"))


def test_the_nannys_kill_of_a_worker_slow_to_exit_at_close_is_dropped_and_its_other_warnings_kept():
    keep = ConsoleFilter().filter
    assert not keep(engine_record("Worker process still alive after %.1f seconds, killing", name="distributed.nanny"))
    assert keep(engine_record("Restarting worker", name="distributed.nanny"))


def test_ui_only_records_are_dropped_whatever_their_logger():
    keep = ConsoleFilter().filter
    assert not keep(engine_record("chunk s dose 0.1 slices 0-1: 2 done, 0 failed", **UI_ONLY))
    assert not keep(engine_record("anything", name="flows.reconstruct", **UI_ONLY))
    assert keep(engine_record("1 studies, 2 chunks, 4 slice-doses to do"))


def test_the_filter_sits_on_prefects_console_handler_only_without_verbose():
    import prefect.main  # noqa: F401 (configures Prefect's logging)

    quiet_console(verbose=True)
    consoles = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    assert consoles and not any(isinstance(f, ConsoleFilter) for h in consoles for f in h.filters)
    quiet_console(verbose=False)
    quiet_console(verbose=False)  # once per handler, however often it is called
    assert all(sum(isinstance(f, ConsoleFilter) for f in h.filters) == 1 for h in consoles)
    api = logging.getLogger("prefect.flow_runs").handlers
    assert api and not any(isinstance(f, ConsoleFilter) for h in api for f in h.filters)  # the UI keeps them
    for handler in consoles:
        handler.filters = [f for f in handler.filters if not isinstance(f, ConsoleFilter)]

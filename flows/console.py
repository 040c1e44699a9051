"""What the terminal shows of a flow run, unless --verbose: a failing `need` command ends with one line naming the
error and its fix, so the engine's own copy of it (the traceback of "Encountered exception during execution", and
"Finished in state Failed(...)") is kept off the console; so are the nanny's kills of workers slow to exit when
a finished cluster closes, and records the flows mark UI_ONLY (per-chunk lines, which a per-slice progress bar
already shows). Prefect's UI still receives the flows' records (its API handler sits on the flow-run logger itself,
before the records reach the console handler on the root logger)."""

from __future__ import annotations

import logging

DROPPED_STARTS = {
    "prefect.flow_runs": ("Encountered exception during execution", "Finished in state Failed"),
    "distributed.nanny": ("Worker process still alive after",),
}
"""Logger -> starts of its messages kept off the console: the engine's copies of a flow's exception, and the nanny
killing a worker that was slow to exit when the command closed its finished cluster (on a busy CPU it exits after
the nanny's 4 s; nothing is lost, the tasks are all done)."""
UI_ONLY = {"need_ui_only": True}
"""`extra=` of a log record meant for Prefect's UI and --verbose, not the default console."""


class ConsoleFilter(logging.Filter):
    """Drops records logged with UI_ONLY and the DROPPED_STARTS messages of their loggers; the rest passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "need_ui_only", False):
            return False
        starts = next((v for name, v in DROPPED_STARTS.items() if record.name.startswith(name)), ())
        return not str(record.msg).startswith(starts)


def quiet_console(verbose: bool) -> None:
    """Install ConsoleFilter on the console handlers Prefect's logging set up (call after Prefect is imported);
    with `verbose` nothing is filtered."""
    if verbose:
        return
    import prefect.main  # noqa: F401 (importing it configures Prefect's logging, handlers included)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, ConsoleFilter) for f in handler.filters
        ):
            handler.addFilter(ConsoleFilter())

"""`need` subcommands for export (filled in by the DICOM issue #15)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}  # run inside the Prefect API
LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}  # no Prefect API needed


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to `need`."""

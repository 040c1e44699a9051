"""Checks of a command's arguments, paths, checkpoints and stores that need no server, run before Prefect or Dask
start, so a mistake is reported in a second instead of after half a minute of start-up."""

from __future__ import annotations

import argparse


def check_before_start(args: argparse.Namespace) -> None:
    """Raise ValueError / FileNotFoundError naming the first problem of `args` that can be seen without servers."""

"""The options and argument parsers the `need` subcommands share: doses, slices, spacing, study keys, the study
selection and the tracking switches."""

from __future__ import annotations

import argparse

from need_core.doses import validate_doses


def parse_doses(text: str) -> list[float]:
    """'0.5,0.25' -> [0.5, 0.25], checked by need_core's one dose rule, with a clear error for anything else."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"doses must be comma-separated fractions like 0.5,0.25; got {text!r}"
        ) from err
    try:
        return validate_doses(values)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def parse_spacing(text: str) -> list[float]:
    """'1.5,0.96,0.96' -> [1.5, 0.96, 0.96] (mm)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"spacing must be DZ,DY,DX in mm; got {text!r}") from err
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"spacing must have three values DZ,DY,DX; got {text!r}")
    return values


def parse_slices(text: str) -> list[int]:
    """'0-39,70-105' -> [0, 1, ..., 39, 70, ..., 105]."""
    slices: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            first, _, last = part.partition("-")
            slices.extend(range(int(first), int(last or first) + 1))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"slices must look like 0-39,70-105; got {text!r}") from err
    return slices


def parse_keys(text: str) -> list[str]:
    """'study-a,study-b' -> ['study-a', 'study-b']."""
    keys = [part.strip() for part in text.split(",") if part.strip()]
    if not keys:
        raise argparse.ArgumentTypeError(f"expected comma-separated study keys, got {text!r}")
    return keys


def add_study_options(command: argparse.ArgumentParser) -> None:
    """--split and --studies: which studies of a catalog a command processes (default every ingested study)."""
    chosen = command.add_mutually_exclusive_group()
    chosen.add_argument("--split", choices=("train", "val", "test"), default=None, help="only the studies of a split")
    chosen.add_argument("--studies", type=parse_keys, default=None, metavar="K1,K2", help="only these studies")


def add_tracking_options(command: argparse.ArgumentParser) -> None:
    """--experiment and --no-tracking, shared by every command that logs to MLflow."""
    command.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment (default need-<archive name>); store: $MLFLOW_TRACKING_URI or ./mlflow.db",
    )
    command.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_false",
        help="run without MLflow (otherwise an unusable tracking store stops the run before any compute)",
    )


def add_model_options(command: argparse.ArgumentParser) -> None:
    """--spdiff and --dgdiff: the two models of a NEED command, each defaulting to flows.models.default_model."""
    for kind, label in (("spdiff", "SPDiff"), ("dgdiff", "DGDiff")):
        command.add_argument(
            f"--{kind}",
            default=None,
            metavar="REF",
            help=f"{label} checkpoint: a path, models:/need-{kind}/VERSION or models:/need-{kind}@ALIAS (default: "
            f"models:/need-{kind}@champion when the tracking store has one, else the shipped weights)",
        )

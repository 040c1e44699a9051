"""`need register`: a checkpoint file as a registered MLflow model version (flows.registration), with a description,
a signature and, when its model has none yet or when asked, the `@champion` alias the deployments use."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}  # run inside the Prefect API
KINDS = ("spdiff", "dgdiff", "redcnn")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to `need`."""
    register = commands.add_parser(
        "register",
        help="register a checkpoint as a version of need-spdiff / need-dgdiff / need-redcnn in MLflow",
        description="Register CHECKPOINT as a new version of need-<KIND> in the tracking store ($MLFLOW_TRACKING_URI, "
        "else ./mlflow.db): an MLflow model with the checkpoint file, a signature and a description (profile, steps, "
        "training data, digest). A file registered before is not registered again. The version becomes @champion "
        "when need-<KIND> has no champion; an existing champion moves only with --alias champion.",
    )
    register.add_argument("checkpoint", metavar="CHECKPOINT", type=Path)
    register.add_argument("--kind", choices=KINDS, default=None, help="the model kind (default: read from the file)")
    register.add_argument("--alias", default=None, help="point this alias at the version (e.g. champion: moves it)")
    register.add_argument("--description", default="", help="text added to the version's description")
    register.add_argument("--experiment", default=None, help="MLflow experiment of the registration run (need-models)")


def run_register(args: argparse.Namespace) -> None:
    """Register and print one line: the version, whether it is new, and where the aliases point."""
    from mlflow.exceptions import MlflowException

    from flows.registration import REGISTER_EXPERIMENT, model_card_summary, register_model_file
    from flows.tracking.store import open_tracker

    kind = args.kind or _kind_of(args.checkpoint)
    tracker = open_tracker(True, args.experiment or REGISTER_EXPERIMENT)
    assert tracker is not None  # tracking is enabled: open_tracker returns a tracker or raises
    card = model_card_summary(args.checkpoint.name, args.checkpoint.parent / "MODEL_CARD.md")  # shipped weights
    description = "\n".join(text for text in (args.description, card) if text)
    profile = "cpu" if card else ""  # the model card describes the `cpu`-profile weights only
    try:
        registration = register_model_file(tracker, args.checkpoint, kind, args.alias, description, profile)
    except MlflowException as err:  # e.g. an alias MLflow reserves (`latest`, `v1`): one line, not a traceback
        raise ValueError(f"the tracking store refused it: {err.message}") from err
    print(registration.describe(args.alias))
    print(f"use it as models:/{registration.name}/{registration.version} (tracking store {tracker.uri})")


def _kind_of(checkpoint: Path) -> str:
    """The kind a NEED checkpoint records (the registration then checks the file fully)."""
    import torch

    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    try:
        kind = torch.load(checkpoint, map_location="cpu", weights_only=True).get("kind")
    except Exception as err:  # torch raises many types for truncated or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{checkpoint} is not a readable NEED checkpoint ({first})") from err
    if kind not in KINDS:
        raise ValueError(f"{checkpoint} records no model kind of {KINDS}: name one with --kind")
    return str(kind)


LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {"register": run_register}  # no Prefect API needed

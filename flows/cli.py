"""`need`: the command line over the flows (ingest, info, train, reconstruct, evaluate, compare, ui, demo).
Every subcommand has --help."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tasks.chunking import DEFAULT_CHUNK_SLICES


def parse_doses(text: str) -> list[float]:
    """'0.5,0.25' -> [0.5, 0.25], checked by need_core's one dose rule, with a clear error for anything else."""
    from need_core.physics.validation import validate_doses  # imported when used: it loads torch

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="need", description="NEED low-dose CT reconstruction over whole datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        help="read a CT volume and write an archive with simulated doses",
        description="Read SRC (DICOM folder, .inv3, .nii[.gz], .npy), simulate normal-dose and "
        "low-dose scans, reconstruct the normal-dose image, and write the Zarr archive ARCHIVE.",
    )
    ingest.add_argument("source", metavar="SRC")
    ingest.add_argument("archive", metavar="ARCHIVE")
    ingest.add_argument(
        "--doses", type=parse_doses, default=[0.5, 0.25, 0.1, 0.05], help="dose fractions (default 0.5,0.25,0.1,0.05)"
    )
    ingest.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    ingest.add_argument("--chunk-slices", type=int, default=8, help="slices per task (default 8)")
    ingest.add_argument(
        "--spacing",
        type=parse_spacing,
        default=None,
        metavar="DZ,DY,DX",
        help="voxel spacing in mm, for sources that lack it (.npy)",
    )
    ingest.add_argument("--overwrite", action="store_true", help="replace an archive made with other settings")
    ingest.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    ingest.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")

    recon = commands.add_parser(
        "reconstruct",
        help="reconstruct an archive with NEED at each dose",
        description="Run SPDiff -> FBP -> DGDiff on every slice of ARCHIVE that is not done yet "
        "(pending, failed, or made by other models/settings) at each dose, and write the "
        "results back. Reruns only touch what is not done.",
    )
    recon.add_argument("archive", metavar="ARCHIVE")
    recon.add_argument(
        "--doses", type=parse_doses, required=True, help="dose fractions held by the archive, e.g. 0.25,0.1"
    )
    recon.add_argument(
        "--spdiff",
        required=True,
        metavar="REF",
        help="SPDiff checkpoint: a path, models:/need-spdiff/VERSION or models:/need-spdiff@ALIAS",
    )
    recon.add_argument(
        "--dgdiff",
        required=True,
        metavar="REF",
        help="DGDiff checkpoint: a path, models:/need-dgdiff/VERSION or models:/need-dgdiff@ALIAS",
    )
    recon.add_argument(
        "--chunk-slices",
        type=int,
        default=DEFAULT_CHUNK_SLICES,
        help=f"slices per task, on a fixed grid; shapes results (default {DEFAULT_CHUNK_SLICES})",
    )
    recon.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    recon.add_argument("--seed", type=int, default=0)
    recon.add_argument("--write-projections", action="store_true", help="also store the SPDiff-denoised projections")
    recon.add_argument(
        "--slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="only these slices (default: every slice); neighbours are still read as context",
    )
    recon.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    recon.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")
    add_tracking_options(recon)

    train = commands.add_parser(
        "train",
        help="train SPDiff or DGDiff on an archive's normal-dose data, or RED-CNN",
        description="Train SPDiff or DGDiff on the normal-dose data of ARCHIVE only (proj_nd for "
        "SPDiff, fbp_nd for DGDiff), or the supervised RED-CNN baseline on the FBP of ARCHIVE's "
        "low-dose scans at --train-dose paired with fbp_nd; validate on held-out slices with "
        "freshly simulated noise, log to MLflow and register the model (need-spdiff / "
        "need-dgdiff / need-redcnn) with a new version.",
    )
    train.add_argument("archive", metavar="ARCHIVE")
    train.add_argument("--model", choices=("spdiff", "dgdiff", "redcnn"), required=True)
    train.add_argument("--profile", choices=("tiny", "cpu", "paper"), default="cpu", help="network size (default cpu)")
    train.add_argument("--steps", type=int, default=2000, help="total training steps (default 2000)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint and its MLflow run up to --steps")
    train.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (default models/<archive>_<model>_<profile>.pt next to the archive; "
        "<model> is e.g. redcnn_25 for RED-CNN at dose 0.25)",
    )
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=None, help="default 8 (spdiff, dgdiff), 16 (redcnn)")
    train.add_argument(
        "--train-dose",
        type=float,
        default=None,
        help="redcnn only: dose fraction of the low-dose inputs, one of the archive's doses (default 0.25)",
    )
    train.add_argument("--validate-every", type=int, default=None, help="steps between validations (default steps/10)")
    train.add_argument(
        "--train-slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="training slices (default: the bundled head CT's split, else every slice)",
    )
    train.add_argument(
        "--validation-slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="validation slices (default: held-out slices of the head CT, else the middle three)",
    )
    add_tracking_options(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score stored results and log them to MLflow",
        description="Compute PSNR/SSIM/RMSE of LDCT FBP, SPDiff->FBP and NEED against the "
        "normal-dose image from the archive, print them and log them (again) to MLflow.",
    )
    evaluate.add_argument("archive", metavar="ARCHIVE")
    evaluate.add_argument(
        "--doses", type=parse_doses, default=None, help="dose fractions (default: every reconstructed dose)"
    )
    evaluate.add_argument(
        "--slices", type=parse_slices, default=None, metavar="A-B,C", help="slices (default: all done)"
    )
    add_tracking_options(evaluate)

    compare = commands.add_parser(
        "compare",
        help="table of image quality by dose, method and model from MLflow",
        description="Print PSNR/SSIM/RMSE per dose and method, with model versions, of the "
        "reconstruct and evaluate runs in the tracking store.",
    )
    compare.add_argument("--experiment", default=None, help="one experiment (default: all)")

    ui = commands.add_parser(
        "ui",
        help="start the MLflow UI on 127.0.0.1 for the tracking store",
        description="Serve the MLflow UI of $MLFLOW_TRACKING_URI (default ./mlflow.db) on 127.0.0.1.",
    )
    ui.add_argument("--port", type=int, default=5000)

    info = commands.add_parser(
        "info", help="describe an archive", description="Print dims, doses, geometry and ledger summary."
    )
    info.add_argument("archive", metavar="ARCHIVE")

    demo = commands.add_parser(
        "demo",
        help="run the end-to-end demo on the bundled head CT",
        description="Ingest the bundled real head CT, simulate doses, reconstruct its held-out "
        "slices with NEED (shipped cpu weights, see weights/MODEL_CARD.md) and score NEED and "
        "the baselines against the normal-dose image: table, panels, MLflow experiment need-demo.",
    )
    demo.add_argument("--workdir", default="outputs/demo", help="where the archive, panels and metrics go")
    demo.add_argument("--doses", type=parse_doses, default=[0.5, 0.25, 0.1, 0.05])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="train SPDiff, DGDiff and RED-CNN from scratch with `need train` first (about an hour on CPU)",
    )
    demo.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    demo.add_argument("--no-tracking", dest="tracking", action="store_false", help="run without MLflow")
    return parser


def run_info(args: argparse.Namespace) -> None:
    from storage.archive import open_archive

    print(open_archive(args.archive).describe())


def run_ingest_command(args: argparse.Namespace) -> None:
    from flows.ingest import run_ingest

    summary = run_ingest(
        dask_address=args.dask_address,
        workers=args.workers,
        source=args.source,
        archive=args.archive,
        doses=args.doses,
        seed=args.seed,
        chunk_slices=args.chunk_slices,
        overwrite=args.overwrite,
        spacing_mm=args.spacing,
    )
    print(
        f"archive {summary['archive']}: {summary['processed']} of {summary['slices']} slices processed, "
        f"doses {summary['doses']}"
    )


def run_reconstruct_command(args: argparse.Namespace) -> None:
    from flows.reconstruct import run_reconstruct

    summary = run_reconstruct(
        dask_address=args.dask_address,
        workers=args.workers,
        archive=args.archive,
        doses=args.doses,
        spdiff=args.spdiff,
        dgdiff=args.dgdiff,
        chunk_slices=args.chunk_slices,
        device=args.device,
        seed=args.seed,
        write_projections=args.write_projections,
        slices=args.slices,
        tracking=args.tracking,
        experiment=args.experiment,
    )
    for dose, entry in summary["doses"].items():
        print(f"dose {dose:g}: {len(entry['done'])} slices reconstructed in {entry['chunks']} chunks")
    tracked = summary["tracking"]
    if "parent_run_id" in tracked:
        print(f"MLflow: experiment {tracked['experiment']}, run {tracked['parent_run_id']}")
    elif "error" in tracked:
        print(f"warning: {tracked['error']}", file=sys.stderr)


def run_train_command(args: argparse.Namespace) -> None:
    from flows.train import train

    result = train(
        archive=args.archive,
        model=args.model,
        profile=args.profile,
        steps=args.steps,
        resume=args.resume,
        checkpoint=args.checkpoint,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        validate_every=args.validate_every,
        train_slices=args.train_slices,
        validation_slices=args.validation_slices,
        tracking=args.tracking,
        experiment=args.experiment,
        train_dose=args.train_dose,
    )
    print(f"checkpoint {result['checkpoint']} at step {result['step']}; validation {result['validation']}")
    if result["model_version"]:
        print(f"registered as models:/{result['model_version']} (MLflow run {result['run_id']})")


def run_evaluate_command(args: argparse.Namespace) -> None:
    from flows.evaluate import evaluate

    result = evaluate(
        archive=args.archive, doses=args.doses, slices=args.slices, tracking=args.tracking, experiment=args.experiment
    )
    print(result["table"])
    if result["parent_run_id"]:
        print(f"MLflow run {result['parent_run_id']}")


def run_compare(args: argparse.Namespace) -> None:
    from flows.tracking.compare import compare_rows, format_compare_table

    rows = compare_rows(args.experiment)
    print(format_compare_table(rows) if rows else "no reconstruct or evaluate runs in the tracking store yet")


def run_ui(args: argparse.Namespace) -> None:
    import subprocess

    from flows.tracking.compare import ui_command
    from flows.tracking.store import checked_uri

    uri = checked_uri()
    process = subprocess.Popen(ui_command(uri, port=args.port))
    print(f"MLflow UI of {uri}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(timeout=10)


def run_demo(args: argparse.Namespace) -> None:
    from flows.demo import demo

    demo(
        workdir=args.workdir,
        doses=args.doses,
        seed=args.seed,
        retrain=args.retrain,
        device=args.device,
        tracking=args.tracking,
    )


COMMANDS = {
    "ingest": run_ingest_command,
    "reconstruct": run_reconstruct_command,
    "train": run_train_command,
    "evaluate": run_evaluate_command,
    "demo": run_demo,
}
LOCAL_COMMANDS = {"info": run_info, "compare": run_compare, "ui": run_ui}  # no Prefect API needed


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one subcommand; user errors print one clear line instead of a traceback."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.runtime import shared_prefect_api
    from storage.archive import ArchiveError
    from storage.checkpoints import CheckpointError

    try:
        if args.command in LOCAL_COMMANDS:
            LOCAL_COMMANDS[args.command](args)
        else:
            with shared_prefect_api():
                COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, ArchiveError, CheckpointError, RuntimeError) as err:
        print(f"need {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

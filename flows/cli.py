"""`need`: the command line over the flows (ingest, info, split, migrate, train, reconstruct, evaluate, compare, ui,
demo, and DICOM out and PACS in/out: export, pull, push).
Every subcommand has --help."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from flows import cli_calibrate, cli_export, cli_models, cli_pacs
from flows.cli_options import (
    add_model_options,
    add_study_options,
    add_tracking_options,
    parse_doses,
    parse_keys,
    parse_slices,
    parse_spacing,
)
from tasks.chunking import DEFAULT_CHUNK_SLICES

COMPARE_FORMATS = ("table", "csv", "markdown")
MODEL_KINDS = ("spdiff", "dgdiff")
"""The models `need reconstruct` takes; each defaults to flows.models.default_model."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="need", description="NEED low-dose CT reconstruction over whole datasets.")
    parser.add_argument("--version", action="version", version=f"need {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        help="read CT series into a catalog and simulate doses",
        description="Find every CT study in SRC... (files or folder trees: DICOM grouped by series, one study per "
        "axial CT series, scouts and non-axial series skipped; .inv3, .nii[.gz], .npy volumes), simulate "
        "normal-dose and low-dose scans, reconstruct the normal-dose image, and write them into the Zarr catalog "
        "CATALOG (one group per study). A rerun ingests only new series and retries failed ones.",
    )
    ingest.add_argument("sources", metavar="SRC", nargs="+")
    ingest.add_argument("catalog", metavar="CATALOG")
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
    ingest.add_argument("--overwrite", action="store_true", help="rebuild studies made with other settings")
    ingest.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    ingest.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")

    recon = commands.add_parser(
        "reconstruct",
        help="reconstruct a catalog's studies with NEED at each dose",
        description="Run SPDiff -> FBP -> DGDiff on every slice of the chosen studies of CATALOG that is not done "
        "yet (pending, failed, or made by other models/settings) at each dose, and write the results back. "
        "Reruns only touch what is not done.",
    )
    recon.add_argument("catalog", metavar="CATALOG")
    recon.add_argument(
        "--doses",
        type=parse_doses,
        default=None,
        help="dose fractions held by the catalog, e.g. 0.25,0.1 (default: every dose its chosen studies hold)",
    )
    add_model_options(recon)
    recon.add_argument(
        "--sampling",
        default=None,
        metavar="PROFILE",
        help="`reference` (the spec's sampling settings) or a profile file from `need calibrate` (default: the "
        "calibrated profile of the two models, from the registry or shipped beside the weights, else reference)",
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
        help="only these slices of a single study (default: every slice); neighbours are still read as context",
    )
    add_study_options(recon)
    recon.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    recon.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")
    add_tracking_options(recon)

    train = commands.add_parser(
        "train",
        help="train SPDiff or DGDiff on a catalog's normal-dose data, or RED-CNN",
        description="Train SPDiff or DGDiff on the normal-dose data of CATALOG only (proj_nd for "
        "SPDiff, fbp_nd for DGDiff), or the supervised RED-CNN baseline on the FBP of the "
        "low-dose scans at --train-dose paired with fbp_nd. A catalog split by patient (`need split`) "
        "trains on every train study of the common shape and validates on the val studies; a single "
        "study without a split (or one named with --studies) is split by slices. Validate with "
        "freshly simulated noise, log to MLflow and register the model (need-spdiff / "
        "need-dgdiff / need-redcnn) with a new version.",
    )
    train.add_argument("catalog", metavar="CATALOG")
    train.add_argument("--model", choices=("spdiff", "dgdiff", "redcnn"), required=True)
    train.add_argument("--profile", choices=("tiny", "cpu", "paper"), default="cpu", help="network size (default cpu)")
    train.add_argument("--steps", type=int, default=2000, help="total training steps (default 2000)")
    train.add_argument("--resume", action="store_true", help="continue the checkpoint and its MLflow run up to --steps")
    train.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint file (default models/<catalog>_<model>_<profile>.pt next to the catalog; "
        "<model> is e.g. redcnn_25 for RED-CNN at dose 0.25)",
    )
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=None, help="default 8 (spdiff, dgdiff), 16 (redcnn)")
    train.add_argument(
        "--train-dose",
        type=float,
        default=None,
        help="redcnn only: dose fraction of the low-dose inputs, a dose of every training study (default 0.25)",
    )
    train.add_argument("--validate-every", type=int, default=None, help="steps between validations (default steps/10)")
    train.add_argument(
        "--studies",
        type=parse_keys,
        default=None,
        metavar="K1,K2",
        help="only these studies (one study: split by slices; several: their train and val studies)",
    )
    train.add_argument(
        "--train-slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="one study only: training slices (default: the bundled head CT's split, else every slice)",
    )
    train.add_argument(
        "--validation-slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="one study only: validation slices (default: held-out slices of the head CT, else the middle three)",
    )
    add_tracking_options(train)

    evaluate = commands.add_parser(
        "evaluate",
        help="score stored results and log them to MLflow",
        description="Compute PSNR/SSIM/RMSE of LDCT FBP, SPDiff->FBP and NEED against the "
        "normal-dose image from the archive, print them and log them (again) to MLflow.",
    )
    evaluate.add_argument("catalog", metavar="CATALOG")
    evaluate.add_argument(
        "--doses", type=parse_doses, default=None, help="dose fractions (default: every reconstructed dose)"
    )
    evaluate.add_argument(
        "--slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="slices of a single study (default: all done)",
    )
    add_study_options(evaluate)
    add_tracking_options(evaluate)

    compare = commands.add_parser(
        "compare",
        help="table of image quality by dose, method and model from MLflow",
        description="Print each distinct result in the tracking store once: one row per dataset (the catalog, or "
        "a study with --by-study), dose, method and model versions, with PSNR mean ± std over its slices, SSIM, "
        "RMSE and the slice count. Results logged by several runs (a demo and its reconstruct run, a rerun) show "
        "once; csv adds every std, the run count and the newest run.",
    )
    compare.add_argument("--experiment", default=None, help="one experiment (default: all)")
    compare.add_argument("--dose", type=parse_doses, default=(), metavar="D1,D2", help="only these doses")
    compare.add_argument(
        "--method", type=parse_keys, default=(), metavar="M1,M2", help="only these methods (e.g. need,fbp_ld,redcnn)"
    )
    compare.add_argument(
        "--by-study", action="store_true", help="a row per study of a cohort (from the runs' per-slice tables)"
    )
    compare.add_argument(
        "--format", choices=COMPARE_FORMATS, default="table", help="table (default, 100 columns), csv, markdown"
    )

    ui = commands.add_parser(
        "ui",
        help="start the MLflow UI on 127.0.0.1 for the tracking store",
        description="Serve the MLflow UI of $MLFLOW_TRACKING_URI (default ./mlflow.db) on 127.0.0.1 and print the "
        "address of the runs table once the UI answers.",
    )
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--experiment", default=None, help="open this experiment's runs (default: the newest run's)")

    info = commands.add_parser(
        "info",
        help="describe a catalog or one study",
        description="Print the study table of CATALOG and done / failed / pending counts per study and dose; for a "
        "study group (CATALOG/studies/KEY) its dims, doses, geometry and ledgers.",
    )
    info.add_argument("catalog", metavar="CATALOG")

    verify = commands.add_parser(
        "verify",
        help="check every chunk of a catalog against its checksum",
        description="Read every chunk of every study of CATALOG (or of one study group) and report each chunk that "
        "is missing, corrupt or fails its checksum, naming study, variable, slice and dose. Exit status 1 if any.",
    )
    verify.add_argument("catalog", metavar="CATALOG")
    verify.add_argument(
        "--repair",
        action="store_true",
        help="delete bad chunks of recomputable data and set their slices pending (then rerun ingest/reconstruct); "
        "a study whose source image is corrupt is dropped for a rebuild by the next `need ingest`",
    )

    split = commands.add_parser(
        "split",
        help="assign train / val / test by patient",
        description="Assign the ingested studies of CATALOG to train, val and test by subject (a patient's studies "
        "never straddle sets): random by --seed with --test/--val fractions, or explicit study lists. Studies "
        "already assigned keep their set unless --reassign, so new series of a test patient go to test.",
    )
    split.add_argument("catalog", metavar="CATALOG")
    split.add_argument("--test", type=float, default=0.2, help="fraction of subjects for test (default 0.2)")
    split.add_argument("--val", type=float, default=0.1, help="fraction of subjects for validation (default 0.1)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--reassign", action="store_true", help="ignore existing assignments")
    for name in ("train", "val", "test"):
        split.add_argument(
            f"--{name}-studies", type=parse_keys, default=None, metavar="K1,K2", help=f"explicit {name} studies"
        )

    example = commands.add_parser(
        "example-cohort",
        help="write pseudo-patient DICOM series cut from the bundled head CT",
        description="Write OUT/PATIENT-NN/CT/: axial DICOM CT series, each a slab of consecutive slices of the "
        "bundled real head CT at full resolution (the shipped weights fit), to try the cohort commands on. Slabs "
        "of one person, not independent patients: for learning the workflow, not for judging generalisation.",
    )
    example.add_argument("out", metavar="OUT")
    example.add_argument("--patients", type=int, default=5, help="pseudo-patients (default 5)")
    example.add_argument("--slices", type=int, default=8, help="slices per pseudo-patient (default 8)")

    migrate = commands.add_parser(
        "migrate",
        help="turn a schema-1 archive into a one-study catalog",
        description="Convert the single-scan archive ARCHIVE (schema 1) in place into a catalog holding it as its "
        "one study; data is moved, not copied. Rerun to finish an interrupted migration.",
    )
    migrate.add_argument("archive", metavar="ARCHIVE")
    migrate.add_argument(
        "--source",
        default=None,
        metavar="SRC",
        help="the series the archive was ingested from, so a later `need ingest SRC` finds it as the same study",
    )

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
    cli_export.add_parsers(commands)
    cli_pacs.add_parsers(commands)
    cli_models.add_parsers(commands)
    cli_calibrate.add_parsers(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--verbose",
            action="store_true",
            help="show Prefect, Dask and MLflow log lines and the traceback of an error",
        )
    return parser


def package_version() -> str:
    """The installed need-pipeline's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("need-pipeline")
    except PackageNotFoundError:
        return "(not installed)"


def run_info(args: argparse.Namespace) -> None:
    from storage.archive import open_archive
    from storage.catalog import open_catalog
    from storage.catalog_paths import catalog_of_study

    print(
        open_archive(args.catalog).describe()
        if catalog_of_study(args.catalog)
        else open_catalog(args.catalog).describe()
    )


def run_verify(args: argparse.Namespace) -> None:
    from storage.verify import verify_catalog

    report = verify_catalog(args.catalog)
    print(report.format())
    if report.ok:
        return
    if not args.repair:
        raise RuntimeError(f"{report.summary()}: `need verify {args.catalog} --repair` makes them recomputable")
    from storage.repair import repair

    repaired = repair(report)
    print(repaired.format())
    if repaired.left:
        raise RuntimeError(f"{len(repaired.left)} bad chunks need a restore from a copy")


def run_split(args: argparse.Namespace) -> None:
    from storage.catalog import open_catalog
    from storage.splits import explicit_splits, patient_splits

    catalog = open_catalog(args.catalog, mode="r+")
    rows = catalog.select()
    lists = {name: keys for name in ("train", "val", "test") if (keys := getattr(args, f"{name}_studies"))}
    if lists:
        splits = explicit_splits([(row.study, row.subject) for row in rows], lists)
    else:
        splits = patient_splits(
            [(row.study, row.subject, row.split) for row in rows], args.test, args.val, args.seed, args.reassign
        )
    catalog.assign_splits(splits)
    for name in ("train", "val", "test"):
        chosen = [row for row in catalog.rows() if row.split == name]
        print(f"{name}: {len(chosen)} studies of {len({row.subject for row in chosen})} subjects")


def run_example_cohort(args: argparse.Namespace) -> None:
    from storage.examples import write_example_cohort

    folders = write_example_cohort(args.out, patients=args.patients, slices=args.slices)
    print(f"{len(folders)} pseudo-patient series of {args.slices} slices under {args.out}")


def run_migrate(args: argparse.Namespace) -> None:
    from storage.catalog import migrate_archive

    key = None
    if args.source:
        from storage.readers.series import discover_series

        found = discover_series([args.source]).series
        if len(found) != 1:
            raise ValueError(f"--source must hold exactly one series, {args.source} holds {len(found)}")
        key = found[0].key
    catalog = migrate_archive(args.archive, key)
    print(f"{catalog.path} is now a catalog of {len(catalog.rows())} study: {catalog.rows()[0].study}")


def run_ingest_command(args: argparse.Namespace) -> None:
    from flows.ingest import run_ingest

    summary = run_ingest(
        dask_address=args.dask_address,
        workers=args.workers,
        sources=args.sources,
        catalog=args.catalog,
        doses=args.doses,
        seed=args.seed,
        chunk_slices=args.chunk_slices,
        overwrite=args.overwrite,
        spacing_mm=args.spacing,
    )
    print(
        f"catalog {summary['catalog']}: {len(summary['studies'])} studies ({len(summary['new'])} new), "
        f"{summary['processed']} of {summary['slices']} slices processed, doses {summary['doses']}"
    )


def run_reconstruct_command(args: argparse.Namespace) -> None:
    from flows.reconstruct import run_reconstruct

    summary = run_reconstruct(
        dask_address=args.dask_address,
        workers=args.workers,
        catalog=args.catalog,
        doses=args.doses,
        spdiff=args.spdiff,
        dgdiff=args.dgdiff,
        chunk_slices=args.chunk_slices,
        device=args.device,
        seed=args.seed,
        write_projections=args.write_projections,
        slices=args.slices,
        split=args.split,
        studies=args.studies,
        tracking=args.tracking,
        experiment=args.experiment,
        sampling=args.sampling,
    )
    for key, study in summary["studies"].items():
        for dose, entry in study["doses"].items():
            print(f"{key} dose {dose:g}: {len(entry['done'])} slices reconstructed in {entry['chunks']} chunks")
    tracked = summary["tracking"]
    if "parent_run_id" in tracked:
        print(f"MLflow: experiment {tracked['experiment']}, run {tracked['parent_run_id']}")
    elif "error" in tracked:
        print(f"warning: {tracked['error']}", file=sys.stderr)


def run_train_command(args: argparse.Namespace) -> None:
    from flows.train import train

    result = train(
        catalog=args.catalog,
        model=args.model,
        profile=args.profile,
        steps=args.steps,
        resume=args.resume,
        checkpoint=args.checkpoint,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        validate_every=args.validate_every,
        studies=args.studies,
        train_slices=args.train_slices,
        validation_slices=args.validation_slices,
        tracking=args.tracking,
        experiment=args.experiment,
        train_dose=args.train_dose,
    )
    print(f"studies: {len(result['studies'])} training, {len(result['validation_studies'])} validation")
    print(f"checkpoint {result['checkpoint']} at step {result['step']}; validation {result['validation']}")
    if result["model_version"]:
        print(f"registered as models:/{result['model_version']} (MLflow run {result['run_id']})")


def run_evaluate_command(args: argparse.Namespace) -> None:
    from flows.evaluate import evaluate

    result = evaluate(
        catalog=args.catalog,
        doses=args.doses,
        slices=args.slices,
        split=args.split,
        studies=args.studies,
        tracking=args.tracking,
        experiment=args.experiment,
    )
    print(result["table"])
    if result["parent_run_id"]:
        print(f"MLflow run {result['parent_run_id']}")


def run_compare(args: argparse.Namespace) -> None:
    from flows.tracking.compare import compare_rows, format_rows

    rows = compare_rows(args.experiment, doses=args.dose, methods=args.method, by_study=args.by_study)
    if rows:
        print(format_rows(rows, args.format))
    else:
        print(
            "no scored results in the tracking store match"
            if args.dose or args.method
            else "no reconstruct, evaluate or demo results in the tracking store yet"
        )


def run_ui(args: argparse.Namespace) -> None:
    from flows.tracking.store import checked_uri
    from flows.tracking.ui import runs_table_url, served_ui

    uri = checked_uri()
    url = runs_table_url(uri, args.port, args.experiment)
    print(f"starting the MLflow UI of {uri} on 127.0.0.1:{args.port} ...", file=sys.stderr, flush=True)
    with served_ui(uri, args.port, args.verbose) as process:
        print(f"MLflow runs: {url}  (Ctrl-C stops the UI)", flush=True)
        process.wait()


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
    **cli_export.COMMANDS,
    **cli_pacs.COMMANDS,
    **cli_calibrate.COMMANDS,
}
LOCAL_COMMANDS = {
    "info": run_info,
    "verify": run_verify,
    "split": run_split,
    "migrate": run_migrate,
    "example-cohort": run_example_cohort,
    "compare": run_compare,
    "ui": run_ui,
    **cli_export.LOCAL_COMMANDS,
    **cli_pacs.LOCAL_COMMANDS,
    **cli_models.LOCAL_COMMANDS,
}  # no Prefect API needed


INTERRUPTED = {"ingest": "finished slices are kept", "reconstruct": "finished slices are kept"}
"""What survives a Ctrl-C, per command, for its one-line message."""


def interrupted_message(command: str) -> str:
    """The one line a Ctrl-C of `need COMMAND` ends with."""
    kept = INTERRUPTED.get(command)
    return f"need {command}: interrupted" + (f"; {kept}, rerun the same command to do the rest" if kept else "")


def fill_default_models(args: argparse.Namespace) -> None:
    """Put flows.models.default_model's choice where a command's model is not named, and say which it is."""
    unnamed = [kind for kind in MODEL_KINDS if hasattr(args, kind) and getattr(args, kind) is None]
    if not unnamed:
        return
    from flows.models import default_model

    for kind in unnamed:
        reference, why = default_model(kind)
        setattr(args, kind, reference)
        print(f"need {args.command}: {kind} {reference} ({why})", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one subcommand; user errors print one clear line instead of a traceback, and
    Ctrl-C ends any command within seconds with one line and exit status 130 (flows.runtime.InterruptHandler)."""
    from flows.log_levels import quiet_logging
    from flows.runtime import INTERRUPT_EXIT_STATUS, InterruptHandler, disk_full, disk_full_message  # no Prefect yet

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    words = list(sys.argv[1:] if argv is None else argv)
    guess = next((word for word in words if not word.startswith("-")), "")  # parsing imports torch: seconds
    with InterruptHandler(interrupted_message(guess)) as interrupt:
        try:
            args = build_parser().parse_args(argv)
            quiet_logging(args.verbose)
            interrupt.message = interrupted_message(args.command)
            from flows.console import quiet_console
            from flows.preflight import check_before_start
            from flows.runtime import shared_prefect_api
            from storage.errors import ArchiveError  # not storage.archive, which loads torch (seconds)

            try:
                fill_default_models(args)
                check_before_start(args)
                if args.command in LOCAL_COMMANDS:
                    LOCAL_COMMANDS[args.command](args)
                else:
                    with shared_prefect_api():
                        quiet_console(args.verbose)
                        COMMANDS[args.command](args)
            except (ValueError, OSError, ArchiveError, RuntimeError) as err:  # CheckpointError is a RuntimeError
                if interrupt.interrupted.is_set():  # an interrupted call below ended in another error
                    raise KeyboardInterrupt from err
                if args.verbose:
                    traceback.print_exc()
                problem = disk_full_message(err, getattr(args, "catalog", None)) if disk_full(err) else str(err)
                print(f"need {args.command}: error: {problem}", file=sys.stderr)
                return 1
        except KeyboardInterrupt:
            interrupt.report()
            return INTERRUPT_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())

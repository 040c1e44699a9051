"""`need`: the command line over the flows (ingest, info, demo). Every subcommand has --help."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence


def parse_doses(text: str) -> list[float]:
    """'0.5,0.25' -> [0.5, 0.25], with a clear error for anything else."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"doses must be comma-separated fractions like 0.5,0.25; got {text!r}") from err


def parse_spacing(text: str) -> list[float]:
    """'1.5,0.96,0.96' -> [1.5, 0.96, 0.96] (mm)."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"spacing must be DZ,DY,DX in mm; got {text!r}") from err
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"spacing must have three values DZ,DY,DX; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="need", description="NEED low-dose CT reconstruction over whole datasets.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="read a CT volume and write an archive with simulated doses",
                                 description="Read SRC (DICOM folder, .inv3, .nii[.gz], .npy), simulate normal-dose and "
                                 "low-dose scans, reconstruct the normal-dose image, and write the Zarr archive ARCHIVE.")
    ingest.add_argument("source", metavar="SRC")
    ingest.add_argument("archive", metavar="ARCHIVE")
    ingest.add_argument("--doses", type=parse_doses, default=[0.5, 0.25, 0.1, 0.05], help="dose fractions (default 0.5,0.25,0.1,0.05)")
    ingest.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    ingest.add_argument("--chunk-slices", type=int, default=8, help="slices per task (default 8)")
    ingest.add_argument("--spacing", type=parse_spacing, default=None, metavar="DZ,DY,DX",
                        help="voxel spacing in mm, for sources that lack it (.npy)")
    ingest.add_argument("--overwrite", action="store_true", help="replace an archive made with other settings")
    ingest.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    ingest.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")

    recon = commands.add_parser("reconstruct", help="reconstruct an archive with NEED at each dose",
                                description="Run SPDiff -> FBP -> DGDiff on every slice of ARCHIVE that is not done yet "
                                "(pending, failed, or made by other models/settings) at each dose, and write the "
                                "results back. Reruns only touch what is not done.")
    recon.add_argument("archive", metavar="ARCHIVE")
    recon.add_argument("--doses", type=parse_doses, required=True, help="dose fractions held by the archive, e.g. 0.25,0.1")
    recon.add_argument("--spdiff", required=True, metavar="REF", help="SPDiff checkpoint (path)")
    recon.add_argument("--dgdiff", required=True, metavar="REF", help="DGDiff checkpoint (path)")
    recon.add_argument("--chunk-slices", type=int, default=8, help="slices per task (default 8)")
    recon.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    recon.add_argument("--seed", type=int, default=0)
    recon.add_argument("--write-projections", action="store_true", help="also store the SPDiff-denoised projections")
    recon.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    recon.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")

    info = commands.add_parser("info", help="describe an archive", description="Print dims, doses, geometry and ledger summary.")
    info.add_argument("archive", metavar="ARCHIVE")

    demo = commands.add_parser("demo", help="run the end-to-end demo on the bundled head CT",
                               description="Ingest the bundled real head CT, simulate doses and report image quality "
                               "on its held-out slices, with comparison panels.")
    demo.add_argument("--workdir", default="outputs/demo", help="where the archive, panels and metrics go")
    demo.add_argument("--doses", type=parse_doses, default=[0.5, 0.25, 0.1, 0.05])
    demo.add_argument("--seed", type=int, default=0)
    return parser


def run_info(args: argparse.Namespace) -> None:
    from storage.archive import open_archive

    print(open_archive(args.archive).describe())


def run_ingest_command(args: argparse.Namespace) -> None:
    from flows.ingest import run_ingest

    summary = run_ingest(
        dask_address=args.dask_address, workers=args.workers, source=args.source, archive=args.archive,
        doses=args.doses, seed=args.seed, chunk_slices=args.chunk_slices, overwrite=args.overwrite,
        spacing_mm=args.spacing,
    )
    print(f"archive {summary['archive']}: {summary['processed']} of {summary['slices']} slices processed, "
          f"doses {summary['doses']}")


def run_reconstruct_command(args: argparse.Namespace) -> None:
    from flows.reconstruct import run_reconstruct

    summary = run_reconstruct(
        dask_address=args.dask_address, workers=args.workers, archive=args.archive, doses=args.doses,
        spdiff=args.spdiff, dgdiff=args.dgdiff, chunk_slices=args.chunk_slices, device=args.device,
        seed=args.seed, write_projections=args.write_projections,
    )
    for dose, entry in summary["doses"].items():
        print(f"dose {dose:g}: {len(entry['done'])} slices reconstructed in {entry['chunks']} chunks")


def run_demo(args: argparse.Namespace) -> None:
    from flows.demo import demo

    demo(workdir=args.workdir, doses=args.doses, seed=args.seed)


COMMANDS = {"ingest": run_ingest_command, "reconstruct": run_reconstruct_command, "demo": run_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one subcommand; user errors print one clear line instead of a traceback."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from storage.archive import ArchiveError
    from storage.checkpoints import CheckpointError

    from flows.runtime import shared_prefect_api

    try:
        if args.command == "info":
            run_info(args)
        else:
            with shared_prefect_api():
                COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, ArchiveError, CheckpointError, RuntimeError) as err:
        print(f"need {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

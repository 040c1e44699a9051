"""`need export`: results out of the catalog as derived DICOM CT series (or NIfTI) for viewers, PACS and research
tools (storage.export)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}  # run inside the Prefect API


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to `need`."""
    from flows.cli import add_study_options  # flows.cli imports this module: import it once it is loaded

    export = commands.add_parser(
        "export",
        help="write results as DICOM CT series (or NIfTI) per study, method and dose",
        description="Write METHOD at DOSE of the chosen studies of CATALOG under OUTDIR/<study>/<method>_<dose>/ as "
        "a derived CT series (new UIDs, the study's geometry, the study key as pseudonymous patient), or as "
        "OUTDIR/<study>/<method>_<dose>.nii.gz. Only slices whose result is done are exported; OUTDIR/manifest.json "
        "lists what was written. Methods: need, spdiff_fbp, fbp_ld (per dose), fbp_nd (normal-dose reference) "
        "and image_hu (the source), the last two without --dose.",
    )
    export.add_argument("catalog", metavar="CATALOG")
    export.add_argument("out_dir", metavar="OUTDIR")
    export.add_argument("--method", default="need", help="need (default), spdiff_fbp, fbp_ld, fbp_nd or image_hu")
    export.add_argument("--dose", type=float, default=None, help="dose fraction held by the catalog, e.g. 0.25")
    add_study_options(export)
    export.add_argument("--format", dest="fmt", choices=("dicom", "nifti"), default="dicom", help="default dicom")
    export.add_argument("--overwrite", action="store_true", help="replace series that already exist (once complete)")


def run_export(args: argparse.Namespace) -> None:
    """Export and print one line per series (with how many of the study's slices were done)."""
    from storage.export import export_results

    exported = export_results(
        args.catalog,
        args.out_dir,
        args.method,
        args.dose,
        studies=args.studies,
        split=args.split,
        fmt=args.fmt,
        overwrite=args.overwrite,
    )
    for series in exported:
        partial = "" if series.slices == series.total_slices else " (partial: the others are not done yet)"
        print(f"{series.study}: {series.slices} of {series.total_slices} slices{partial} -> {series.path}")
    print(f"exported {len(exported)} series of `{args.method}` to {args.out_dir} (listed in its manifest.json)")


LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {"export": run_export}  # no Prefect API needed

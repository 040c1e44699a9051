"""`need calibrate`: tune NEED's sampling settings for two models on normal-dose validation data (flows.calibrate)
and print what was chosen, per dose, against the spec's settings."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from flows.cli_options import add_model_options, add_study_options, add_tracking_options, parse_doses, parse_slices


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add `need calibrate` to `need`."""
    calibrate = commands.add_parser(
        "calibrate",
        help="tune NEED's sampling settings for two models on simulated scans of the validation slices",
        description="Simulate low-dose scans of CATALOG's validation slices from their normal-dose data (never the "
        "stored low-dose scans, never evaluation or test studies) at each dose, and choose per dose SPDiff's ending "
        "and DGDiff's guidance (s1, s2, start-step divisor, start noise) by validation PSNR. Writes a sampling "
        "profile that `need reconstruct` uses by default for these two models (with tracking also tagged on the "
        "registered DGDiff version), and a plot and the trials beside it.",
    )
    calibrate.add_argument("catalog", metavar="CATALOG")
    add_model_options(calibrate)
    calibrate.add_argument(
        "--doses", type=parse_doses, default=None, help="dose fractions to calibrate (default 0.5,0.25,0.1,0.05)"
    )
    calibrate.add_argument(
        "--out", default=None, help="profile file (default sampling_<spdiff>_<dgdiff>.json beside CATALOG)"
    )
    calibrate.add_argument(
        "--validation-slices",
        type=parse_slices,
        default=None,
        metavar="A-B,C",
        help="a single study's calibration slices (default: its validation slices, as need train uses)",
    )
    calibrate.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    calibrate.add_argument("--seed", type=int, default=0)
    add_study_options(calibrate)
    add_tracking_options(calibrate)


def run_calibrate(args: argparse.Namespace) -> None:
    """Run the calibrate flow and print each dose's validation PSNR, reference against calibrated."""
    from flows.calibrate import calibrate

    result = calibrate(
        catalog=args.catalog,
        spdiff=args.spdiff,
        dgdiff=args.dgdiff,
        doses=args.doses,
        studies=args.studies,
        validation_slices=args.validation_slices,
        device=args.device,
        seed=args.seed,
        out=args.out,
        tracking=args.tracking,
        experiment=args.experiment,
    )
    for entry in result["doses"]:
        scores = entry["scores"]
        print(
            f"dose {entry['dose']:g}: validation PSNR {scores['fbp_ld']:.2f} (LDCT FBP), "
            f"{scores['reference']:.2f} (reference settings) -> {scores['calibrated']:.2f} dB (calibrated)"
        )
    print(f"sampling profile {result['name']!r}: {result['profile']}")


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {"calibrate": run_calibrate}
LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}

"""`need pull` and `need push`: a PACS in and out over DICOMweb (flows.pacs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def parse_date(text: str) -> str:
    """A --since/--until date: YYYYMMDD, a real calendar date."""
    from storage.dicomweb import parse_dicom_date

    try:
        return parse_dicom_date(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to `need`."""
    from flows.cli import add_study_options, parse_doses

    pull = commands.add_parser(
        "pull",
        help="retrieve CT series from a PACS over DICOMweb into a catalog",
        description="Find CT series on the DICOMweb server URL with QIDO-RS (one study, or every study dated "
        "--since..--until), retrieve them with WADO-RS into CATALOG.locks/pull/ (a rerun resumes a retrieval cut "
        "off midway), ingest them de-identified into CATALOG as `need ingest` does (scouts and non-axial series "
        "skipped), then delete the staged files, which carry patient identifiers. Credentials: "
        "$NEED_DICOMWEB_USER and $NEED_DICOMWEB_PASSWORD (HTTP basic auth).",
    )
    pull.add_argument("url", metavar="DICOMWEB_URL", help="e.g. http://pacs:8042/dicom-web")
    pull.add_argument("catalog", metavar="CATALOG")
    which = pull.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", default=None, metavar="UID", help="the StudyInstanceUID of one study")
    which.add_argument("--since", type=parse_date, default=None, metavar="YYYYMMDD", help="studies dated from this day")
    pull.add_argument("--until", type=parse_date, default=None, metavar="YYYYMMDD", help="with --since: up to this day")
    pull.add_argument("--modality", choices=("CT",), default="CT", help="only CT is ingested (default CT)")
    pull.add_argument(
        "--doses", type=parse_doses, default=[0.5, 0.25, 0.1, 0.05], help="dose fractions (default 0.5,0.25,0.1,0.05)"
    )
    pull.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    pull.add_argument("--chunk-slices", type=int, default=8, help="slices per task (default 8)")
    pull.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    pull.add_argument("--workers", type=int, default=None, help="local Dask worker processes (default: one per core)")

    push = commands.add_parser(
        "push",
        help="store reconstructed series on a PACS over DICOMweb",
        description="Export METHOD's results at --dose of the chosen studies of CATALOG as derived DICOM CT series "
        "(as `need export` does: new UIDs, pseudonymous patient), store them on the DICOMweb server URL with "
        "STOW-RS and check with QIDO-RS that it holds every instance. Credentials as for `need pull`.",
    )
    push.add_argument("catalog", metavar="CATALOG")
    push.add_argument("url", metavar="DICOMWEB_URL")
    push.add_argument("--method", default="need", help="result to send: need (default), spdiff_fbp, fbp_ld, ...")
    push.add_argument("--dose", type=float, required=True, help="dose fraction of the results, e.g. 0.25")
    add_study_options(push)


def run_pull(args: argparse.Namespace) -> None:
    from flows.pacs import pull

    summary = pull(
        url=args.url,
        catalog=args.catalog,
        study=args.study,
        since=args.since,
        until=args.until,
        doses=tuple(args.doses),
        seed=args.seed,
        chunk_slices=args.chunk_slices,
        dask_address=args.dask_address,
        workers=args.workers,
    )
    fetched = sum(summary["retrieved"].values())
    print(
        f"{summary['url']}: {len(summary['studies'])} CT series in catalog {summary['catalog']} "
        f"({len(summary['retrieved'])} retrieved, {fetched} instances fetched; "
        f"{len(summary['already_ingested'])} already ingested; {len(summary['skipped'])} skipped)"
    )
    for line in summary["skipped"].values():
        print(f"skipped {line}")


def run_push(args: argparse.Namespace) -> None:
    from flows.push import push
    from storage.dicomweb import public_url

    for item in push(args.catalog, args.url, args.method, args.dose, studies=args.studies, split=args.split):
        part = f" ({item.slices} of {item.total_slices} slices)" if item.slices != item.total_slices else ""
        print(
            f"{item.study} {item.method} dose {item.dose:g}: series {item.series_uid}, {item.instances} instances "
            f"stored on {public_url(args.url)}{part}"
        )


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {"pull": run_pull}  # run inside the Prefect API
LOCAL_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {"push": run_push}  # no Prefect API needed

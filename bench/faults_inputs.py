"""Bad inputs through the CLI for bench/faults.py: each case is a `need ...` subprocess that must fail clearly.

Clear means: exit status 1 (2 for argparse's own usage errors, whose message line is the same kind), no traceback,
exactly one `need COMMAND: error: ...` line, and that line names the problem (the case's `names`, a value or a path
the user typed). Time to the message is the subprocess's wall time. A case slower than LIMIT_S is run once more
under `-X importtime`, and the heavy packages it loaded (HEAVY, with their import seconds) say why.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.faults_kills import code_root, need_command
from bench.faults_mounts import MountRefused, make_read_only, tmpfs

TIMEOUT_S = 180
LIMIT_S = 2.0
"""Every bad input should be reported within this (issue #17)."""
HEAVY = ("torch", "mlflow", "prefect", "distributed", "xarray", "astra")
"""Packages whose import alone takes a large part of LIMIT_S on a 2-core machine."""
ERROR_LINE = re.compile(r"^need [\w-]+: error: ")
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \|(\s+)(\S+)$")


@dataclass(frozen=True)
class Case:
    """One bad input: the command's arguments, what its message must name, extra environment."""

    name: str
    args: tuple[str, ...]
    names: str
    env: tuple[tuple[str, str], ...] = ()


def judge(case: Case, status: int, output: str) -> tuple[bool, str]:
    """Whether the output is a clear error for `case`, and the error line (or why it is not clear)."""
    lines = [line for line in output.splitlines() if ERROR_LINE.match(line)]
    if "Traceback" in output:
        uncaught = not (lines and output.rstrip().endswith(lines[-1]))
        return False, "uncaught exception" if uncaught else f"traceback logged before: {lines[-1][:200]}"
    if status not in (1, 2) or (status == 2 and "usage:" not in output):
        return False, f"exit status {status}"
    if len(lines) != 1:
        return False, f"{len(lines)} error lines"
    if case.names.lower() not in lines[0].lower():
        return False, f"does not name {case.names!r}: {lines[0][:200]}"
    return True, lines[0][:300]


def run_case(case: Case) -> dict[str, Any]:
    """Run one case; its row (clear or not, seconds to the message, the message)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            need_command(*case.args),
            cwd=code_root(),
            env={**os.environ, **dict(case.env)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        status, output = -1, f"no message within {TIMEOUT_S} s"
    seconds = time.perf_counter() - started
    clear, message = judge(case, status, output)
    row = {"case": case.name, "clear": clear, "status": status, "seconds": round(seconds, 2), "message": message}
    if not clear:
        row["output_tail"] = output.strip()[-400:]
    return row


def heavy_imports(case: Case) -> dict[str, tuple[float, str]]:
    """The HEAVY packages `case`'s command imports: each one's import seconds and the module that brought it in."""
    done = subprocess.run(
        need_command(*case.args),
        cwd=code_root(),
        env={**os.environ, **dict(case.env), "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    return imports_through(done.stderr)


def imports_through(importtime: str) -> dict[str, tuple[float, str]]:
    """From `-X importtime` output: each HEAVY package's seconds (its outermost import) and the module imported at
    the top level that brought it in (the command's code imports its heavy parts inside functions)."""
    lines = [(int(m[1]), len(m[2]), m[3]) for line in importtime.splitlines() if (m := IMPORT_LINE.match(line))]
    found: dict[str, tuple[float, str]] = {}
    for i, (cumulative, _, name) in enumerate(lines):
        if name in HEAVY and cumulative / 1e6 > found.get(name, (0.0, ""))[0]:
            top = next((other for _, d, other in lines[i:] if d == 1), name)  # a module's imports come before it
            found[name] = (round(cumulative / 1e6, 2), top)
    return found


def why_slow(case: Case, row: dict[str, Any]) -> dict[str, Any]:
    """A slow case's entry of `slow_inputs`: its time and the heavy imports that made it slow."""
    loaded = sorted(heavy_imports(case).items(), key=lambda item: -item[1][0])
    why = ", ".join(f"{name} {seconds:.2f} s (via {top})" for name, (seconds, top) in loaded)
    return {"case": case.name, "seconds": row["seconds"], "why": f"imports {why}" if why else "no heavy import"}


@contextmanager
def read_only_copy(catalog: Path, where: Path) -> Iterator[Path | None]:
    """A copy of `catalog` on a read-only tmpfs (None, with the cases skipped, where mounting is refused)."""
    with ExitStack() as stack:
        try:
            mount = stack.enter_context(tmpfs(where, 64))
        except MountRefused:
            yield None
            return
        copy = mount / catalog.name
        shutil.copytree(catalog, copy)
        make_read_only(mount)
        yield copy


def cases(ctx: dict[str, Path], read_only: Path | None) -> list[Case]:
    """The bad inputs, on the context's good catalog (`catalog`, ingested and reconstructed), models and source."""
    cat, src, sp, dg, tmp = (str(ctx[k]) for k in ("catalog", "source", "spdiff", "dgdiff", "tmp"))
    empty, text_dir, text_file = str(ctx["empty_dir"]), str(ctx["text_dir"]), str(ctx["text_file"])
    missing = str(Path(tmp) / "no-such-thing")
    new_cat = str(Path(tmp) / "new.zarr")
    spacing = ("--spacing", "3,3.8,3.8")
    recon = ("reconstruct", cat, "--spdiff", sp, "--dgdiff", dg, "--device", "cpu", "--no-tracking")
    found = [
        Case("ingest dose not a number", ("ingest", src, new_cat, "--doses", "abc", *spacing), "abc"),
        Case("ingest dose above 1", ("ingest", src, new_cat, "--doses", "1.5", *spacing), "1.5"),
        Case("ingest dose zero", ("ingest", src, new_cat, "--doses", "0", *spacing), "dose"),
        Case("ingest dose twice", ("ingest", src, new_cat, "--doses", "0.25,0.25", *spacing), "0.25"),
        Case("ingest chunk slices 0", ("ingest", src, new_cat, "--chunk-slices", "0", *spacing), "chunk"),
        Case("ingest chunk slices -3", ("ingest", src, new_cat, "--chunk-slices", "-3", *spacing), "chunk"),
        Case("ingest workers 0", ("ingest", src, new_cat, "--workers", "0", *spacing), "workers"),
        Case("ingest missing source", ("ingest", missing, new_cat), missing),
        Case("ingest folder without DICOM", ("ingest", empty, new_cat), empty),
        Case("ingest folder of text files", ("ingest", text_dir, new_cat), text_dir),
        Case("ingest .npy without spacing", ("ingest", src, new_cat), "spacing"),
        Case("ingest bad spacing", ("ingest", src, new_cat, "--spacing", "1,2"), "spacing"),
        Case(
            "ingest unreachable scheduler",
            ("ingest", src, new_cat, *spacing, "--dask-address", "tcp://127.0.0.1:9"),
            "127.0.0.1:9",
        ),
        Case(
            "reconstruct missing catalog",
            ("reconstruct", missing, "--doses", "0.25", "--spdiff", sp, "--dgdiff", dg),
            missing,
        ),
        Case(
            "reconstruct folder not a catalog",
            ("reconstruct", empty, "--doses", "0.25", "--spdiff", sp, "--dgdiff", dg),
            empty,
        ),
        Case("reconstruct dose not in catalog", (*recon, "--doses", "0.3"), "0.3"),
        Case("reconstruct dose not a number", (*recon, "--doses", "x1"), "x1"),
        Case(
            "reconstruct missing spdiff",
            ("reconstruct", cat, "--doses", "0.25", "--spdiff", missing, "--dgdiff", dg),
            missing,
        ),
        Case(
            "reconstruct missing dgdiff",
            ("reconstruct", cat, "--doses", "0.25", "--spdiff", sp, "--dgdiff", missing),
            missing,
        ),
        Case(
            "reconstruct text file as checkpoint",
            ("reconstruct", cat, "--doses", "0.25", "--spdiff", text_file, "--dgdiff", dg),
            text_file,
        ),
        Case(
            "reconstruct checkpoints swapped",
            ("reconstruct", cat, "--doses", "0.25", "--spdiff", dg, "--dgdiff", sp),
            "spdiff",
        ),
        Case("reconstruct chunk slices 0", (*recon, "--doses", "0.25", "--chunk-slices", "0"), "chunk"),
        Case("reconstruct unknown study", (*recon, "--doses", "0.25", "--studies", "study-unknown"), "study-unknown"),
        Case("reconstruct slices outside", (*recon, "--doses", "0.25", "--slices", "50-60"), "slices"),
        Case("reconstruct slices not a range", (*recon, "--doses", "0.25", "--slices", "a-b"), "a-b"),
        Case("reconstruct unknown device", (*recon, "--doses", "0.25", "--device", "tpu"), "tpu"),
        Case(
            "reconstruct unregistered model",
            (
                "reconstruct",
                cat,
                "--doses",
                "0.25",
                "--spdiff",
                "models:/need-spdiff/999",
                "--dgdiff",
                dg,
                "--device",
                "cpu",
            ),
            "need-spdiff",
        ),
        Case(
            "reconstruct unusable tracking store",
            ("reconstruct", cat, "--doses", "0.25", "--spdiff", sp, "--dgdiff", dg, "--device", "cpu"),
            missing,
            (("MLFLOW_TRACKING_URI", f"sqlite:///{missing}/sub/mlflow.db"),),
        ),
        Case("evaluate dose not in catalog", ("evaluate", cat, "--doses", "0.3", "--no-tracking"), "0.3"),
        Case(
            "export unknown method",
            ("export", cat, str(Path(tmp) / "out"), "--method", "magic", "--dose", "0.25"),
            "magic",
        ),
        Case("export dose not in catalog", ("export", cat, str(Path(tmp) / "out"), "--dose", "0.3"), "0.3"),
        Case(
            "export unknown study",
            ("export", cat, str(Path(tmp) / "out"), "--dose", "0.25", "--studies", "nope-1"),
            "nope-1",
        ),
        Case(
            "pull unreachable PACS",
            ("pull", "http://127.0.0.1:9/dicom-web", new_cat, "--study", "1.2.3"),
            "127.0.0.1:9",
        ),
        Case("info missing catalog", ("info", missing), missing),
        Case("verify missing catalog", ("verify", missing), missing),
        Case("train missing catalog", ("train", missing, "--model", "spdiff", "--no-tracking"), missing),
        Case("train zero steps", ("train", cat, "--model", "dgdiff", "--steps", "0", "--no-tracking"), "steps"),
        Case("split test fraction 1.5", ("split", cat, "--test", "1.5"), "1.5"),
    ]
    if read_only is not None:
        ro = str(read_only)
        found += [
            Case(
                "reconstruct read-only catalog",
                (
                    "reconstruct",
                    ro,
                    "--doses",
                    "0.25",
                    "--spdiff",
                    sp,
                    "--dgdiff",
                    dg,
                    "--device",
                    "cpu",
                    "--no-tracking",
                ),
                ro,
            ),
            Case("ingest into read-only catalog", ("ingest", src, ro, *spacing, "--doses", "0.25"), ro),
            Case(
                "read-only tracking store",
                ("evaluate", cat, "--doses", "0.25"),
                str(read_only.parent),
                (("MLFLOW_TRACKING_URI", f"sqlite:///{read_only.parent}/mlflow.db"),),
            ),
        ]
    return found


def run_inputs(ctx: dict[str, Path], every: int = 1) -> dict[str, Any]:
    """Every case (or every `every`-th), on a read-only copy of the catalog where mounting is allowed; rows and the
    summary figures."""
    for name in ("empty_dir", "text_dir"):
        ctx[name].mkdir(parents=True, exist_ok=True)
    (ctx["text_dir"] / "notes.txt").write_text("not a DICOM file\n")
    ctx["text_file"].write_text("not a checkpoint\n")
    with read_only_copy(ctx["catalog"], ctx["tmp"] / "ro") as read_only:
        chosen = cases(ctx, read_only)[::every]
        rows = [run_case(case) for case in chosen]
        slow = [why_slow(case, row) for case, row in zip(chosen, rows, strict=True) if row["seconds"] >= LIMIT_S]
    return {
        "input_rows": rows,
        "clear_errors": sum(row["clear"] for row in rows),
        "total": len(rows),
        "slowest_error_s": max(row["seconds"] for row in rows),
        "median_error_s": round(statistics.median(row["seconds"] for row in rows), 2),
        "under_2s": sum(row["seconds"] < LIMIT_S for row in rows),
        "slow_inputs": slow,
        "read_only_cases": read_only is not None,
    }

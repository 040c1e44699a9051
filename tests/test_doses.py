"""One rule for lists of dose fractions (need_core.doses.validate_doses, which loads no torch), applied alike by the
flows, the CLI parser and the archive; need_core.physics raises its complaints as PhysicsInputError."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows.cli import build_parser
from need_core import doses
from need_core.physics.validation import PhysicsInputError, validate_doses
from storage.archive import ArchiveInputError
from storage.validation import check_doses


@pytest.mark.parametrize(
    "values, message",
    [
        ([], "at least one"),
        ([0.5, 0.0], r"\(0, 1\], got 0.0"),
        ([1.5], r"\(0, 1\], got 1.5"),
        ([float("nan")], "got nan"),
        (["half"], "must be a number.*'half'"),
        ([0.25, 0.1, 0.25 + 1e-12], "distinct; 0.25 is given twice"),
        (0.25, "list of fractions"),
    ],
)
def test_bad_dose_lists_are_refused_naming_the_bad_value(values, message):
    with pytest.raises(doses.DoseError, match=message):
        doses.validate_doses(values)
    with pytest.raises(PhysicsInputError, match=message):
        validate_doses(values)


def test_the_dose_rule_loads_neither_torch_nor_numpy():
    script = "import sys, need_core.doses; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_doses_keep_the_order_given():
    assert validate_doses((0.5, 0.1, 0.25)) == [0.5, 0.1, 0.25]


def test_cli_and_archive_apply_the_same_rule(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "a.zarr", "--doses", "0.5,0.5"])
    assert "given twice" in capsys.readouterr().err
    assert build_parser().parse_args(["evaluate", "a.zarr", "--doses", "0.5,0.1"]).doses == [0.5, 0.1]
    with pytest.raises(ArchiveInputError, match=r"\(0, 1\], got 1.5"):
        check_doses([1.5], ArchiveInputError)

"""Debian programs some tests drive (dcmtk's transcoders, dicom3tools' dciodvfy, Orthanc): `.ci/run` installs them,
so a missing one fails the test with the install command instead of skipping it."""

from __future__ import annotations

import shutil

import pytest


def require_tool(program: str, debian_package: str) -> str:
    """The path of `program`, or a test failure naming the Debian package that provides it."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} not found: run `apt-get install -y {debian_package}` (.ci/run does)")
    return path

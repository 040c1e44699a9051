"""Placing built outputs: a dead process's half-built sibling is deleted by the next placement, and an old output it
had set aside mid-swap is put back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storage.placement import place_built


def dead_pid() -> int:
    """The pid of a process that has exited (reaped, so nothing runs under it)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_folder(text: str):
    def build(staging: Path) -> None:
        staging.mkdir()
        (staging / "a.txt").write_text(text)

    return build


def test_half_built_sibling_of_a_dead_process_is_deleted(tmp_path):
    leftover = tmp_path / f".creating-{dead_pid()}-0123456789ab-out"
    leftover.mkdir()
    place_built(tmp_path / "out", write_folder("new"), overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "a.txt").read_text() == "new"


def test_old_output_set_aside_by_a_dead_swap_is_put_back(tmp_path):
    aside = tmp_path / f".replaced-{dead_pid()}-0123456789ab-out"
    write_folder("old")(aside)  # killed between renaming the old output aside and renaming the new one in
    place_built(tmp_path / "other", write_folder("x"), overwrite=False)  # another name: not this one's leftover
    assert aside.exists()
    with pytest.raises(FileExistsError, match="already exists"):  # the old output is back, so it is not replaced
        place_built(tmp_path / "out", write_folder("new"), overwrite=False)
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    place_built(tmp_path / "out", write_folder("new"), overwrite=True)
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]


def test_siblings_of_a_live_process_are_left_alone(tmp_path):
    mine = tmp_path / ".creating-1-0123456789ab-out"  # pid 1 always runs
    mine.mkdir()
    place_built(tmp_path / "out", write_folder("new"), overwrite=False)
    assert mine.exists()


def test_a_file_keeps_its_suffix_while_staged(tmp_path):
    seen: list[str] = []

    def build(staging: Path) -> None:
        seen.append(staging.name)
        staging.write_bytes(b"x")

    place_built(tmp_path / "v.nii.gz", build, overwrite=False)
    assert seen[0].endswith("-v.nii.gz") and seen[0].startswith(".creating-")
    assert (tmp_path / "v.nii.gz").read_bytes() == b"x"

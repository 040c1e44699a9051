"""Which files of a source can be CT: volume files by name (.nii.gz, .nii, .inv3, .npy) and DICOM files by their
first bytes, judged without decoding anything or importing a reader, so `need` can tell in a moment that a SRC holds
nothing to ingest. storage.readers.series (discovery) uses the same volume formats.

A DICOM file is either marked (a 128-byte preamble, then "DICM") or, as some scanners write it, starts straight with
its first element; discovery accepts such a file only when it holds Modality, Rows and SeriesInstanceUID, so its
first element is of group 0002 (file meta) or 0008 (Modality's group), in either byte order.
"""

from __future__ import annotations

import os
from pathlib import Path

VOLUME_FORMATS = ((".nii.gz", "nifti"), (".nii", "nifti"), (".inv3", "inv3"), (".npy", "npy"))
DICOM_PREAMBLE = 128
DICOM_MAGIC = b"DICM"
UNMARKED_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")  # little / big endian


def volume_format(path: Path) -> str | None:
    """The volume format of a file by its extension, None for a possible DICOM file."""
    name = path.name.lower()
    return next((fmt for suffix, fmt in VOLUME_FORMATS if name.endswith(suffix)), None)


def may_be_dicom(path: Path) -> bool:
    """Whether a file's first bytes are those of a DICOM file, marked or not (see the module docstring)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(DICOM_PREAMBLE + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_PREAMBLE:] == DICOM_MAGIC or head[:2] in UNMARKED_DICOM_GROUPS


def first_candidate(source: Path) -> Path | None:
    """The first file of `source` (a file, or a folder walked recursively) that is a volume file or may be DICOM;
    None when no file is."""
    if source.is_file():
        return source if volume_format(source) or may_be_dicom(source) else None
    for folder, _, names in os.walk(source):
        for name in sorted(names):
            path = Path(folder) / name
            if path.is_file() and (volume_format(path) or may_be_dicom(path)):
                return path
    return None


def volume_suffixes() -> str:
    """The volume file names discovery takes, for messages: ".nii.gz, .nii, .inv3 or .npy"."""
    suffixes = [suffix for suffix, _ in VOLUME_FORMATS]
    return ", ".join(suffixes[:-1]) + f" or {suffixes[-1]}"

"""Errors raised by the archive, so callers can tell a wrong path, a foreign store, a busy lock and a bad argument
apart."""

from __future__ import annotations


class ArchiveError(Exception):
    """Base class of every archive error."""


class ArchiveNotFoundError(ArchiveError, FileNotFoundError):
    """No archive exists at the given path."""


class ArchiveSchemaError(ArchiveError):
    """The path holds a store that is not a valid archive of this schema version (the message says what is wrong)."""


class ArchiveExistsError(ArchiveError, FileExistsError):
    """Creating an archive where something already exists (an archive, or foreign data that is never deleted)."""


class ArchiveLockedError(ArchiveError):
    """Another process holds the named lock of this archive."""


class ArchiveInputError(ArchiveError, ValueError):
    """An argument does not fit the archive: wrong shape, non-finite data, slice out of range, unknown variable..."""


class UnknownDoseError(ArchiveInputError):
    """A dose fraction that the archive does not hold."""


class CorruptChunkError(ArchiveError):
    """Stored chunks of a variable fail their checksum or do not decode: an error no retry heals.

    `slices` maps each bad slice to why (e.g. "checksum mismatch in its stored chunk c/0/9/0/0"); `dose` is None for
    a variable without a dose dim. The message names the study, variable, slices and dose and says how to mend it.
    """

    def __init__(self, study: str, variable: str, slices: dict[int, str], dose: float | None, remedy: str) -> None:
        self.study, self.variable, self.slices, self.dose, self.remedy = study, variable, dict(slices), dose, remedy
        super().__init__("; ".join(self.slice_message(s) for s in sorted(self.slices)))

    def __reduce__(self) -> tuple:  # rebuilt from its fields, so it crosses process boundaries (Dask) intact
        return (type(self), (self.study, self.variable, self.slices, self.dose, self.remedy))

    def slice_message(self, slice_index: int) -> str:
        """The error of one bad slice, for its ledger cell."""
        where = slice_label(self.study, self.variable, slice_index, self.dose)
        return f"{where} is corrupt ({self.slices[slice_index]}): {self.remedy}"


def slice_label(study: str, variable: str, slice_index: int, dose: float | None) -> str:
    """How messages name one slice of a variable: "study-abc: proj_ld slice 9 at dose 0.25"."""
    at_dose = f" at dose {dose:g}" if dose is not None else ""
    return f"{study}: {variable} slice {slice_index}{at_dose}"

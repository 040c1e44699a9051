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

"""De-identification: a subject (patient) and each study are known only by salted hashes of their identifiers
(subject_key, study_key), never by the identifiers.

The salt comes from the environment variable NEED_DEID_SALT; without it DEFAULT_SALT is used, which keeps keys
stable across runs but lets anyone holding a guessed ID recompute them. Set NEED_DEID_SALT (a secret kept
outside the archive) for real patient data.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SALT_ENV = "NEED_DEID_SALT"
DEFAULT_SALT = "need-pipeline-public-default-salt"

# DICOM keywords of the tags never copied out of a file (identity, dates, places, people, free text, UIDs).
IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "PatientAge",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientComments",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
        "StudyID",
        "AccessionNumber",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "StudyTime",
        "SeriesTime",
        "AcquisitionTime",
        "ContentTime",
        "InstitutionName",
        "InstitutionAddress",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "StationName",
        "DeviceSerialNumber",
        "StudyDescription",
        "SeriesDescription",
        "RequestingPhysician",
        "ImageComments",
    }
)


def deid_salt() -> str:
    """The salt for subject and study keys: $NEED_DEID_SALT if set and non-empty, else DEFAULT_SALT."""
    return os.environ.get(SALT_ENV) or DEFAULT_SALT


def subject_key(*identifiers: str, salt: str | None = None) -> str:
    """A stable pseudonym 'subj-<16 hex>' of the identifiers (e.g. PatientID): HMAC-SHA256 with the salt."""
    return f"subj-{_keyed_digest('', identifiers, salt, 'subject_key', 'PatientID')}"


def study_key(*identifiers: str, salt: str | None = None) -> str:
    """A stable pseudonym 'study-<16 hex>' of one study's identifiers (e.g. "dicom-series", SeriesInstanceUID).

    Same salt as subject_key but domain-separated, so a study key never equals the subject key of the same values.
    """
    return f"study-{_keyed_digest('study', identifiers, salt, 'study_key', 'SeriesInstanceUID')}"


def _keyed_digest(domain: str, identifiers: tuple[str, ...], salt: str | None, name: str, example: str) -> str:
    """The first 16 hex digits of HMAC-SHA256(salt, [domain \\x1f] identifiers joined by \\x1f)."""
    if not identifiers or not any(str(part) for part in identifiers):
        raise ValueError(f"{name} needs at least one non-empty identifier (e.g. {example})")
    parts = [domain, *identifiers] if domain else list(identifiers)
    message = "\x1f".join(str(part) for part in parts).encode()
    return hmac.new((salt if salt is not None else deid_salt()).encode(), message, hashlib.sha256).hexdigest()[:16]

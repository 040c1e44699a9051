"""De-identification: a subject is known only by a salted hash of its identifiers, never by the identifiers.

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
    """The salt for subject keys: $NEED_DEID_SALT if set and non-empty, else DEFAULT_SALT."""
    return os.environ.get(SALT_ENV) or DEFAULT_SALT


def subject_key(*identifiers: str, salt: str | None = None) -> str:
    """A stable pseudonym 'subj-<16 hex>' of the identifiers (e.g. PatientID, StudyInstanceUID): HMAC-SHA256 with the
    salt."""
    if not identifiers or not any(str(part) for part in identifiers):
        raise ValueError("subject_key needs at least one non-empty identifier (e.g. PatientID or StudyInstanceUID)")
    message = "\x1f".join(str(part) for part in identifiers).encode()
    digest = hmac.new((salt if salt is not None else deid_salt()).encode(), message, hashlib.sha256).hexdigest()
    return f"subj-{digest[:16]}"

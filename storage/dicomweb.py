"""A PACS over DICOMweb (dicomweb-client): find CT series with QIDO-RS, retrieve them instance by instance with
WADO-RS into a folder (resumable), store files with STOW-RS, and count a series' instances.

    pacs = connect("http://pacs:8042/dicom-web")        # credentials: $NEED_DICOMWEB_USER / $NEED_DICOMWEB_PASSWORD
    for series in pacs.search_ct_series(since="20260101"):
        pacs.retrieve_series(series, folder)

Retrieved files are the PACS's own: they carry patient identifiers until the ingest de-identifies them, so the
folder they go to must be private and emptied once the series is ingested (flows.pacs does both). Every failure
of the server (unreachable, not DICOMweb, credentials refused) raises a DicomwebError whose one-line message names
the server (never a password).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass

from storage.deid import study_key

USER_ENV = "NEED_DICOMWEB_USER"
PASSWORD_ENV = "NEED_DICOMWEB_PASSWORD"
TIMEOUT_S = (10.0, 120.0)  # connect, read
STORE_BATCH = 32  # instances per STOW-RS request
PART_SUFFIX = ".part"


class DicomwebError(RuntimeError):
    """The DICOMweb server cannot be used as asked; the message names the server and what to do."""


class PacsUnreachable(DicomwebError):
    """Nothing answers at the server's address (connection refused, unknown host, timeout)."""


class NotDicomweb(DicomwebError):
    """The server answers, but not as a DICOMweb service (wrong URL or path prefix)."""


class PacsAuthError(DicomwebError):
    """The server refuses the request for want of valid credentials (HTTP 401 or 403)."""


class NoCtSeries(DicomwebError, ValueError):
    """The query found no CT series to pull."""


@dataclass(frozen=True)
class RemoteSeries:
    """One series on the PACS, as QIDO-RS describes it. Its UIDs identify the patient's data: keep them off the
    catalog (the ingest keys studies by a salted hash of the series UID)."""

    study_uid: str
    series_uid: str
    modality: str
    number: str
    instances: int | None

    @property
    def key(self) -> str:
        """The catalog key the ingest gives this series' study (a salted hash of the series UID)."""
        return study_key("dicom-series", self.series_uid)

    @property
    def label(self) -> str:
        """How messages (and so Prefect's logs) name the series: its number, modality and catalog key, never its
        UIDs, which identify the patient's data (`need info` lists the key; the PACS shows the number)."""
        number = f"series {self.number}" if self.number else "a series"
        return f"{number} ({self.modality}, {self.key})"


@dataclass(frozen=True)
class Retrieval:
    """What retrieve_series did: instances `fetched` now, `present` from an earlier (cut-off) run, and the files."""

    folder: Path
    fetched: int
    present: int
    files: tuple[Path, ...]


def public_url(url: str) -> str:
    """The URL without any user:password@ part, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def parse_dicom_date(text: str) -> str:
    """A DICOM date YYYYMMDD, checked to be a real calendar date; ValueError otherwise."""
    if not re.fullmatch(r"\d{8}", text or ""):
        raise ValueError(f"dates must be YYYYMMDD (e.g. 20260131); got {text!r}")
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise ValueError(f"{text!r} is not a calendar date (YYYYMMDD)") from None
    return text


def connect(url: str, user: str | None = None, password: str | None = None) -> Pacs:
    """A client of the DICOMweb service at `url` (e.g. http://host:8042/dicom-web); HTTP basic auth with `user` and
    `password`, by default $NEED_DICOMWEB_USER and $NEED_DICOMWEB_PASSWORD (none when unset)."""
    return Pacs(url, user if user is not None else os.environ.get(USER_ENV), password or os.environ.get(PASSWORD_ENV))


class Pacs:
    """A DICOMweb service; every call turns HTTP and connection failures into DicomwebError naming the server."""

    def __init__(self, url: str, user: str | None = None, password: str | None = None) -> None:
        self.url = public_url(url.rstrip("/"))
        if not url.startswith(("http://", "https://")):
            raise NotDicomweb(f"{self.url or url!r} is not a DICOMweb URL; expected http(s)://host:port/prefix")
        session = create_session_from_user_pass(user, password or "") if user else requests.Session()
        try:
            self.client = DICOMwebClient(url.rstrip("/"), session=session, timeout=TIMEOUT_S)
        except ValueError as err:
            raise NotDicomweb(f"{self.url}: {err}") from None
        self.client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=250)  # ~1.5 s of retries
        self.authenticated = bool(user)

    def check(self) -> None:
        """Fail now (DicomwebError) unless the server answers a QIDO-RS search."""
        with self._errors("searching studies"):
            found = self.client.search_for_studies(limit=1)
        _datasets(found, self.url)

    def search_ct_series(
        self, study: str | None = None, since: str | None = None, until: str | None = None
    ) -> list[RemoteSeries]:
        """The CT series of one study (by StudyInstanceUID), or of every study dated `since`..`until` (YYYYMMDD,
        inclusive, either open). NoCtSeries when there are none, saying what was found instead."""
        if study is not None:
            found = self._series(study_instance_uid=study)
            if not found:
                raise NoCtSeries(f"{self.url} holds no study {study}")
            ct = [series for series in found if series.modality == "CT"]
            if not ct:
                modalities = ", ".join(sorted({series.modality for series in found}))
                raise NoCtSeries(f"study {study} on {self.url} has no CT series (only {modalities}): nothing to pull")
            return ct
        dates = "" if since is None and until is None else f"{since or ''}-{until or ''}"
        filters = {"Modality": "CT", **({"StudyDate": dates} if dates else {})}
        ct = [series for series in self._series(search_filters=filters) if series.modality == "CT"]
        if not ct:
            window = f" dated {dates}" if dates else ""
            raise NoCtSeries(f"{self.url} holds no CT series{window}: nothing to pull")
        return ct

    def instance_uids(self, series: RemoteSeries) -> list[str]:
        """The SOPInstanceUIDs of a series' instances (QIDO-RS)."""
        with self._errors(f"searching the instances of {series.label}"):
            found = self.client.search_for_instances(
                series.study_uid, series.series_uid, fields=["SOPInstanceUID"], get_remaining=True
            )
        return sorted({_value(item, "00080018") for item in _datasets(found, self.url)} - {""})

    def retrieve_series(self, series: RemoteSeries, folder: Path) -> Retrieval:
        """WADO-RS every instance of `series` not yet in `folder` (one file per instance, named by a hash of its
        UID, written aside and renamed in), so a retrieval cut off midway resumes where it stopped. The files hold
        the patient's identifiers: `folder` must be private, and emptied once the series is ingested."""
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f"*{PART_SUFFIX}"):
            leftover.unlink()  # a write cut off midway
        uids = self.instance_uids(series)
        names = {f"{_digest(uid)}.dcm" for uid in uids}
        for stale in folder.glob("*.dcm"):
            if stale.name not in names:
                stale.unlink()  # an instance since deleted on the server
        files, fetched = [], 0
        for uid in uids:
            path = folder / f"{_digest(uid)}.dcm"
            files.append(path)
            if path.exists():
                continue
            with self._errors(f"retrieving an instance of {series.label}"):
                dataset = self.client.retrieve_instance(series.study_uid, series.series_uid, uid)
            partial = path.with_name(path.name + PART_SUFFIX)
            dataset.save_as(partial, enforce_file_format=True)
            os.replace(partial, path)
            fetched += 1
        return Retrieval(folder, fetched, len(uids) - fetched, tuple(files))

    def store(self, files: Sequence[Path]) -> None:
        """STOW-RS the DICOM files, STORE_BATCH per request; DicomwebError naming the first refused instance."""
        for first in range(0, len(files), STORE_BATCH):
            batch = files[first : first + STORE_BATCH]
            datasets = [pydicom.dcmread(path) for path in batch]
            with self._errors(f"storing {batch[0].parent.name}"):
                response = self.client.store_instances(datasets)
            refused = response.get("FailedSOPSequence") or []
            if refused:
                reason = refused[0].get("FailureReason", "?")
                raise DicomwebError(
                    f"{self.url} refused {len(refused)} of {len(batch)} instances of {batch[0].parent.name} "
                    f"(first failure reason {reason})"
                )

    def series_instances(self, study_uid: str, series_uid: str) -> int:
        """How many instances of the series the server holds (0 when it has none): QIDO-RS."""
        found = self._series(study_instance_uid=study_uid, search_filters={"SeriesInstanceUID": series_uid})
        return sum(series.instances or 0 for series in found if series.series_uid == series_uid)

    def _series(self, **query: Any) -> list[RemoteSeries]:
        """QIDO-RS series search."""
        what = f"searching study {query['study_instance_uid']}" if "study_instance_uid" in query else "searching"
        with self._errors(what):
            found = self.client.search_for_series(get_remaining=True, **query)
        return [
            RemoteSeries(
                study_uid=_value(item, "0020000D"),
                series_uid=_value(item, "0020000E"),
                modality=_value(item, "00080060") or "missing",
                number=_value(item, "00200011"),
                instances=int(count) if (count := _value(item, "00201209")).isdigit() else None,
            )
            for item in _datasets(found, self.url)
        ]

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn the ways an HTTP request fails into one DicomwebError line naming the server and `what` was done."""
        try:
            yield
        except requests.exceptions.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            if status in (401, 403):
                hint = "check" if self.authenticated else "set"
                raise PacsAuthError(
                    f"{self.url} refused the credentials (HTTP {status}) while {what}: {hint} {USER_ENV} and "
                    f"{PASSWORD_ENV}"
                ) from None
            if status in (404, 405, 501):
                raise NotDicomweb(
                    f"{self.url} answered HTTP {status} while {what}: not a DICOMweb service at this URL (Orthanc's "
                    "is http://host:8042/dicom-web)"
                ) from None
            raise DicomwebError(f"{self.url} answered HTTP {status} while {what}") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            why = "timed out" if isinstance(err, requests.exceptions.Timeout) else "connection refused or host unknown"
            raise PacsUnreachable(f"cannot reach the DICOMweb server {self.url} ({why}) while {what}") from None
        except requests.exceptions.JSONDecodeError:
            raise NotDicomweb(
                f"{self.url} answered, but not with DICOM JSON, while {what}: not a DICOMweb service"
            ) from None
        except requests.exceptions.RequestException as err:  # a transfer broken off midway, a bad response...
            raise DicomwebError(
                f"the transfer from {self.url} broke off while {what} ({type(err).__name__}); rerun to resume"
            ) from None


def _datasets(found: object, url: str) -> list[dict[str, Any]]:
    """QIDO-RS results as DICOM JSON datasets; NotDicomweb when the server sent something else."""
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise NotDicomweb(f"{url} answered a search with something other than DICOM JSON: not a DICOMweb service")
    return found


def _value(item: dict[str, Any], tag: str) -> str:
    """The first value of a DICOM JSON attribute as text ("" when absent)."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _digest(uid: str) -> str:
    """A file or folder name for a UID that does not spell the UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:20]


def staging_name(series_uid: str) -> str:
    """The staging folder name of a series: a hash of its UID (UIDs are identifiers, and look like one to labels)."""
    return _digest(series_uid)

"""Where the tracking store is ($MLFLOW_TRACKING_URI, else `mlflow.db` in the working directory) and whether it can
be reached and written, judged without MLflow (not even imported), so `need` can refuse an unusable store in a
moment, before any server starts; flows.tracking.store then queries it with MLflow.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from storage.writable import NotWritableError, require_writable_dir

DEFAULT_DB_NAME = "mlflow.db"
CONNECT_TIMEOUT_S = 3.0


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used (invalid URI, unreachable server, missing or read-only directory, corrupt
    database)."""


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an absolute `sqlite:///…/mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB_NAME}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///relative` or `sqlite:////absolute` URI (None for an in-memory database)."""
    rest = uri[len("sqlite://") :].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(rest[1:]).resolve()


def check_tracking_location(uri: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless the store at `uri` is of a known kind and can be reached (a server: accepts
    a connection) and written (a SQLite database or a folder store: its folder exists and takes new files)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "sqlite":
        database = sqlite_path(uri)
        if database is not None:
            _require_store_folder(uri, database.parent)
            if database.exists():
                _require_writable_file(uri, database)
    elif scheme in ("http", "https"):
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            with socket.create_connection((parsed.hostname or "", port), timeout=timeout_s):
                pass
        except OSError as err:
            raise TrackingUnavailable(
                f"tracking server {uri} is unreachable ({err}); start it, fix "
                "MLFLOW_TRACKING_URI, or pass --no-tracking to run without tracking"
            ) from err
    elif scheme in ("", "file"):
        folder = Path(unquote(parsed.path) if scheme == "file" else uri)
        _require_store_folder(uri, folder if folder.is_dir() else folder.parent)
    else:
        raise TrackingUnavailable(
            f"tracking URI {uri!r} has an unsupported scheme {scheme!r}; expected "
            "sqlite:///PATH, http(s)://HOST:PORT or a local folder"
        )


def store_can_answer(uri: str) -> bool:
    """Whether a lookup in the store at `uri` is worth trying, decided in at most a second and without creating it: a
    SQLite database that does not exist yet, or a store check_tracking_location refuses, has nothing to give."""
    if urlparse(uri).scheme.lower() == "sqlite":
        database = sqlite_path(uri)
        if database is None or not database.is_file():
            return False
    try:
        check_tracking_location(uri, timeout_s=1.0)
    except TrackingUnavailable:
        return False
    return True


def _require_store_folder(uri: str, folder: Path) -> None:
    """The folder of a local store must exist and take new files (SQLite writes its journal beside the database)."""
    if not folder.is_dir():
        raise TrackingUnavailable(
            f"tracking store {uri}: directory {folder} does not exist; create it, set MLFLOW_TRACKING_URI to a "
            "usable store, or pass --no-tracking"
        )
    try:
        require_writable_dir(folder, "its directory")
    except NotWritableError as err:
        raise TrackingUnavailable(
            f"tracking store {uri}: {err}; set MLFLOW_TRACKING_URI to a writable store, or pass --no-tracking"
        ) from None


def _require_writable_file(uri: str, database: Path) -> None:
    """An existing SQLite database must open for writing (opened and closed; nothing is changed)."""
    try:
        with database.open("r+b"):
            pass
    except OSError as err:
        raise TrackingUnavailable(
            f"tracking store {uri}: database {database} cannot be written ({err.strerror or err}); set "
            "MLFLOW_TRACKING_URI to a writable store, or pass --no-tracking"
        ) from None

"""A catalog's studies as MLflow dataset inputs of a run: the study table rows used, named after the catalog, with the
catalog's digest of those rows, in a context ("training", "validation", "evaluation").

MLflow keeps one input per dataset (name and digest) and run, with the context it was first logged in: a single study
split by slices, which both trains and validates, shows as its training input only.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import mlflow.data
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.entities import Dataset, DatasetInput, InputTag

from flows.tracking.store import Tracker
from storage.catalog import Catalog, StudyRow

CONTEXT_TAG = "mlflow.data.context"


def catalog_name(catalog: Catalog) -> str:
    """The catalog folder's name without `.zarr`."""
    return Path(catalog.path).resolve().name.removesuffix(".zarr")


def catalog_dataset(catalog: Catalog, rows: Sequence[StudyRow]) -> PandasDataset:
    """The rows (one per study, the table's columns) as an MLflow dataset of the catalog, digest `catalog.digest`."""
    frame = pd.DataFrame(
        [dataclasses.asdict(row) for row in rows], columns=[f.name for f in dataclasses.fields(StudyRow)]
    )
    return mlflow.data.from_pandas(
        frame, source=str(Path(catalog.path).resolve()), name=catalog_name(catalog), digest=catalog.digest(rows)
    )


def log_catalog_inputs(tracker: Tracker, run_id: str, catalog: Catalog, rows: Sequence[StudyRow], context: str) -> None:
    """Log the studies `rows` of `catalog` as a dataset input of the run, in `context`."""
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice (schemes "" and "file") and warns that a path is ambiguous;
        # and it hints at integer columns for model signatures, which a study table is not.
        warnings.filterwarnings(
            "ignore", message="The specified dataset source can be interpreted", category=UserWarning
        )
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        fields = catalog_dataset(catalog, rows).to_dict()  # name, digest, source, source_type, schema, profile
    dataset = Dataset(**fields)
    tracker.client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(key=CONTEXT_TAG, value=context)])])

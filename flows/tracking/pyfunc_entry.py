"""The models-from-code entry of registered NEED models: MLflow runs this file when a version is loaded with
`mlflow.pyfunc.load_model`, and the model's `model_config` names its kind (flows.tracking.mlflow_model)."""

from mlflow.models import set_model

from flows.tracking.mlflow_model import CheckpointModel

set_model(CheckpointModel())

"""NEED science core: physics, diffusion models, matching, metrics. No Prefect, MLflow or Zarr here."""

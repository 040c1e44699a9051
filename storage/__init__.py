"""The dataset archive (Zarr v3 + xarray), volume readers, the per-slice ledger and checkpoints."""

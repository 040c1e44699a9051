"""Prefect flows wiring the tasks: ingest, train, reconstruct, evaluate, demo."""

"""Thin Prefect tasks over need_core and storage: one task is one chunk of slices."""

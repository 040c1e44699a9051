"""Version numbers recorded in archives, free of torch and astra so that storage can read them cheaply."""

SIMULATOR_VERSION = 2
"""Recorded in every archive, so data simulated by other rules is never mixed in: 1 = HU not clipped (until
2026-12), 2 = HU clipped at AIR_HU."""

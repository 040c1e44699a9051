"""Per-slice random streams: every random draw for a slice comes from (seed, stream, slice) alone.

SPDiff's Poisson steps and DGDiff's Gaussian steps draw each slice's noise from its own CPU generator, so a result
does not depend on which slices share a batch, a chunk, a worker or the order chunks run in, and is the same on
every device. A stream is a tuple of integers naming what is sampled (study, dose, stage), so two doses or two
stages of one slice never share draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

SPDIFF_STAGE = 1
DGDIFF_STAGE = 2
DOSE_RESOLUTION = 1_000_000  # a dose enters a stream as an integer number of parts per million


def text_key(text: str) -> int:
    """A stable 63-bit integer for a string (a study key, a settings hash) to place in a stream."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def dose_key(dose: float) -> int:
    """The dose fraction as an integer for a stream (0.25 -> 250000)."""
    return round(float(dose) * DOSE_RESOLUTION)


def slice_generator(seed: int, slice_id: int, stream: Sequence[int] = ()) -> torch.Generator:
    """A CPU generator for one slice of one stream, derived from (seed, *stream, slice_id) by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed), *map(int, stream), int(slice_id)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def slice_generators(seed: int, slice_ids: Sequence[int], stream: Sequence[int] = ()) -> list[torch.Generator]:
    """One `slice_generator` per slice id."""
    return [slice_generator(seed, s, stream) for s in slice_ids]


def reconstruction_stream(study: str, dose: float, stage: int) -> tuple[int, int, int]:
    """The stream of one stage (SPDIFF_STAGE, DGDIFF_STAGE) reconstructing one study at one dose."""
    return text_key(study), dose_key(dose), int(stage)

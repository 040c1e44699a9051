"""Data splits: which slices train the models and which are held out for every quality figure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SliceSplit:
    """Training and held-out slice indices; the gap between them is left unused (neighbouring slices correlate)."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]

    def __post_init__(self) -> None:
        overlap = set(self.train) & set(self.heldout)
        if overlap:
            raise ValueError(f"training and held-out slices overlap: {sorted(overlap)}")


# The bundled head CT (108 slices, 1.5 mm apart): train 0-39 and 70-105, hold out 45-64, gaps 40-44 and 65-69.
HEAD_CT_SPLIT = SliceSplit(
    train=tuple(range(0, 40)) + tuple(range(70, 106)),
    heldout=tuple(range(45, 65)),
)

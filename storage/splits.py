"""Data splits: patient-level splits of a catalog's studies (train / val / test by subject, never by slice across
patients), and the slice-level split inside the one bundled head CT."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SliceSplit:
    """Training, validation and held-out (evaluation) slice indices, pairwise disjoint; slices between the sets stay
    unused, because neighbouring slices correlate."""

    train: tuple[int, ...]
    heldout: tuple[int, ...]
    validation: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        named = {"training": set(self.train), "held-out": set(self.heldout), "validation": set(self.validation)}
        for first, second in (("training", "held-out"), ("training", "validation"), ("validation", "held-out")):
            overlap = named[first] & named[second]
            if overlap:
                raise ValueError(f"{first} and {second} slices overlap: {sorted(overlap)}")


# The bundled head CT (108 slices, 1.5 mm apart): train 0-39 and 70-105, evaluate 45-64; validation (training
# curves, calibration, baseline parameters) 40-42 and 67-69, held back from training and 3 slices (4.5 mm) away from
# the evaluation slices; 43-44 and 65-66 unused.
HEAD_CT_SPLIT = SliceSplit(
    train=tuple(range(0, 40)) + tuple(range(70, 106)),
    heldout=tuple(range(45, 65)),
    validation=(40, 41, 42, 67, 68, 69),
)


class SplitError(ValueError):
    """A patient-level split cannot be made as asked (a set would be empty, a subject would straddle sets...)."""


def _subject_order(subject: str, seed: int) -> str:
    """A seeded, stable shuffle key of a subject pseudonym."""
    return hashlib.sha256(f"{seed}\x1f{subject}".encode()).hexdigest()


def patient_splits(
    studies: Sequence[tuple[str, str, str]], test: float, val: float, seed: int = 0, reassign: bool = False
) -> dict[str, str]:
    """Assign "train" / "val" / "test" by subject: `studies` are (study key, subject, current split) triples.

    Subjects are shuffled by `seed`; `test` and `val` are fractions of the subjects (at least one subject each when
    positive). Subjects that already hold a split keep it unless `reassign`, so new series of a test patient go to
    test and a rerun after new arrivals moves nobody. A set asked for but left empty is refused (SplitError)."""
    if not 0 <= test < 1 or not 0 <= val < 1 or test + val >= 1:
        raise SplitError(f"--test and --val must be fractions in [0, 1) summing below 1, got {test:g} and {val:g}")
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for key, subject, split in studies:
        by_subject.setdefault(subject, []).append((key, "" if reassign else split))
    fixed: dict[str, str] = {}
    for subject, entries in by_subject.items():
        held = {split for _, split in entries if split}
        if len(held) > 1:
            raise SplitError(f"subject {subject} has studies in several splits {sorted(held)}: pass --reassign")
        if held:
            fixed[subject] = held.pop()
    n_subjects = len(by_subject)
    shares = {"test": test, "val": val}
    wanted = {name: max(1, round(share * n_subjects)) if share > 0 else 0 for name, share in shares.items()}
    free = sorted((s for s in by_subject if s not in fixed), key=lambda s: _subject_order(s, seed))
    assigned = dict(fixed)
    keep_for_train = 0 if "train" in fixed.values() else 1
    for name in ("test", "val"):
        missing = wanted[name] - sum(1 for split in fixed.values() if split == name)
        while missing > 0 and len(free) > keep_for_train:
            assigned[free.pop(0)] = name
            missing -= 1
    for subject in free:
        assigned[subject] = "train"
    counts = {name: sum(1 for split in assigned.values() if split == name) for name in ("train", "val", "test")}
    empty = [name for name in ("train", "val", "test") if counts[name] == 0 and (name == "train" or wanted[name])]
    if empty:
        raise SplitError(
            f"a split of {n_subjects} subject(s) with --test {test:g} --val {val:g} would leave {', '.join(empty)} "
            f"empty (train/val/test subjects: {counts['train']}/{counts['val']}/{counts['test']}); "
            "ingest more patients or lower the fractions"
        )
    return {key: assigned[subject] for subject, entries in by_subject.items() for key, _ in entries}


def explicit_splits(studies: Sequence[tuple[str, str]], lists: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Splits from explicit study lists ({"train": [...], "val": [...], "test": [...]}); `studies` are (key,
    subject) pairs. Every study of a listed subject must be listed in the same set, and train must not be empty."""
    subject_of = dict(studies)
    chosen: dict[str, str] = {}
    for split, keys in lists.items():
        for key in keys:
            if key not in subject_of:
                raise SplitError(f"study {key!r} is not an ingested study of the catalog")
            if chosen.get(key, split) != split:
                raise SplitError(f"study {key} is listed in both {chosen[key]} and {split}")
            chosen[key] = split
    if not any(split == "train" for split in chosen.values()):
        raise SplitError("the train set would be empty: list at least one study with --train")
    for key, split in chosen.items():
        siblings = [other for other, subject in studies if subject == subject_of[key]]
        straddling = sorted(other for other in siblings if chosen.get(other) != split)
        if straddling:
            raise SplitError(
                f"subject {subject_of[key]} would straddle splits: study {key} is in {split} but its studies "
                f"{straddling} are in {sorted({chosen.get(o) or 'none' for o in straddling})}; list them together"
            )
    return chosen

"""Sampling profiles: the sampling settings NEED_SPEC.md §4 lets us calibrate (SPDiff's ending and DGDiff's guidance),
per dose, for one pair of models; the spec's values are the profile named `reference`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from need_core.dgdiff.matching import REFERENCE_GUIDANCE, GuidanceSettings
from need_core.spdiff.sampler import ENDINGS as SPDIFF_ENDINGS

REFERENCE_NAME = "reference"


class SamplingProfileError(ValueError):
    """A sampling profile is malformed or belongs to other models."""


@dataclass(frozen=True)
class DoseSampling:
    """The sampling settings used at one dose: SPDiff's ending and DGDiff's guidance."""

    spdiff_ending: str = "chain"
    guidance: GuidanceSettings = REFERENCE_GUIDANCE

    def __post_init__(self) -> None:
        if self.spdiff_ending not in SPDIFF_ENDINGS:
            raise SamplingProfileError(f"spdiff_ending must be one of {SPDIFF_ENDINGS}, got {self.spdiff_ending!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the guidance's fields inline)."""
        return {"spdiff_ending": self.spdiff_ending, **self.guidance.to_dict()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DoseSampling:
        """Inverse of `to_dict`; missing guidance fields take the reference values."""
        rest = {k: v for k, v in values.items() if k != "spdiff_ending"}
        return cls(str(values.get("spdiff_ending", "chain")), GuidanceSettings.from_dict(rest))


REFERENCE_DOSE_SAMPLING = DoseSampling()


@dataclass(frozen=True)
class SamplingProfile:
    """Per-dose sampling settings; a dose between the calibrated ones takes the nearest in log dose, one outside
    them the nearest end. `models` holds the checkpoint digests ({"spdiff": …, "dgdiff": …}) it was calibrated for
    (empty for the reference, which fits every model)."""

    name: str = REFERENCE_NAME
    doses: tuple[float, ...] = ()
    settings: tuple[DoseSampling, ...] = ()
    models: tuple[tuple[str, str], ...] = ()
    calibration: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.doses) != len(self.settings):
            raise SamplingProfileError(
                f"profile {self.name!r}: {len(self.doses)} doses but {len(self.settings)} settings"
            )
        if any(not (math.isfinite(d) and 0 < d <= 1) for d in self.doses):
            raise SamplingProfileError(f"profile {self.name!r}: doses must lie in (0, 1], got {list(self.doses)}")

    @property
    def is_reference(self) -> bool:
        """True when every dose uses the spec's settings."""
        return all(s == REFERENCE_DOSE_SAMPLING for s in self.settings)

    def at(self, dose: float) -> DoseSampling:
        """The settings for `dose`: those of the nearest calibrated dose in log dose (reference when there are none)."""
        if not self.doses:
            return REFERENCE_DOSE_SAMPLING
        nearest = min(range(len(self.doses)), key=lambda i: abs(math.log(self.doses[i]) - math.log(dose)))
        return self.settings[nearest]

    def fits(self, spdiff_identity: str, dgdiff_identity: str) -> bool:
        """Whether the profile was made for these checkpoints (the reference fits any)."""
        return not self.models or dict(self.models) == {"spdiff": spdiff_identity, "dgdiff": dgdiff_identity}

    def result_settings(self) -> dict[str, Any]:
        """What shapes results, for the result key: the per-dose settings (not the name, not how they were found)."""
        return {f"{d:g}": s.to_dict() for d, s in zip(self.doses, self.settings, strict=True)}

    def describe(self) -> str:
        """One line: the name and, per dose, the settings that differ from the reference."""
        if not self.doses:
            return f"{self.name} (the spec's settings at every dose)"
        parts = []
        reference = REFERENCE_DOSE_SAMPLING.to_dict()
        for dose, chosen in zip(self.doses, self.settings, strict=True):
            changed = {k: v for k, v in chosen.to_dict().items() if reference[k] != v}
            parts.append(f"{dose:g}: " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "reference"))
        return f"{self.name} ({'; '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored in profile files and MLflow tags."""
        return {
            "name": self.name,
            "models": dict(self.models),
            "doses": [{"dose": d, **s.to_dict()} for d, s in zip(self.doses, self.settings, strict=True)],
            "calibration": dict(self.calibration),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplingProfile:
        """Inverse of `to_dict`, with a clear error for a malformed profile."""
        try:
            entries = sorted(values.get("doses", []), key=lambda e: -float(e["dose"]))
            return cls(
                name=str(values["name"]),
                doses=tuple(float(e["dose"]) for e in entries),
                settings=tuple(DoseSampling.from_dict({k: v for k, v in e.items() if k != "dose"}) for e in entries),
                models=tuple(sorted((str(k), str(v)) for k, v in dict(values.get("models", {})).items())),
                calibration=dict(values.get("calibration", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SamplingProfileError(f"not a sampling profile: {err}") from err

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON (whole, then renamed into place: never a half-written file)."""
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        partial.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> SamplingProfile:
        """Read a profile file written by `save`."""
        source = Path(path)
        try:
            values = json.loads(source.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SamplingProfileError(f"cannot read sampling profile {source}: {err}") from err
        if not isinstance(values, dict):
            raise SamplingProfileError(f"{source} holds no sampling profile (a JSON object)")
        return cls.from_dict(values)


REFERENCE_SAMPLING = SamplingProfile()

"""Fan-beam CT geometry in millimetres (flat, equi-spaced detector), validated and serialisable.

Conventions follow ASTRA's `fanflat` geometry, so every backend agrees:
image row 0 is the top (+y), column 0 the left (-x), the isocentre is the image centre;
at view angle theta the source sits at D*(sin theta, -cos theta) and the detector
(n_det bins, bin 0 to n_det-1 along (cos theta, sin theta)) is centred on -d*(sin theta, -cos theta),
with D = source_iso_mm and d = iso_det_mm.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# NEED_SPEC.md §3 reference geometry, lengths in pixel units of a 512^2 image.
PAPER_IMAGE_SIZE = 512
PAPER_N_VIEWS = 672
PAPER_N_DET = 672
PAPER_SOURCE_ISO = 746.02
PAPER_ISO_DET = 615.18
PAPER_DET_SPACING = 2.72

FULL_SCAN_RAD = 2.0 * math.pi
# Extra detector bins beyond the image's circumscribed circle (each side) in `for_image`.
COVERAGE_MARGIN_BINS = 2


class GeometryError(ValueError):
    """A geometry field is out of range or the detector does not cover the image."""


def _pair(name: str, value: Any, cast: type) -> tuple:
    """Turn a scalar or a 2-sequence into a (y, x) tuple of `cast`, or raise GeometryError."""
    items = (value, value) if np.isscalar(value) else tuple(value)
    if len(items) != 2:
        raise GeometryError(f"{name} must be a pair (y, x), got {value!r}")
    try:
        pair = tuple(cast(v) for v in items)
    except (TypeError, ValueError) as err:
        raise GeometryError(f"{name} must hold two numbers, got {value!r}") from err
    if cast is int and any(float(v) != int(v) for v in items):
        raise GeometryError(f"{name} must hold whole numbers, got {value!r}")
    return pair


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise GeometryError unless value is finite and > 0 (>= 0 with allow_zero)."""
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise GeometryError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class FanBeamGeometry:
    """A circular fan-beam scan of a (ny, nx) image; all lengths in mm, angles in radians.

    det_spacing_mm is the bin pitch on the detector itself (not scaled to the isocentre).
    """

    image_shape: tuple[int, int]
    pixel_spacing_mm: tuple[float, float]
    n_views: int
    n_det: int
    det_spacing_mm: float
    source_iso_mm: float
    iso_det_mm: float
    angle_range_rad: float = FULL_SCAN_RAD
    angle_start_rad: float = -math.pi / 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", _pair("image_shape", self.image_shape, int))
        object.__setattr__(self, "pixel_spacing_mm", _pair("pixel_spacing_mm", self.pixel_spacing_mm, float))
        for name in ("n_views", "n_det"):
            value = getattr(self, name)
            if isinstance(value, bool) or float(value) != int(value):
                raise GeometryError(f"{name} must be a whole number >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("det_spacing_mm", "source_iso_mm", "iso_det_mm", "angle_range_rad", "angle_start_rad"):
            object.__setattr__(self, name, float(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        """Check every field's range, then that the fan covers the image's circumscribed circle."""
        if min(self.image_shape) < 1:
            raise GeometryError(f"image_shape must be positive (ny, nx), got {self.image_shape}")
        for spacing in self.pixel_spacing_mm:
            _positive("pixel_spacing_mm", spacing)
        for name in ("n_views", "n_det"):
            if getattr(self, name) < 1:
                raise GeometryError(f"{name} must be >= 1, got {getattr(self, name)}")
        _positive("det_spacing_mm", self.det_spacing_mm)
        _positive("source_iso_mm", self.source_iso_mm)
        _positive("iso_det_mm", self.iso_det_mm, allow_zero=True)
        if not (0.0 < self.angle_range_rad <= FULL_SCAN_RAD + 1e-9):
            raise GeometryError(f"angle_range_rad must be in (0, 2*pi], got {self.angle_range_rad!r}")
        if not math.isfinite(self.angle_start_rad):
            raise GeometryError(f"angle_start_rad must be finite, got {self.angle_start_rad!r}")
        radius = self.image_radius_mm
        if self.source_iso_mm <= radius:
            raise GeometryError(
                f"source_iso_mm={self.source_iso_mm:g} puts the source inside the image; expected > the image's "
                f"circumscribed radius {radius:.3f} mm"
            )
        needed = self.required_n_det(self.det_spacing_mm)
        if self.n_det < needed:
            raise GeometryError(
                f"detector does not cover the image: the fan must cover the circumscribed circle of radius "
                f"{radius:.3f} mm, which needs n_det >= {needed} at det_spacing_mm={self.det_spacing_mm:g}, "
                f"got n_det={self.n_det}"
            )

    # ---- derived quantities -------------------------------------------------------------------

    @property
    def magnification(self) -> float:
        """Source-detector over source-isocentre distance: detector lengths / lengths at the isocentre."""
        return (self.source_iso_mm + self.iso_det_mm) / self.source_iso_mm

    @property
    def det_spacing_iso_mm(self) -> float:
        """Detector bin pitch scaled to the isocentre (the sampling an object sees)."""
        return self.det_spacing_mm / self.magnification

    @property
    def image_radius_mm(self) -> float:
        """Radius of the image's circumscribed circle (half the diagonal of the field of view)."""
        (ny, nx), (dy, dx) = self.image_shape, self.pixel_spacing_mm
        return 0.5 * math.hypot(ny * dy, nx * dx)

    @property
    def angles(self) -> np.ndarray:
        """View angles (float64, radians): angle_start + k * angle_range / n_views, k = 0..n_views-1."""
        step = self.angle_range_rad / self.n_views
        return self.angle_start_rad + step * np.arange(self.n_views, dtype=np.float64)

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """Shape of one slice's projection data: (n_views, n_det)."""
        return (self.n_views, self.n_det)

    @property
    def is_full_scan(self) -> bool:
        """True when the views cover a full circle (2*pi), which the FBP backends require."""
        return math.isclose(self.angle_range_rad, FULL_SCAN_RAD, rel_tol=1e-9)

    def required_n_det(self, det_spacing_mm: float) -> int:
        """Smallest detector count at `det_spacing_mm` whose fan covers the image's circumscribed circle."""
        half_width_iso = self.source_iso_mm * math.tan(math.asin(self.image_radius_mm / self.source_iso_mm))
        half_width_det = half_width_iso * self.magnification
        return 2 * math.ceil(half_width_det / det_spacing_mm - 1e-9)

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def for_image(
        cls, image_shape: tuple[int, int], pixel_spacing_mm: float | tuple[float, float], **overrides: Any
    ) -> FanBeamGeometry:
        """The paper geometry scaled to an image so that the whole field of view is covered.

        views = round(672 * N / 512) with N = max(ny, nx); source-iso and iso-detector distances are
        746.02 and 615.18 per 512 pixel widths of the field of view; the detector samples about one pixel
        spacing at the isocentre and has enough bins (plus a margin) to cover the image diagonal.
        Any field may be overridden; derived defaults then use the overridden values.
        """
        shape = _pair("image_shape", image_shape, int)
        spacing = _pair("pixel_spacing_mm", pixel_spacing_mm, float)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)} - {"image_shape", "pixel_spacing_mm"}
        if unknown:
            raise GeometryError(f"unknown geometry field(s) {sorted(unknown)}; expected FanBeamGeometry fields")
        mm_per_paper_pixel = max(shape[0] * spacing[0], shape[1] * spacing[1]) / PAPER_IMAGE_SIZE
        fields: dict[str, Any] = {
            "image_shape": shape,
            "pixel_spacing_mm": spacing,
            "n_views": max(1, round(PAPER_N_VIEWS * max(shape) / PAPER_IMAGE_SIZE)),
            "source_iso_mm": PAPER_SOURCE_ISO * mm_per_paper_pixel,
            "iso_det_mm": PAPER_ISO_DET * mm_per_paper_pixel,
        }
        fields.update(overrides)
        magnification = (fields["source_iso_mm"] + fields["iso_det_mm"]) / fields["source_iso_mm"]
        fields.setdefault("det_spacing_mm", min(spacing) * magnification)
        if "n_det" not in fields:
            probe = cls(**{**fields, "n_det": 10**9})  # validates the other fields first
            fields["n_det"] = probe.required_n_det(fields["det_spacing_mm"]) + 2 * COVERAGE_MARGIN_BINS
        return cls(**fields)

    @classmethod
    def preset(cls, name: str, pixel_spacing_mm: float | tuple[float, float] = 1.0) -> FanBeamGeometry:
        """A named reference geometry. "paper": NEED_SPEC.md §3 (512^2, 672 views over 2*pi from -pi/2,
        672 bins; source-iso 746.02, iso-detector 615.18, bin 2.72 pixel units, scaled by the x spacing)."""
        if name != "paper":
            raise GeometryError(f"unknown geometry preset {name!r}; expected 'paper'")
        spacing = _pair("pixel_spacing_mm", pixel_spacing_mm, float)
        unit = spacing[1]
        return cls(
            image_shape=(PAPER_IMAGE_SIZE, PAPER_IMAGE_SIZE),
            pixel_spacing_mm=spacing,
            n_views=PAPER_N_VIEWS,
            n_det=PAPER_N_DET,
            det_spacing_mm=PAPER_DET_SPACING * unit,
            source_iso_mm=PAPER_SOURCE_ISO * unit,
            iso_det_mm=PAPER_ISO_DET * unit,
        )

    # ---- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (pairs as lists); from_dict(to_dict()) gives back an equal geometry."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FanBeamGeometry:
        """Rebuild from to_dict() output (e.g. archive attrs); unknown or missing keys raise GeometryError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise GeometryError(f"unknown geometry key(s) {sorted(unknown)}; expected a subset of {sorted(names)}")
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise GeometryError(f"incomplete geometry dict: {err}") from err

    def to_json(self) -> str:
        """JSON text of to_dict(); floats are written with full precision so the round trip is exact."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FanBeamGeometry:
        """Rebuild from to_json() output; malformed JSON raises GeometryError."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GeometryError(f"geometry JSON is malformed: {err}") from err
        if not isinstance(data, dict):
            raise GeometryError(f"geometry JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

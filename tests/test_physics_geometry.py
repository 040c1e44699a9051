"""FanBeamGeometry: paper preset, image-derived defaults, validation and exact serialisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from need_core.physics import FanBeamGeometry, GeometryError


def test_paper_preset_matches_need_spec_section_3():
    geometry = FanBeamGeometry.preset("paper", pixel_spacing_mm=0.5)
    assert geometry.image_shape == (512, 512)
    assert geometry.sinogram_shape == (672, 672)
    assert geometry.source_iso_mm == pytest.approx(746.02 * 0.5)
    assert geometry.iso_det_mm == pytest.approx(615.18 * 0.5)
    assert geometry.det_spacing_mm == pytest.approx(2.72 * 0.5)
    assert geometry.magnification == pytest.approx((746.02 + 615.18) / 746.02)
    assert geometry.angles[0] == pytest.approx(-math.pi / 2)
    assert np.diff(geometry.angles) == pytest.approx(np.full(671, 2 * math.pi / 672))


def test_for_image_scales_the_paper_geometry_to_a_256_head_ct():
    geometry = FanBeamGeometry.for_image((256, 256), 0.957)
    fov_scale = 256 * 0.957 / 512
    assert geometry.n_views == 336
    assert geometry.source_iso_mm == pytest.approx(746.02 * fov_scale)
    assert geometry.iso_det_mm == pytest.approx(615.18 * fov_scale)
    assert geometry.det_spacing_iso_mm == pytest.approx(0.957)
    # the fan covers the circumscribed circle, with a small margin only
    assert (
        geometry.required_n_det(geometry.det_spacing_mm)
        <= geometry.n_det
        <= geometry.required_n_det(geometry.det_spacing_mm) + 8
    )


def test_for_image_derives_detector_from_overridden_distances():
    near = FanBeamGeometry.for_image((64, 64), 1.0, source_iso_mm=60.0, iso_det_mm=40.0)
    far = FanBeamGeometry.for_image((64, 64), 1.0)
    assert near.source_iso_mm == 60.0
    assert near.det_spacing_iso_mm == pytest.approx(1.0)
    assert near.n_det > far.n_det  # a closer source needs a wider fan


def test_for_image_rejects_unknown_override():
    with pytest.raises(GeometryError, match="unknown geometry field"):
        FanBeamGeometry.for_image((64, 64), 1.0, n_detectors=10)


def test_dict_and_json_round_trips_are_exact():
    geometry = FanBeamGeometry.for_image((37, 53), (0.7123456789012345, 1.1), angle_start_rad=0.1234567891234)
    assert FanBeamGeometry.from_dict(geometry.to_dict()) == geometry
    assert FanBeamGeometry.from_json(geometry.to_json()) == geometry
    assert hash(FanBeamGeometry.from_json(geometry.to_json())) == hash(geometry)


def test_from_dict_and_from_json_reject_bad_input():
    data = FanBeamGeometry.for_image((32, 32), 1.0).to_dict()
    with pytest.raises(GeometryError, match="unknown geometry key"):
        FanBeamGeometry.from_dict({**data, "pitch": 1.0})
    del data["n_det"]
    with pytest.raises(GeometryError, match="incomplete"):
        FanBeamGeometry.from_dict(data)
    with pytest.raises(GeometryError, match="malformed"):
        FanBeamGeometry.from_json("{not json")


def test_detector_that_misses_the_image_is_rejected_with_the_needed_count():
    geometry = FanBeamGeometry.for_image((64, 64), 1.0)
    needed = geometry.required_n_det(geometry.det_spacing_mm)
    with pytest.raises(GeometryError, match=f"detector does not cover the image.*n_det >= {needed}"):
        FanBeamGeometry.for_image((64, 64), 1.0, n_det=needed - 2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"pixel_spacing_mm": (-1.0, 1.0)}, "pixel_spacing_mm must be finite and > 0"),
        ({"n_views": 0}, "n_views must be >= 1"),
        ({"n_views": 2.5}, "n_views must be a whole number"),
        ({"angle_range_rad": 7.0}, r"angle_range_rad must be in \(0, 2\*pi\]"),
        ({"det_spacing_mm": float("nan"), "n_det": 100}, "det_spacing_mm must be finite"),
        ({"source_iso_mm": 30.0}, "source inside the image"),
        ({"image_shape": (0, 64)}, "image_shape must be positive"),
    ],
)
def test_out_of_range_fields_raise_geometry_error(override, message):
    base = FanBeamGeometry.for_image((64, 64), 1.0).to_dict()
    with pytest.raises(GeometryError, match=message):
        FanBeamGeometry(**{**base, **override})


def test_geometry_error_is_a_value_error():
    assert issubclass(GeometryError, ValueError)

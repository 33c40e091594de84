"""Calibration maths against hand-worked points, and foot points into zones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from edge.geometry import CalibrationError, CameraGeometry, Homography, foot_points

# A hand-worked pinhole camera: 10 m above the ground at the origin, looking north (+y),
# pitched 45° down, focal length 500 px, image 1000×800, principal point at the centre.
# A pixel row v sees the ground at depression angle 45° + atan((v − 400)/500), so distance
# y = 10 / tan(that angle); the centre pixel sees y = 10 m, row 400 + 500·tan 15° sees
# 10/tan 60° = 5.7735 m. Column offsets scale with the slant range.
H_CAM, F = 10.0, 500.0


def pinhole(x: float, y: float) -> tuple[float, float]:
    c = s = math.sqrt(0.5)
    fwd = np.array([0, c, -s])
    right = np.array([1.0, 0, 0])
    down = np.cross(fwd, right)
    d = np.array([x, y, -H_CAM])
    z = d @ fwd
    return 500 + F * (d @ right) / z, 400 + F * (d @ down) / z


@pytest.fixture(scope="module")
def hom() -> Homography:
    ground = np.array([[-5, 8], [5, 8], [-8, 20], [8, 20], [0, 12]], dtype=float)
    pixels = np.array([pinhole(*g) for g in ground])
    return Homography(pixels, ground)


def test_hand_worked_points(hom):
    assert hom.reprojection_error_m < 1e-4
    centre = hom.to_ground([[500, 400]])[0]
    assert centre == pytest.approx([0.0, 10.0], abs=1e-4)
    row60 = hom.to_ground([[500, 400 + 500 * math.tan(math.radians(15))]])[0]
    assert row60 == pytest.approx([0.0, 10 / math.tan(math.radians(60))], abs=1e-4)
    # Column 750 on the centre row: slant range 10·√2 = 14.142 m, 250/500 of it sideways.
    side = hom.to_ground([[750, 400]])[0]
    assert side == pytest.approx([10 * math.sqrt(2) * 0.5, 10.0], abs=1e-4)


def test_above_horizon_is_not_ground(hom):
    # The horizon is 45° above the optical axis: row 400 − 500 = −100 (outside the image).
    # A pixel above it (row −200) sees the sky, never a ground point.
    assert np.isnan(hom.to_ground([[500, -200]])).all()
    # The inverse mapping returns the pixels.
    assert hom.to_image([[0.0, 10.0]])[0] == pytest.approx([500, 400], abs=1e-4)


def test_refuses_degenerate_calibration():
    with pytest.raises(CalibrationError, match="at least 4"):
        Homography([[0, 0], [1, 0], [0, 1]], [[0, 0], [1, 0], [0, 1]])
    with pytest.raises(CalibrationError):
        Homography([[0, 0], [1, 1], [2, 2], [3, 3]], [[0, 0], [1, 1], [2, 2], [3, 3]])


def test_foot_points():
    assert foot_points(np.array([[10, 20, 30, 100]])).tolist() == [[20.0, 100.0]]


def test_site_camera_maps_its_own_points_back(site):
    cam = site.camera("cam-cangbai-plaza")
    geo = CameraGeometry(site, cam)
    pts = cam.preset().points
    ground = geo.homography.to_ground(np.array([p.pixel for p in pts]))
    expected = np.array(site.projection.to_metric([p.lonlat for p in pts]))
    assert np.abs(ground - expected).max() < 0.05  # 5 cm: pixels rounded to 0.1 px
    assert "cangbai-plaza" in geo.zones


def test_zone_assignment_and_visible_area(site):
    cam = site.camera("cam-jiabin")
    geo = CameraGeometry(site, cam)
    crossing = site.zone_polygons_m["jiabin-crossing"]
    view = geo.zones["jiabin-crossing"]
    # The crossing lies wholly in view: visible walkable area = its walkable area.
    assert view.visible_ground.area == pytest.approx(crossing.area, rel=1e-6)
    assert view.visible_area_m2 == pytest.approx(site.zone_by_id["jiabin-crossing"].walkable_area_m2, rel=1e-3)
    # Put two people in the crossing and one on the frontage, by projecting ground → image.
    inside = np.array(crossing.centroid.coords)
    frontage = np.array(site.zone_polygons_m["jiabin-frontage"].representative_point().coords)
    feet = geo.homography.to_image(np.vstack([inside, inside + [1.0, 1.0], frontage]))
    counts = geo.assign(feet)
    assert counts == {"jiabin-frontage": 1, "jiabin-crossing": 2}


def test_frames_of_other_size_are_scaled(site):
    geo = CameraGeometry(site, site.camera("cam-cangbai-plaza"))  # calibrated at 480×360
    pts = np.array([[480.0, 360.0]])
    assert geo.scale_to_preset(pts, (960, 720)).tolist() == [[240.0, 180.0]]


def test_footprint_is_limited_to_range(site):
    geo = CameraGeometry(site, site.camera("cam-bridge-mid"), max_range_m=50)
    assert isinstance(geo.footprint, Polygon) and not geo.footprint.is_empty
    far = geo.footprint.hausdorff_distance(geo.footprint.centroid)
    assert far <= 50 * 2 + 1
    d = max(math.dist(p, geo.position_m) for p in geo.footprint.exterior.coords)
    assert d <= 50.0 + 0.5

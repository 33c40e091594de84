"""Image ↔ ground geometry for one calibrated camera preset.

Calibration points pair image pixels with WGS84 ground positions. pyproj takes the ground
positions to the site's metric CRS, OpenCV fits the image→ground homography, and shapely
intersects the camera's ground footprint with the zone polygons, giving each zone's visible
walkable area in m². A person's foot point (bottom-centre of the box) is mapped to the ground
and assigned to the zone containing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import Point, Polygon, box

from crowdflow.site import Camera, Preset, Projection, Site

MIN_VISIBLE_M2 = 1.0  # less than this of a zone in view is treated as out of view


class CalibrationError(ValueError):
    pass


class Homography:
    """Image pixels → ground metres (site CRS) from ≥4 point pairs."""

    def __init__(self, pixels: np.ndarray, ground: np.ndarray):
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        ground = np.asarray(ground, dtype=np.float64).reshape(-1, 2)
        if len(pixels) < 4:
            raise CalibrationError(f"needs at least 4 point pairs, got {len(pixels)}")
        # Fit in a local frame: UTM coordinates are ~10⁶ m and would ruin the conditioning.
        self.origin = ground.mean(axis=0)
        H, _ = cv2.findHomography(pixels, ground - self.origin, 0)
        if H is None or not np.all(np.isfinite(H)) or abs(np.linalg.det(H)) < 1e-12:
            raise CalibrationError("points do not define a homography (collinear or repeated?)")
        self.H = H / H[2, 2]
        self.H_inv = np.linalg.inv(self.H)
        # The sign of w at the calibration points marks the ground side of the horizon.
        w = (np.c_[pixels, np.ones(len(pixels))] @ self.H.T)[:, 2]
        if not (np.all(w > 0) or np.all(w < 0)):
            raise CalibrationError("calibration points lie on both sides of the horizon")
        self._sign = 1.0 if w[0] > 0 else -1.0
        err = np.linalg.norm(self.to_ground(pixels) - ground, axis=1)
        self.reprojection_error_m = float(np.sqrt(np.mean(err**2)))
        self.max_error_m = float(err.max())

    def to_ground(self, pts: np.ndarray) -> np.ndarray:
        """Pixels (N×2) → ground metres (N×2); NaN for pixels above the horizon."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        hom = np.c_[pts, np.ones(len(pts))] @ self.H.T
        w = hom[:, 2] * self._sign
        out = hom[:, :2] / hom[:, 2:3]
        out[w <= 1e-9] = np.nan
        return out + self.origin

    def to_image(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2) - self.origin
        hom = np.c_[pts, np.ones(len(pts))] @ self.H_inv.T
        return hom[:, :2] / hom[:, 2:3]

    def horizon_row_polygon(self, width: int, height: int, margin_px: float = 2.0) -> Polygon:
        """The part of the image that shows ground (below the horizon line), as a polygon."""
        img = box(0, 0, width, height)
        a, b, c = self.H[2] * self._sign  # ground where a·u + b·v + c > 0
        n = math.hypot(a, b)
        if n < 1e-12:  # horizon at infinity: the whole image is ground
            return img
        # Build the half-plane as a big polygon, shifted by the margin toward the ground side.
        big = 10 * (width + height)
        nx, ny = a / n, b / n
        d = -c / n + margin_px  # the line nx·u + ny·v = d
        p0 = np.array([nx * d, ny * d])
        t = np.array([-ny, nx])
        half = Polygon([p0 - t * big, p0 + t * big, p0 + t * big + np.array([nx, ny]) * big, p0 - t * big + np.array([nx, ny]) * big])
        return img.intersection(half)


@dataclass
class ZoneView:
    zone_id: str
    visible_ground: Polygon  # metric, zone ∩ camera footprint
    visible_area_m2: float  # walkable m² in view
    image_polygon: np.ndarray  # the visible part drawn in the image (pixels, N×2)


class CameraGeometry:
    """Everything the counter needs to know about one camera preset on the ground."""

    def __init__(self, site: Site, camera: Camera, preset: Preset | None = None, max_range_m: float | None = None):
        self.camera = camera
        self.preset = preset or camera.preset()
        self.projection: Projection = site.projection
        pixels = np.array([p.pixel for p in self.preset.points])
        ground = np.array(self.projection.to_metric([p.lonlat for p in self.preset.points]))
        self.homography = Homography(pixels, ground)
        self.image_size = self.preset.image_size
        self.position_m = np.array(self.projection.to_metric([camera.position])[0])
        self.max_range_m = max_range_m or site.edge.max_range_m
        self.footprint = self._footprint()
        self.zones: dict[str, ZoneView] = {}
        for zid in camera.zones:
            zone = site.zone_by_id[zid]
            zpoly = site.zone_polygons_m[zid]
            vis = zpoly.intersection(self.footprint)
            if vis.is_empty or vis.area < MIN_VISIBLE_M2:
                continue
            walkable_share = zone.walkable_area_m2 / (zpoly.area * zone.floors)
            img = self._ground_to_image_outline(vis)
            self.zones[zid] = ZoneView(zid, vis, vis.area * walkable_share, img)
        for v in self.zones.values():
            shapely.prepare(v.visible_ground)  # fast point-in-polygon per frame

    def _footprint(self) -> Polygon:
        w, h = self.image_size
        ground_img = self.homography.horizon_row_polygon(w, h).segmentize(max(w, h) / 64)
        if ground_img.is_empty:
            return Polygon()
        outline = self.homography.to_ground(np.asarray(ground_img.exterior.coords))
        outline = outline[np.all(np.isfinite(outline), axis=1)]
        fp = Polygon(outline).buffer(0)
        disk = Point(*self.position_m).buffer(self.max_range_m, quad_segs=32)
        return fp.intersection(disk)

    def _ground_to_image_outline(self, poly) -> np.ndarray:
        geom = max(getattr(poly, "geoms", [poly]), key=lambda g: g.area)
        ring = np.asarray(geom.segmentize(2.0).exterior.coords)
        return self.homography.to_image(ring)

    def scale_to_preset(self, pts: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
        """Pixels of a frame of ``frame_size`` → pixels of the calibrated image size."""
        fw, fh = frame_size
        w, h = self.image_size
        if (fw, fh) == (w, h):
            return pts
        return pts * np.array([w / fw, h / fh])

    def assign(self, foot_px: np.ndarray) -> dict[str, int]:
        """Count foot points (already in preset pixels) per visible zone."""
        counts = {zid: 0 for zid in self.zones}
        if len(foot_px) == 0:
            return counts
        ground = self.homography.to_ground(foot_px)
        ok = np.all(np.isfinite(ground), axis=1)
        ground = ground[ok]
        for zid, view in self.zones.items():
            counts[zid] = int(np.count_nonzero(shapely.contains_xy(view.visible_ground, ground[:, 0], ground[:, 1])))
        return counts


def foot_points(xyxy: np.ndarray) -> np.ndarray:
    """Bottom-centre of each box: where the person stands."""
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.c_[(xyxy[:, 0] + xyxy[:, 2]) / 2, xyxy[:, 3]]

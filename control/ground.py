"""Where each camera preset looks on the ground, and how that splits each zone. Pure.

Control needs the same ground footprints the edge counts on (``edge/geometry.py``) but must
not depend on OpenCV (the edge extra): the homography is fitted here by the normalised
direct linear transform (Hartley & Zisserman, alg. 4.2) in numpy, the footprint is the
ground side of the horizon seen through the image frame, cut at ``edge.max_range_m`` from
the camera — the edge's rule — and shapely overlays the footprints of the cameras
configured for a zone into *parts*: pieces of the zone seen by the same set of cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point, Polygon, box
from shapely.ops import unary_union

from crowdflow.site import Site

MIN_PART_M2 = 0.5  # slivers below this (numerical noise of the overlay) are dropped


def fit_homography(pixels: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Image → ground 3×3 homography from ≥4 pairs (normalised DLT, least squares)."""
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    ground = np.asarray(ground, dtype=np.float64).reshape(-1, 2)
    if len(pixels) < 4:
        raise ValueError(f"needs at least 4 point pairs, got {len(pixels)}")

    def norm(p):
        c = p.mean(axis=0)
        s = math.sqrt(2) / max(np.mean(np.linalg.norm(p - c, axis=1)), 1e-12)
        return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1]])

    tp, tg = norm(pixels), norm(ground)
    ph = np.c_[pixels, np.ones(len(pixels))] @ tp.T
    gh = np.c_[ground, np.ones(len(ground))] @ tg.T
    rows = []
    for (x, y, _), (u, v, _) in zip(ph, gh):
        rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
        rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    hn = vt[-1].reshape(3, 3)
    h = np.linalg.inv(tg) @ hn @ tp
    if not np.all(np.isfinite(h)) or abs(h[2, 2]) < 1e-15:
        raise ValueError("points do not define a homography (collinear or repeated?)")
    return h / h[2, 2]


def footprint(h: np.ndarray, image_size: tuple[int, int], position_m, max_range_m: float,
              calib_pixels: np.ndarray) -> Polygon:
    """The ground (metric polygon) a preset sees: image ∩ ground side of the horizon, cut
    at ``max_range_m`` from the camera."""
    w, hgt = image_size
    sign = 1.0 if (np.r_[calib_pixels[0], 1.0] @ h[2]) > 0 else -1.0
    a, b, c = h[2] * sign
    img = box(0, 0, w, hgt)
    n = math.hypot(a, b)
    if n > 1e-12 and abs(c) / n < 100 * (w + hgt):  # else the horizon is far outside the image
        big = 10 * (w + hgt)
        nx, ny = a / n, b / n
        d = -c / n + 2.0  # 2 px margin toward the ground side, as the edge does
        p0 = np.array([nx * d, ny * d])
        t = np.array([-ny, nx])
        half = Polygon([p0 - t * big, p0 + t * big, p0 + t * big + np.array([nx, ny]) * big,
                        p0 - t * big + np.array([nx, ny]) * big])
        img = img.intersection(half)
    if img.is_empty:
        return Polygon()
    cx, cy = img.representative_point().coords[0]
    if (np.array([cx, cy, 1.0]) @ h[2]) * sign <= 0:
        return Polygon()  # the image shows only sky
    ring = np.asarray(img.segmentize(max(w, hgt) / 64).exterior.coords)
    hom = np.c_[ring, np.ones(len(ring))] @ h.T
    ok = hom[:, 2] * sign > 1e-9
    pts = hom[ok, :2] / hom[ok, 2:3]
    if len(pts) < 3:
        return Polygon()
    fp = Polygon(pts).buffer(0)
    return fp.intersection(Point(*position_m).buffer(max_range_m, quad_segs=32))


@dataclass(frozen=True)
class Part:
    """A piece of a zone seen by the same set of camera views (empty set: seen by none)."""

    cameras: frozenset[str]
    area_m2: float  # walkable m² (the zone's walkable area in proportion to the ground)


class Ground:
    """Footprints of every camera preset and the zone polygons, in the site's metric CRS."""

    def __init__(self, site: Site):
        self.site = site
        # (zone, views) → parts: one entry per zone and combination of views seen. Per ground,
        # sized to the site: a process-wide LRU of 4,096 thrashed at 10,000 zones and redid
        # the shapely overlay for every observation.
        self._parts: dict[tuple, tuple[list[Part], set[str]]] = {}
        self._parts_max = max(4096, 16 * len(site.zones))
        self._fp: dict[tuple[str, str], Polygon] = {}
        self._first = {c.id: c.presets[0].id for c in site.cameras if c.presets}
        proj = site.projection
        # Computed here, once, not by the first observation: Python 3.11's cached_property
        # holds one lock per property for every instance, so the partitions' threads of a
        # worker waited on each other's first computation of it (seconds at 10,000 zones).
        site.zone_polygons_m
        for cam in site.cameras:
            pos = proj.to_metric([cam.position])[0]
            for p in cam.presets:
                px = np.array([q.pixel for q in p.points])
                gd = np.array(proj.to_metric([q.lonlat for q in p.points]))
                try:
                    h = fit_homography(px, gd - gd.mean(axis=0))
                    fp = footprint(h, p.image_size, np.array(pos) - gd.mean(axis=0), site.edge.max_range_m, px)
                    from shapely import affinity
                    self._fp[(cam.id, p.id)] = affinity.translate(fp, *gd.mean(axis=0))
                except ValueError:
                    self._fp[(cam.id, p.id)] = Polygon()
        # The overlay of every zone with all its cameras at their first preset, the steady state,
        # is computed here once, not by the first observation after a takeover.
        covering: dict[str, list[tuple[str, str | None]]] = {}
        for cam in site.cameras:
            for zid in cam.zones:
                covering.setdefault(zid, []).append((cam.id, cam.presets[0].id if cam.presets else None))
        for zid, views in covering.items():
            if zid in site.zone_by_id:
                self.parts(zid, tuple(views))

    def seen(self, zone_id: str, camera_id: str, preset_id: str | None) -> Polygon | None:
        """The part of the zone this camera sees at this preset (metric); None when the
        preset is unknown to the site (then the caller cannot place the view)."""
        cam = self.site.camera_by_id.get(camera_id)
        if cam is None:
            return None
        pid = preset_id if preset_id is not None else cam.presets[0].id
        fp = self._fp.get((camera_id, pid))
        if fp is None:
            return None
        return self.site.zone_polygons_m[zone_id].intersection(fp)

    def parts(self, zone_id: str, views: tuple[tuple[str, str | None], ...]) -> tuple[list[Part], set[str]]:
        """Split the zone by which of ``views`` ((camera, preset), …) see each piece.

        Returns the parts (their areas add up to the zone's walkable area) and the cameras
        whose view could not be placed on the ground (unknown preset or empty footprint)."""
        # A view without a preset is its camera's first preset (as in seen()): one cache entry.
        views = tuple((c, p if p is not None else self._first.get(c)) for c, p in views)
        key = (zone_id, tuple(sorted(views, key=lambda v: (v[0], v[1] or ""))) if len(views) > 1 else views)
        hit = self._parts.get(key)
        if hit is None:
            if len(self._parts) >= self._parts_max:
                self._parts.clear()
            hit = self._parts[key] = _parts(self, *key)
        return hit


_GROUNDS: dict[int, tuple[Site, "Ground"]] = {}


def ground_of(site: Site) -> Ground:
    """The site's ground, built once per site object: the footprints are a pure function of
    the site, and building them (a homography per preset) cost 0.7 ms per zone at every start
    of a leadership term."""
    hit = _GROUNDS.get(id(site))
    if hit is not None and hit[0] is site:
        return hit[1]
    if len(_GROUNDS) > 64:
        _GROUNDS.clear()
    g = Ground(site)
    _GROUNDS[id(site)] = (site, g)
    return g


def _parts(ground: Ground, zone_id: str, views: tuple) -> tuple[list[Part], set[str]]:
    zone = ground.site.zone_by_id[zone_id]
    zpoly = ground.site.zone_polygons_m[zone_id]
    scale = zone.walkable_area_m2 / zpoly.area if zpoly.area > 0 else 0.0
    polys: dict[str, Polygon] = {}
    unplaced: set[str] = set()
    for cid, pid in views:
        g = ground.seen(zone_id, cid, pid)
        if g is None or g.is_empty or g.area < MIN_PART_M2:
            unplaced.add(cid)
        else:
            polys[cid] = g
    # Overlay: start from the whole zone as "seen by none" and split by each footprint.
    pieces: list[tuple[frozenset, object]] = [(frozenset(), zpoly)]
    for cid, g in polys.items():
        nxt = []
        for cams, geom in pieces:
            inside = geom.intersection(g)
            outside = geom.difference(g)
            if not inside.is_empty and inside.area >= MIN_PART_M2:
                nxt.append((cams | {cid}, inside))
            if not outside.is_empty and outside.area >= MIN_PART_M2:
                nxt.append((cams, outside))
        pieces = nxt
    merged: dict[frozenset, float] = {}
    for cams, geom in pieces:
        merged[cams] = merged.get(cams, 0.0) + geom.area
    total = sum(merged.values()) or 1.0
    # Areas in proportion, so that the parts add up to the walkable area exactly.
    parts = [Part(cams, a / total * zpoly.area * scale) for cams, a in merged.items()]
    return parts, unplaced


def union_area(polys) -> float:
    return unary_union(list(polys)).area

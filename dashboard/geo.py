"""The site config as GeoJSON for the map ([lon, lat], as GeoJSON wants).

The site is stored in WGS84. Only when the optional tile layer is drawn in GCJ-02 (AMap,
Tencent) are the overlays shifted to GCJ-02 here, at the edge, so they sit on those tiles;
OSM and 天地图 (CGCS2000) tiles agree with WGS84 and need nothing.
"""

from __future__ import annotations

import math

from crowdflow import vocab
from crowdflow.site import Site

# GCJ-02 ("Mars coordinates"): the published obfuscation, Krasovsky 1940 ellipsoid.
_A = 6378245.0
_EE = 0.00669342162296594323


def _outside_china(lon: float, lat: float) -> bool:
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def _tlat(x: float, y: float) -> float:
    r = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
    r += (160.0 * math.sin(y / 12.0 * math.pi) + 320 * math.sin(y * math.pi / 30.0)) * 2.0 / 3.0
    return r


def _tlon(x: float, y: float) -> float:
    r = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    r += (20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)) * 2.0 / 3.0
    r += (20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
    r += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2.0 / 3.0
    return r


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """WGS84 → GCJ-02 (identity outside China)."""
    if _outside_china(lon, lat):
        return lon, lat
    dlat = _tlat(lon - 105.0, lat - 35.0)
    dlon = _tlon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - _EE * math.sin(rad) ** 2
    sq = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1 - _EE)) / (magic * sq) * math.pi)
    dlon = (dlon * 180.0) / (_A / sq * math.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


def _pt(p, datum: str) -> list[float]:
    return list(wgs84_to_gcj02(*p)) if datum == "gcj02" else list(p)


def _feature(kind: str, obj, geometry: dict, **props) -> dict:
    name = obj.name.model_dump() if getattr(obj, "name", None) else None
    return {
        "type": "Feature",
        "id": f"{kind}:{obj.id}",
        "geometry": geometry,
        "properties": {"kind": kind, "id": obj.id, "name": name, **props},
    }


def site_geojson(site: Site, datum: str = "wgs84") -> dict:
    def ring(points) -> list:
        return [_pt(p, datum) for p in points] + [_pt(points[0], datum)]

    def line(points) -> list:
        return [_pt(p, datum) for p in points]

    feats = []
    for layer, kind in (("water", "water"), ("buildings", "building"), ("bridges", "bridge")):
        for a in getattr(site.basemap, layer):
            feats.append(_feature(kind, a, {"type": "Polygon", "coordinates": [ring(a.polygon)]}))
    for z in site.zones:
        feats.append(_feature("zone", z, {"type": "Polygon", "coordinates": [ring(z.polygon)]},
                              zone_kind=z.kind, capacity=z.capacity, walkable_area_m2=z.walkable_area_m2,
                              area_per_visitor_m2=z.area_per_visitor_m2, floors=z.floors))
    for c in site.cameras:
        feats.append(_feature("camera", c, {"type": "Point", "coordinates": _pt(c.position, datum)}, zones=c.zones))
    for r in site.roads:
        feats.append(_feature("road", r, {"type": "LineString", "coordinates": line(r.line)}))
    for g in site.gates:
        feats.append(_feature("gate", g, {"type": "LineString", "coordinates": line(g.line)},
                              inside_zone=g.inside_zone, outside_zone=g.outside_zone, post=g.post))
    for p in site.posts:
        feats.append(_feature("post", p, {"type": "Point", "coordinates": _pt(p.position, datum)},
                              department=p.department, headcount=p.headcount))
    tiles = site.dashboard.tiles
    return {
        "type": "FeatureCollection",
        "features": feats,
        "site": {"id": site.site.id, "name": site.site.name.model_dump(), "center": _pt(site.site.center, datum)},
        "datum": datum,
        "tiles": tiles.model_dump() if tiles else None,
        "plans": [{"id": p.id, "name": p.name.model_dump(), "zones": p.zones,
                   "levels": [lv.level for lv in p.levels],
                   "actions": {lv.level: [a.model_dump(mode="json") for a in lv.actions] for lv in p.levels}}
                  for p in site.plans],
        # Queue pens and metro concourses whose counts are reported (report_queue, HoldState);
        # drawn at their gate (a gate feature above).
        "holding_areas": [h.model_dump(mode="json") for h in site.holding_areas],
        "stale_after_s": site.control.stale_after_s,
        "command_max_age_s": site.control.command_max_age_s,
        # What 平急转换 will switch on, so the console can say it before the commander confirms.
        "emergency": {"actions": [a.model_dump(mode="json") for a in site.emergency.actions]},
        "vocab": vocab.as_dict(),  # levels, roles, health states, command kinds: declared once
    }

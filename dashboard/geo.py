"""The site config as GeoJSON for the map (WGS84 [lon, lat], as GeoJSON wants)."""

from __future__ import annotations

from crowdflow.site import Site


def _feature(kind: str, obj, geometry: dict, **props) -> dict:
    return {
        "type": "Feature",
        "id": f"{kind}:{obj.id}",
        "geometry": geometry,
        "properties": {"kind": kind, "id": obj.id, "name": obj.name.model_dump(), **props},
    }


def site_geojson(site: Site) -> dict:
    feats = []
    for z in site.zones:
        ring = [list(p) for p in z.polygon] + [list(z.polygon[0])]
        feats.append(_feature("zone", z, {"type": "Polygon", "coordinates": [ring]},
                              zone_kind=z.kind, capacity=z.capacity, walkable_area_m2=z.walkable_area_m2,
                              area_per_visitor_m2=z.area_per_visitor_m2, floors=z.floors))
    for c in site.cameras:
        feats.append(_feature("camera", c, {"type": "Point", "coordinates": list(c.position)}, zones=c.zones))
    for r in site.roads:
        feats.append(_feature("road", r, {"type": "LineString", "coordinates": [list(p) for p in r.line]}))
    for g in site.gates:
        feats.append(_feature("gate", g, {"type": "LineString", "coordinates": [list(p) for p in g.line]},
                              inside_zone=g.inside_zone, outside_zone=g.outside_zone))
    for p in site.posts:
        feats.append(_feature("post", p, {"type": "Point", "coordinates": list(p.position)},
                              department=p.department, headcount=p.headcount))
    return {
        "type": "FeatureCollection",
        "features": feats,
        "site": {"id": site.site.id, "name": site.site.name.model_dump(), "center": list(site.site.center)},
    }

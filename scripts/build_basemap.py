#!/usr/bin/env python3
"""Build a site's OSM basemap (GeoJSON) from an OpenStreetMap extract. Standard library only.

The dashboard draws streets, footways and steps, buildings and metro stations/exits from a
GeoJSON file named in the site file (``dashboard.basemap_file``). OSM data is ODbL: keep the
file with the deployment, never in this repository, and show "© OpenStreetMap contributors"
(the dashboard does). How a site makes its own:

1. Get an extract of the area, either
   * a ``.osm`` XML file, e.g. ``osmium extract -b 106.568,29.555,106.592,29.578
     china-latest.osm.pbf -o site.osm`` (Geofabrik extract + osmium-tool, Debian package
     ``osmium-tool``), or the "Export" button on openstreetmap.org for a small area; or
   * an Overpass API answer in JSON: ``python scripts/build_basemap.py --print-query --bbox
     29.555,106.568,29.578,106.592`` prints the query; POST it to an Overpass server and save
     the answer.
2. ``python scripts/build_basemap.py site.osm --out /srv/crowdflow/basemap.geojson``
3. In the site file: ``dashboard: {basemap_file: /srv/crowdflow/basemap.geojson}`` (a relative
   path is taken from the site file's folder), then ``crowdflow check-config`` and restart the
   dashboard.

The same file is the OSM extract the site is drawn on (``site.osm.file``): every feature keeps
its OSM id in ``@id`` (``way/939578294``), which ``zones[].osm`` name and ``crowdflow
check-config`` checks the zones against (``verify_osm_geometry``).

Layers (property ``_layer``): ``building`` (closed ways with ``building``), ``street``
(``highway`` for vehicles), ``footway`` (footway, steps, pedestrian, path, corridor),
``metro_entrance`` (``railway=subway_entrance``), ``metro_station`` (``station=subway`` or
``railway=station`` with ``subway=yes``). Every OSM tag is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FOOT = {"footway", "steps", "pedestrian", "path", "corridor", "track", "cycleway"}
STREET = {"motorway", "trunk", "primary", "secondary", "tertiary", "unclassified", "residential", "service",
          "living_street", "motorway_link", "trunk_link", "primary_link", "secondary_link", "tertiary_link"}
ATTRIBUTION = "© OpenStreetMap contributors"

QUERY = """[out:json][timeout:120];
(
  way["highway"]({bbox});
  way["building"]({bbox});
  node["railway"="subway_entrance"]({bbox});
  node["station"="subway"]({bbox});
  node["railway"="station"]({bbox});
);
(._;>;);
out body;"""


def read_osm_xml(path: Path) -> tuple[dict, list]:
    nodes, elements = {}, []
    for _, el in ET.iterparse(path, events=("end",)):
        if el.tag == "node":
            nid = int(el.get("id"))
            nodes[nid] = (float(el.get("lon")), float(el.get("lat")))
            tags = {t.get("k"): t.get("v") for t in el.findall("tag")}
            if tags:
                elements.append({"type": "node", "id": nid, "tags": tags})
            el.clear()
        elif el.tag == "way":
            elements.append({"type": "way", "id": int(el.get("id")),
                             "nodes": [int(n.get("ref")) for n in el.findall("nd")],
                             "tags": {t.get("k"): t.get("v") for t in el.findall("tag")}})
            el.clear()
    return nodes, elements


def read_overpass_json(path: Path) -> tuple[dict, list]:
    data = json.loads(path.read_text(encoding="utf-8"))
    nodes, elements = {}, []
    for e in data.get("elements", []):
        if e["type"] == "node":
            nodes[e["id"]] = (e["lon"], e["lat"])
            if e.get("tags"):
                elements.append({"type": "node", "id": e["id"], "tags": e["tags"]})
        elif e["type"] == "way":
            elements.append(e)
    return nodes, elements


def layer_of(e: dict) -> str | None:
    t = e.get("tags") or {}
    if e["type"] == "node":
        if t.get("railway") == "subway_entrance":
            return "metro_entrance"
        if t.get("station") == "subway" or (t.get("railway") == "station" and t.get("subway") == "yes"):
            return "metro_station"
        return None
    if "building" in t:
        return "building"
    hw = t.get("highway")
    if hw in FOOT:
        return "footway"
    if hw in STREET:
        return "street"
    return None


def build(nodes: dict, elements: list) -> dict:
    feats = []
    for e in elements:
        layer = layer_of(e)
        if layer is None:
            continue
        props = {**(e.get("tags") or {}), "@id": f"{e['type']}/{e['id']}", "_layer": layer}
        if e["type"] == "node":
            geom = {"type": "Point", "coordinates": list(nodes[e["id"]])}
        else:
            pts = [list(nodes[n]) for n in e.get("nodes", []) if n in nodes]
            if len(pts) < 2:
                continue
            closed = pts[0] == pts[-1] and len(pts) >= 4
            geom = ({"type": "Polygon", "coordinates": [pts]} if layer == "building" and closed
                    else {"type": "LineString", "coordinates": pts})
            if layer == "building" and not closed:
                continue
        feats.append({"type": "Feature", "id": props["@id"], "geometry": geom, "properties": props})
    return {"type": "FeatureCollection", "attribution": ATTRIBUTION, "license": "ODbL 1.0", "features": feats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("extract", nargs="?", help=".osm XML or Overpass JSON")
    ap.add_argument("--out", help="GeoJSON to write (default: stdout)")
    ap.add_argument("--print-query", action="store_true", help="print the Overpass query for --bbox and exit")
    ap.add_argument("--bbox", help="south,west,north,east for --print-query")
    a = ap.parse_args(argv)
    if a.print_query:
        if not a.bbox:
            ap.error("--print-query needs --bbox south,west,north,east")
        print(QUERY.replace("{bbox}", a.bbox))
        return 0
    if not a.extract:
        ap.error("give an extract (.osm or Overpass .json)")
    path = Path(a.extract)
    try:
        nodes, elements = (read_overpass_json(path) if path.suffix.lower() == ".json" else read_osm_xml(path))
    except (OSError, ET.ParseError, json.JSONDecodeError, KeyError) as e:
        print(f"{path}: cannot read the extract: {e}", file=sys.stderr)
        return 1
    gj = build(nodes, elements)
    text = json.dumps(gj, ensure_ascii=False)
    if a.out:
        Path(a.out).write_text(text, encoding="utf-8")
        counts: dict[str, int] = {}
        for f in gj["features"]:
            counts[f["properties"]["_layer"]] = counts.get(f["properties"]["_layer"], 0) + 1
        print(f"{a.out}: {len(gj['features'])} features {counts}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The OSM basemap drawn under the zones, loaded from a GeoJSON file named in the site file
(``dashboard.basemap_file``, relative to the site file; ``CROWDFLOW_BASEMAP`` overrides).

Nothing of OpenStreetMap is kept in the repository: a site builds its file from an OSM
extract with ``scripts/build_basemap.py`` (see its docstring). The dashboard keeps the
features near the site (the zones' extent plus a margin) and the properties the map draws —
streets, footways and steps, buildings, metro stations and exits — and serves them with the
attribution ODbL requires ("© OpenStreetMap contributors").
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from shapely.geometry import box, shape

from crowdflow.site import Site

log = logging.getLogger("crowdflow.dashboard")
ATTRIBUTION = "© OpenStreetMap contributors"
LAYERS = ("building", "street", "footway", "metro_entrance", "metro_station")
KEEP = ("name", "name:en", "highway", "ref", "building", "building:levels", "layer", "bridge", "tunnel", "footway",
        "_layer", "@id")
MARGIN_DEG = 0.003  # ≈ 300 m around the zones


class BasemapError(ValueError):
    pass


def basemap_path(site: Site, config_dir: Path | None) -> Path | None:
    raw = os.environ.get("CROWDFLOW_BASEMAP") or site.dashboard.basemap_file
    if not raw:
        return None
    p = Path(raw)
    if not p.is_absolute() and config_dir is not None:
        p = config_dir / p
    return p


def load_basemap(site: Site, path: Path) -> dict:
    """The features of ``path`` the map draws, near the site. Raises :class:`BasemapError`
    saying what is wrong with the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BasemapError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise BasemapError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise BasemapError(f"{path}: expected a GeoJSON FeatureCollection")
    lons = [p[0] for z in site.zones for p in z.polygon]
    lats = [p[1] for z in site.zones for p in z.polygon]
    area = box(min(lons) - MARGIN_DEG, min(lats) - MARGIN_DEG, max(lons) + MARGIN_DEG, max(lats) + MARGIN_DEG)
    out = []
    skipped = 0
    for i, f in enumerate(data.get("features") or []):
        try:
            props = f.get("properties") or {}
            layer = props.get("_layer")
            if layer not in LAYERS:
                continue
            geom = shape(f["geometry"])
            if not geom.intersects(area):
                continue
        except Exception:  # one bad feature does not lose the map
            skipped += 1
            continue
        out.append({"type": "Feature", "geometry": f["geometry"],
                    "properties": {k: props[k] for k in KEEP if k in props}})
    if skipped:
        log.warning("%s: %d malformed features skipped", path, skipped)
    attribution = data.get("attribution") or ""
    return {"type": "FeatureCollection", "features": out,
            "attribution": ATTRIBUTION if ATTRIBUTION in attribution else f"{ATTRIBUTION}. {attribution}".strip(". "),
            "license": data.get("license", "ODbL 1.0"), "source": str(path.name)}

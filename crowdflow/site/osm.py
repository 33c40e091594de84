"""The OpenStreetMap extract a site is drawn on: its elements by id, for the named check
``verify_osm_geometry`` (crowdflow/site/checks.py) that zones lie on what they name.

The file is a GeoJSON FeatureCollection whose features carry their OSM id in ``@id``
(``way/939578294``) — what ``scripts/build_basemap.py`` writes and the shared extract in
``../shared/data/osm_hongyadong`` holds. OSM data is ODbL (© OpenStreetMap contributors): it
is read from the deployment, never kept in the repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from .base import ConfigError
from .model import Site


def osm_path(site: Site, config_dir: Path | None, given: str | None = None) -> Path | None:
    """Where the site's OSM extract is: ``given`` (a command-line path), else $CROWDFLOW_OSM,
    else ``site.osm.file``, else the dashboard's basemap (``dashboard.basemap_file``, built by
    scripts/build_basemap.py with the same ``@id``s), relative to the site file's folder; None
    when none is named."""
    raw = given or os.environ.get("CROWDFLOW_OSM") or site.site.osm.file or site.dashboard.basemap_file
    if not raw:
        return None
    p = Path(raw)
    if not p.is_absolute() and config_dir is not None and not given:
        p = config_dir / p
    return p


def load_osm(path: str | Path) -> dict[str, BaseGeometry]:
    """Every feature of the extract with an ``@id``, as WGS84 shapely geometry by id. Raises
    :class:`ConfigError` saying what is wrong with the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(str(path), [("", f"cannot read: {e.strerror or e}")]) from None
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), [("", f"not JSON ({e.msg} at line {e.lineno})")]) from None
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise ConfigError(str(path), [("", "expected a GeoJSON FeatureCollection")])
    out: dict[str, BaseGeometry] = {}
    for i, f in enumerate(data.get("features") or []):
        props = (f or {}).get("properties") or {}
        ref = props.get("@id")
        if not ref:
            continue
        try:
            out[ref] = shape(f["geometry"])
        except Exception as e:  # noqa: BLE001 - one broken feature is named, the rest is used
            raise ConfigError(str(path), [(f"features[{i}]", f"{ref}: bad geometry ({e})")]) from None
    if not out:
        raise ConfigError(str(path), [("", "no feature carries an OSM id (@id); build it with scripts/build_basemap.py")])
    return out

"""The site as data: one YAML file, validated once at start.

Every service loads the site through :func:`load_site`. A broken file raises
:class:`ConfigError` whose messages name the exact path of each problem, e.g.
``zones[3].polygon: ring has 2 points``.

One module per group of sections (Frigate style):

* :mod:`.runtime` — ``site``, ``redis``, ``edge``, ``control``, ``dashboard`` (runtime settings);
* :mod:`.places`  — ``zones``, ``cameras``, ``roads``, ``gates``, ``posts``, ``basemap``;
* :mod:`.plans`   — actions (``Action``), tiered ``plans``, ``emergency``;
* :mod:`.measures` — first-class ``measures`` (trigger, release, min on/off, cost) and the ``staff`` pool;
* :mod:`.model`   — :class:`Site`, the whole file, with its lookups and helpers;
* :mod:`.checks`  — the named ``verify_*`` cross-checks, listed in ``CHECKS`` (``OSM_CHECKS``: against the
  OpenStreetMap extract the site is drawn on, run by ``check-config``);
* :mod:`.osm`     — reading that extract (ODbL, not in the repository);
* :mod:`.load`    — parsing and path-precise errors.
"""

from ..vocab import LEVELS, Id
from .base import ConfigError, LonLat, Strict, Text, check_ring
from .checks import CHECKS, OSM_CHECKS, WARNINGS, semantic_problems, semantic_warnings, verify_osm_geometry
from .load import load_site, parse_site, validate_file_model
from .model import Projection, Site
from .places import Basemap, BasemapArea, CalibrationPoint, Camera, ClosurePoint, Gate, HoldingArea, Post, Preset, Road, Zone
from .staff import StaffPool
from .measures import Measure, MeasureCost, MeasureRelease, MeasureTrigger
from .plans import (
    Action,
    BroadcastAction,
    Emergency,
    ExitOnlyAction,
    Hysteresis,
    MeteringAction,
    MetroDivert,
    MetroInboundAction,
    MetroLimitAction,
    OneWayAction,
    Plan,
    PlanLevel,
    StaffingAction,
    TrafficCutoffAction,
    Triggers,
)
from .runtime import (
    ControlSection,
    DashboardSection,
    DashboardUser,
    EdgeSection,
    RedisSection,
    OsmSource,
    SiteInfo,
    TileLayer,
)

__all__ = [
    "LEVELS", "Id", "ConfigError", "LonLat", "Strict", "Text", "check_ring", "CHECKS", "semantic_problems", "WARNINGS", "semantic_warnings",
    "load_site", "parse_site", "validate_file_model", "Projection", "Site", "Basemap", "BasemapArea",
    "CalibrationPoint", "Camera", "Gate", "Post", "Preset", "Road", "Zone", "Action", "BroadcastAction",
    "Emergency", "ExitOnlyAction", "Hysteresis", "MetroDivert", "MetroInboundAction", "MetroLimitAction", "OneWayAction", "Plan", "PlanLevel",
    "StaffingAction", "TrafficCutoffAction", "Triggers", "MeteringAction", "ClosurePoint", "HoldingArea", "StaffPool", "ControlSection", "DashboardSection", "DashboardUser",
    "EdgeSection", "RedisSection", "SiteInfo", "TileLayer", "OsmSource", "OSM_CHECKS", "verify_osm_geometry",
    "Measure", "MeasureCost", "MeasureRelease", "MeasureTrigger",
]

"""Cross-references and geometry that single fields cannot check.

Each ``verify_*`` function takes the parsed :class:`Site` and returns ``(path, message)``
problems; :data:`CHECKS` lists them in the order they run. Add a check here, by name.
"""

from __future__ import annotations

import math
from typing import Callable

from shapely.geometry import LineString, Polygon

from .. import crowd
from ..vocab import LEVELS
from .model import Site
from .plans import (ExitOnlyAction, MeteringAction, MetroInboundAction, MetroLimitAction, OneWayAction, StaffingAction,
                    TrafficCutoffAction)

Problems = list[tuple[str, str]]


def _ref(problems: Problems, path: str, value: str | None, known: set[str], what: str) -> None:
    if value is not None and value not in known:
        problems.append((path, f"unknown {what} {value!r}"))


def verify_unique_ids(site: Site) -> Problems:
    """Every id is unique within its section."""
    problems: Problems = []
    for kind in ("zones", "cameras", "roads", "gates", "posts", "plans"):
        seen: dict[str, int] = {}
        for i, it in enumerate(getattr(site, kind)):
            if it.id in seen:
                problems.append((f"{kind}[{i}].id", f"duplicate id {it.id!r} (also {kind}[{seen[it.id]}])"))
            seen.setdefault(it.id, i)
    return problems


def verify_users(site: Site) -> Problems:
    """Dashboard user names are unique and name known posts."""
    problems: Problems = []
    users: dict[str, int] = {}
    post_ids = {p.id for p in site.posts}
    for i, u in enumerate(site.dashboard.users):
        if u.name in users:
            problems.append((f"dashboard.users[{i}].name", f"duplicate user {u.name!r} (also dashboard.users[{users[u.name]}])"))
        users.setdefault(u.name, i)
        _ref(problems, f"dashboard.users[{i}].post", u.post, post_ids, "post")
    return problems


def verify_zones(site: Site) -> Problems:
    """Zone polygons are simple, near the site, and hold their walkable area."""
    problems: Problems = []
    proj = site.projection
    centre = proj.to_metric([site.site.center])[0]
    for i, z in enumerate(site.zones):
        poly = Polygon(proj.to_metric(z.polygon))
        if not poly.is_valid:
            problems.append((f"zones[{i}].polygon", "ring crosses itself"))
            continue
        room = poly.area * z.floors
        if z.walkable_area_m2 > room * 1.001:
            problems.append(
                (
                    f"zones[{i}].walkable_area_m2",
                    f"{z.walkable_area_m2:g} m² exceeds the polygon's {poly.area:.0f} m²"
                    + (f" × {z.floors} floors" if z.floors > 1 else ""),
                )
            )
        d = math.dist(proj.to_metric([z.polygon[0]])[0], centre)
        if d > 50_000:
            problems.append((f"zones[{i}].polygon", f"is {d / 1000:.0f} km from site.center; lon/lat swapped?"))
    return problems


def verify_cameras(site: Site) -> Problems:
    """Cameras name known zones; presets are unique with calibration points spread in the image."""
    problems: Problems = []
    zone_ids = {z.id for z in site.zones}
    for i, c in enumerate(site.cameras):
        for j, zid in enumerate(c.zones):
            _ref(problems, f"cameras[{i}].zones[{j}]", zid, zone_ids, "zone")
        seen: set[str] = set()
        for j, p in enumerate(c.presets):
            if p.id in seen:
                problems.append((f"cameras[{i}].presets[{j}].id", f"duplicate preset {p.id!r}"))
            seen.add(p.id)
            w, h = p.image_size
            for k, pt in enumerate(p.points):
                u, v = pt.pixel
                if not (0 <= u <= w and 0 <= v <= h):
                    problems.append(
                        (f"cameras[{i}].presets[{j}].points[{k}].pixel", f"[{u:g}, {v:g}] lies outside the {w}x{h} image")
                    )
            pix = [pt.pixel for pt in p.points]
            if len(set(pix)) < len(pix):
                problems.append((f"cameras[{i}].presets[{j}].points", "two points share a pixel"))
            elif Polygon(pix).convex_hull.area < 1e-3 * w * h:
                problems.append(
                    (f"cameras[{i}].presets[{j}].points", "pixels are (nearly) on one line; spread them over the ground")
                )
    return problems


def verify_roads(site: Site) -> Problems:
    """The area a cut road frees goes to known zones, in shares that add up to at most 1."""
    problems: Problems = []
    zone_ids = {z.id for z in site.zones}
    for i, rd in enumerate(site.roads):
        for zid, share in rd.frees.items():
            _ref(problems, f"roads[{i}].frees.{zid}", zid, zone_ids, "zone")
            if not 0 < share <= 1:
                problems.append((f"roads[{i}].frees.{zid}", f"share {share:g} must be in (0, 1]"))
        if sum(rd.frees.values()) > 1.0001:
            problems.append((f"roads[{i}].frees", f"shares add up to {sum(rd.frees.values()):.2f} > 1"))
    return problems


def verify_gates(site: Site) -> Problems:
    """Gates join known zones, belong to known cameras and are at least 0.5 m long."""
    problems: Problems = []
    zone_ids = {z.id for z in site.zones}
    cam_ids = {c.id for c in site.cameras}
    for i, g in enumerate(site.gates):
        _ref(problems, f"gates[{i}].outside_zone", g.outside_zone, zone_ids, "zone")
        _ref(problems, f"gates[{i}].inside_zone", g.inside_zone, zone_ids, "zone")
        _ref(problems, f"gates[{i}].camera", g.camera, cam_ids, "camera")
        if g.outside_zone is None and g.inside_zone is None:
            problems.append((f"gates[{i}]", "needs outside_zone or inside_zone"))
        if LineString(site.projection.to_metric(g.line)).length < 0.5:
            problems.append((f"gates[{i}].line", "is shorter than 0.5 m"))
    return problems


def _action_problems(site: Site, path: str, a) -> Problems:
    problems: Problems = []
    if isinstance(a, StaffingAction):
        _ref(problems, f"{path}.post", a.post, {p.id for p in site.posts}, "post")
    elif isinstance(a, TrafficCutoffAction):
        _ref(problems, f"{path}.road", a.road, {r.id for r in site.roads}, "road")
    elif isinstance(a, OneWayAction):
        zone_ids = {z.id for z in site.zones}
        _ref(problems, f"{path}.zone", a.zone, zone_ids, "zone")
        _ref(problems, f"{path}.toward", a.toward, zone_ids, "zone")
    elif isinstance(a, MetroInboundAction):
        _ref(problems, f"{path}.gate", a.gate, {g.id for g in site.gates}, "gate")
        if a.gate in site.gate_by_id and not any(h.gate == a.gate and h.queue == "departures" for h in site.holding_areas):
            problems.append((f"{path}.gate", f"{a.gate!r} has no holding area for departures (holding_areas[].queue: "
                                             "departures): where would the queue outside the station stand?"))
    elif isinstance(a, (ExitOnlyAction, MetroLimitAction, MeteringAction)):
        _ref(problems, f"{path}.gate", a.gate, {g.id for g in site.gates}, "gate")
        if isinstance(a, MetroLimitAction) and a.divert is not None:
            _ref(problems, f"{path}.divert.zone", a.divert.zone, {z.id for z in site.zones}, "zone")
            g = site.gate_by_id.get(a.gate)
            if g is not None and a.divert.zone == g.inside_zone:
                problems.append((f"{path}.divert.zone", f"{a.divert.zone!r} is the exit it diverts from; "
                                                        "name where the passengers walk in instead"))
    return problems


def verify_plans(site: Site) -> Problems:
    """Plans name known zones; levels run IV → I with rising thresholds; actions name known things."""
    problems: Problems = []
    zone_ids = {z.id for z in site.zones}
    for k, a in enumerate(site.emergency.actions):
        problems += _action_problems(site, f"emergency.actions[{k}]", a)
    for i, p in enumerate(site.plans):
        for j, zid in enumerate(p.zones):
            _ref(problems, f"plans[{i}].zones[{j}]", zid, zone_ids, "zone")
        order = [lv.level for lv in p.levels]
        if order != sorted(order, key=LEVELS.index) or len(set(order)) != len(order):
            problems.append((f"plans[{i}].levels", f"levels must be distinct and ordered IV → I, got {order}"))
        for j, lv in enumerate(p.levels):
            base = f"plans[{i}].levels[{j}]"
            if not lv.triggers.model_dump(exclude_none=True):
                problems.append((f"{base}.triggers", "needs at least one of capacity_ratio, density, flow_ppm"))
            for k, a in enumerate(lv.actions):
                problems += _action_problems(site, f"{base}.actions[{k}]", a)
        # thresholds must rise with severity, metric by metric
        for metric in ("capacity_ratio", "density", "flow_ppm"):
            prev = None
            for j, lv in enumerate(p.levels):
                t = getattr(lv.triggers, metric)
                if t is None:
                    continue
                if prev is not None and t <= prev:
                    problems.append(
                        (f"plans[{i}].levels[{j}].triggers.{metric}", f"{t:g} must exceed the milder level's {prev:g}")
                    )
                prev = t
    return problems


def verify_basemap(site: Site) -> Problems:
    """Basemap polygons: unique ids per layer, simple rings, near the site."""
    problems: list[tuple[str, str]] = []
    proj = site.projection
    centre = proj.to_metric([site.site.center])[0]
    for layer in ("water", "buildings", "bridges"):
        seen: dict[str, int] = {}
        for i, a in enumerate(getattr(site.basemap, layer)):
            path = f"basemap.{layer}[{i}]"
            if a.id in seen:
                problems.append((f"{path}.id", f"duplicate id {a.id!r} (also basemap.{layer}[{seen[a.id]}])"))
            seen.setdefault(a.id, i)
            ring = proj.to_metric(a.polygon)
            if not Polygon(ring).is_valid:
                problems.append((f"{path}.polygon", "ring crosses itself"))
            elif math.dist(ring[0], centre) > 50_000:
                problems.append((f"{path}.polygon", f"is {math.dist(ring[0], centre) / 1000:.0f} km from site.center; lon/lat swapped?"))
    return problems


def verify_closure_points(site: Site) -> Problems:
    """A road that frees pedestrian area names where its cut is held (closure points with
    officers from known posts): a cut needs staff and set-up, never comes free."""
    problems: Problems = []
    posts = {p.id for p in site.posts}
    for i, rd in enumerate(site.roads):
        if rd.frees and not rd.closure_points:
            problems.append((f"roads[{i}].closure_points", "a road whose cut frees pedestrian area needs closure points"))
        seen: set[str] = set()
        for j, cp in enumerate(rd.closure_points):
            _ref(problems, f"roads[{i}].closure_points[{j}].post", cp.post, posts, "post")
            if cp.id in seen:
                problems.append((f"roads[{i}].closure_points[{j}].id", f"duplicate id {cp.id!r}"))
            seen.add(cp.id)
    return problems


def verify_holding_areas(site: Site) -> Problems:
    """Holding areas name known gates and zones; gates name known staff posts."""
    problems: Problems = []
    zone_ids = {z.id for z in site.zones}
    gate_ids = {g.id for g in site.gates}
    posts = {p.id for p in site.posts}
    seen: set[str] = set()
    kinds: dict[tuple[str, str], int] = {}
    for i, h in enumerate(site.holding_areas):
        if (h.gate, h.queue) in kinds:
            problems.append((f"holding_areas[{i}].gate", f"{h.gate!r} already has a holding area for {h.queue} "
                                                         f"(holding_areas[{kinds[h.gate, h.queue]}])"))
        kinds.setdefault((h.gate, h.queue), i)
        _ref(problems, f"holding_areas[{i}].gate", h.gate, gate_ids, "gate")
        _ref(problems, f"holding_areas[{i}].zone", h.zone, zone_ids, "zone")
        if h.id in seen:
            problems.append((f"holding_areas[{i}].id", f"duplicate id {h.id!r}"))
        seen.add(h.id)
    for i, g in enumerate(site.gates):
        _ref(problems, f"gates[{i}].post", g.post, posts, "post")
    return problems


def verify_staff_pool(site: Site) -> Problems:
    """The reserve can staff the largest single measure, and its base is near the site."""
    problems: Problems = []
    need = max([rd.officers for rd in site.roads] + [g.staff for g in site.gates] + [site.staff.one_way_staff])
    if site.staff.pool < need:
        problems.append(("staff.pool", f"{site.staff.pool} cannot staff the largest measure ({need})"))
    if site.staff.base is not None:
        proj = site.projection
        d = math.dist(proj.to_metric([site.staff.base])[0], proj.to_metric([site.site.center])[0])
        if d > 10_000:
            problems.append(("staff.base", f"is {d / 1000:.0f} km from site.center; lon/lat swapped?"))
    return problems


def verify_measures(site: Site) -> Problems:
    """Measures: unique ids, known plans and zones, valid actions, a release below the trigger,
    and staff the pool can supply."""
    from .measures import staff_needed

    problems: Problems = []
    plan_ids = {p.id for p in site.plans}
    zone_ids = {z.id for z in site.zones}
    seen: dict[str, int] = {}
    for i, m in enumerate(site.measures):
        base = f"measures[{i}]"
        if m.id in seen:
            problems.append((f"{base}.id", f"duplicate id {m.id!r} (also measures[{seen[m.id]}])"))
        seen.setdefault(m.id, i)
        for j, pid in enumerate(m.plans):
            _ref(problems, f"{base}.plans[{j}]", pid, plan_ids, "plan")
        for j, zid in enumerate(m.relieves):
            _ref(problems, f"{base}.relieves[{j}]", zid, zone_ids, "zone")
        for k, a in enumerate(m.actions):
            problems += _action_problems(site, f"{base}.actions[{k}]", a)
        if m.release.forecast_ratio >= m.trigger.forecast_ratio:
            problems.append((f"{base}.release.forecast_ratio",
                             f"{m.release.forecast_ratio:g} must be below the trigger's {m.trigger.forecast_ratio:g} (hysteresis)"))
        need: dict[str, int] = {}
        for a in m.actions:
            for post, n in staff_needed(site, a).items():
                need[post] = max(need.get(post, 0), n) if a.type == "staffing" else need.get(post, 0) + n
        for k, a in enumerate(m.actions):
            if isinstance(a, MetroLimitAction) and a.divert is not None and m.setup_min < a.divert.setup_min:
                problems.append((f"{base}.setup_min", f"{m.setup_min:g} min is shorter than the metro operator's "
                                                      f"start-up (actions[{k}].divert.setup_min {a.divert.setup_min:g})"))
        if sum(need.values()) > site.staff.pool:
            problems.append((f"{base}.actions", f"needs {sum(need.values())} staff beyond the posts' duty roster; "
                                                f"the staff pool holds {site.staff.pool}"))
    return problems


def verify_partitions(site: Site) -> Problems:
    """Each plan in one partition; nothing (zone, camera, gate, measure) spans two; the prefix
    carries no hash tag of its own when partitions add theirs (crowdflow/site/partitions.py)."""
    from .partitions import partition_problems

    problems = partition_problems(site)
    if site.control.partitions and "{" in site.redis.prefix:
        problems.insert(0, ("redis.prefix", f"{site.redis.prefix!r} has a hash tag; with control.partitions each "
                                            "partition adds its own ({partition}), so give a prefix without braces"))
    return problems


# The named checks, in the order they run. A site file is usable when all return nothing.
CHECKS: tuple[Callable[[Site], Problems], ...] = (
    verify_unique_ids,
    verify_basemap,
    verify_users,
    verify_zones,
    verify_cameras,
    verify_roads,
    verify_gates,
    verify_plans,
    verify_closure_points,
    verify_holding_areas,
    verify_staff_pool,
    verify_measures,
    verify_partitions,
)


def semantic_problems(site: Site) -> Problems:
    """Every named check's problems, in order."""
    return [p for check in CHECKS for p in check(site)]


# ----------------------------------------------------------------------------- warnings
#
# A warning names something that loads and runs but cannot do what the file says; the site
# is still usable. ``check-config`` prints them.


def verify_triggers_reachable(site: Site) -> Problems:
    """Every level trigger can be reached by some zone of its plan: a flow trigger above the
    fundamental diagram's peak needs a gate that measures flow; a density (or a capacity
    ratio, through the zone's area per visitor) at or beyond jam density never occurs."""
    warnings: Problems = []
    peak = crowd.peak_flow_ppm()
    gated = {zid for g in site.gates for zid in (g.inside_zone, g.outside_zone) if zid}
    zones = site.zone_by_id
    for i, p in enumerate(site.plans):
        known = [zones[z] for z in p.zones if z in zones]
        for j, lv in enumerate(p.levels):
            base = f"plans[{i}].levels[{j}].triggers"
            t = lv.triggers
            if t.flow_ppm is not None and t.flow_ppm > peak and not any(z.id in gated for z in known):
                warnings.append((f"{base}.flow_ppm",
                                 f"{t.flow_ppm:g} p/m/min can never fire: flow from density peaks at {peak:.1f} "
                                 f"and no zone of plan {p.id} has a gate that measures flow"))
            if t.density is not None and t.density >= crowd.RHO_JAM:
                warnings.append((f"{base}.density", f"{t.density:g} p/m² is at or beyond jam density "
                                                    f"{crowd.RHO_JAM:g}: it can never fire"))
            if t.capacity_ratio is not None and known and all(
                    t.capacity_ratio / z.area_per_visitor_m2 >= crowd.RHO_JAM for z in known):
                warnings.append((f"{base}.capacity_ratio",
                                 f"{t.capacity_ratio:g} needs a density at or beyond jam ({crowd.RHO_JAM:g} p/m²) "
                                 f"in every zone of plan {p.id}: it can never fire"))
    return warnings


WARNINGS: tuple[Callable[[Site], Problems], ...] = (verify_triggers_reachable,)


def semantic_warnings(site: Site) -> Problems:
    """Every named warning check's findings, in order."""
    return [w for check in WARNINGS for w in check(site)]


# ----------------------------------------------------------------------------- OSM geometry
#
# Run by ``check-config`` when the site's OpenStreetMap extract is at hand (site.osm.file,
# $CROWDFLOW_OSM or --osm); the extract is ODbL and not in the repository, so it is not part
# of loading a site.


def osm_reach_m(site: Site, points, refs: list[str], osm, closed: bool = True) -> float:
    """How far (m) the farthest point of an outline (a zone's ring when ``closed``, a road's
    line otherwise) lies from the OSM features ``refs`` (0 inside a footprint), sampled every
    metre along it."""
    import numpy as np
    import shapely
    from shapely.geometry import LineString, Point
    from shapely.ops import unary_union

    proj = site.projection
    feats = []
    for r in refs:
        for part in getattr(osm[r], "geoms", [osm[r]]):
            if part.geom_type == "Point":
                feats.append(Point(proj.to_metric([part.coords[0]])[0]))
            elif part.geom_type == "LineString":
                feats.append(LineString(proj.to_metric(list(part.coords))))
            elif part.geom_type == "Polygon":
                feats.append(Polygon(proj.to_metric(list(part.exterior.coords))))
    pts = proj.to_metric(list(points))
    outline = LineString(pts + [pts[0]] if closed else pts)
    dense = np.asarray(shapely.segmentize(outline, 1.0).coords)
    return float(shapely.distance(unary_union(feats), shapely.points(dense)).max())


def verify_osm_geometry(site: Site, osm) -> Problems:
    """Every zone names the OSM features it is drawn on (``zones[].osm``: the complex's
    footprint, footways, steps, sidewalks, metro exits), they are in the extract, and no point
    of the zone lies farther than ``site.osm.tolerance_m`` from them. Roads that name their
    OSM ways follow them within the same tolerance."""
    problems: Problems = []
    tol = site.site.osm.tolerance_m
    for kind, items in (("zones", site.zones), ("roads", site.roads)):
        for i, it in enumerate(items):
            refs = list(it.osm)
            if not refs:
                if kind == "zones":
                    problems.append((f"zones[{i}].osm", f"zone {it.id} names no OSM feature it lies on"))
                continue
            missing = [(j, r) for j, r in enumerate(refs) if r not in osm]
            for j, r in missing:
                problems.append((f"{kind}[{i}].osm[{j}]", f"{r} is not in the OSM extract"))
            if missing:
                continue
            closed = kind == "zones"
            reach = osm_reach_m(site, it.polygon if closed else it.line, refs, osm, closed=closed)
            if reach > tol:
                what = "polygon" if closed else "line"
                problems.append((f"{kind}[{i}].{what}", f"reaches {reach:.0f} m from the OSM features it names "
                                                        f"({', '.join(refs)}); tolerance {tol:g} m"))
    return problems


OSM_CHECKS = (verify_osm_geometry,)

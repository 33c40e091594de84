"""What is in force, published once. Pure.

:func:`in_force` turns the plan areas' published states (:class:`PlanState`) and the site
mode into one :class:`InForce` record: every active measure with its source — a plan level,
the site's emergency mode, or a commander's override — since when, by whom, and the posts it
is sent to. Control publishes it (``<p>:inforce`` and an ``inforce`` event); the map, the
officers' phones and the simulator read it instead of deriving it each on their own, so the
emergency-only measures (e.g. the 千厮门隧道 cutoff) reach all of them.

It is fed with records, not the engine's internals, so any plan engine that publishes
PlanState and SiteMode produces the same record.
"""

from __future__ import annotations

from collections.abc import Mapping

from shapely.geometry import LineString, Point

from crowdflow.records import InForce, MeasureInForce, PlanState, SiteMode, merge_measures
from crowdflow.site import Site

# The department that carries out a measure when the site does not name a post.
DEPARTMENT = {"traffic_cutoff": "交警", "metro_limit": "轨道集团"}


def responsible_posts(site: Site, action) -> list[str]:
    """The posts an action is sent to: a staffing order names its post; a cutoff, one-way,
    exit-only or metro limit goes to the nearest post of the department that carries it out
    (the nearest post of any department when the site has none); a broadcast to nobody in
    particular (every phone shows it)."""
    if action.type == "staffing":
        return [action.post]
    if action.type == "broadcast" or not site.posts:
        return []
    proj = site.projection
    if action.type == "traffic_cutoff":
        rd = site.road_by_id.get(action.road)
        geom = LineString(proj.to_metric(rd.line)) if rd else None
    elif action.type == "one_way":
        geom = site.zone_polygons_m.get(action.zone)
    else:
        g = site.gate_by_id.get(action.gate)
        geom = LineString(proj.to_metric(list(g.line))) if g else None
    if geom is None:
        return []
    want = DEPARTMENT.get(action.type)
    pool = [p for p in site.posts if p.department == want] or list(site.posts)
    best = min(pool, key=lambda p: geom.distance(Point(proj.to_metric([p.position])[0])))
    return [best.id]


def _acts_at(site: Site, ps: PlanState) -> dict[str, float]:
    """Action (as JSON) → when the first measure of the area that carries it acts on the
    ground (``PlanState.in_effect``)."""
    out: dict[str, float] = {}
    for mid, t in (ps.in_effect or {}).items():
        m = site.measure_by_id.get(mid)
        for a in (m.actions if m else ()):
            key = a.model_dump_json()
            out[key] = min(out.get(key, t), t)
    return out


def in_force(site: Site, plans: Mapping[str, PlanState], mode: SiteMode | None, now: float) -> InForce:
    """Every measure in force, merged: one entry per measure (staffing per post keeps the
    largest headcount), each with the source that put it there."""
    entries: list[MeasureInForce] = []
    for pid in sorted(plans):
        ps = plans[pid]
        if ps.level is None:
            continue
        last = ps.history[-1] if ps.history else None
        source = {"override": "override", "emergency": "emergency"}.get(last.via if last else "", "plan")
        by = last.by if last else "system"
        since = ps.since if ps.since is not None else (last.at if last else now)
        acts = _acts_at(site, ps)
        for a in ps.active_actions:
            entries.append(MeasureInForce(action=a, source=source, plan_id=pid, level=ps.level, since=since, by=by,
                                          posts=responsible_posts(site, a), acts_at=acts.get(a.model_dump_json())))
    if mode is not None and mode.mode == "emergency":
        for a in site.emergency.actions:
            entries.append(MeasureInForce(action=a, source="emergency", plan_id=None, level=None, since=mode.since,
                                          by=mode.by, posts=responsible_posts(site, a)))
    return InForce(mode=mode.mode if mode else "normal", measures=merge_measures(entries), updated_at=now)


def same_measures(a: InForce | None, b: InForce) -> bool:
    """Equal but for ``updated_at`` (publish only on change)."""
    return a is not None and a.model_dump(exclude={"updated_at"}) == b.model_dump(exclude={"updated_at"})

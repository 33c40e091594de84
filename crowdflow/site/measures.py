"""Measures as first-class site data (``measures``) and the staff who carry them out (``staff``).

A *measure* is one thing the command post can switch on or off — meter an entrance, make the
bridge walkways one-way, cut a road — with its own trigger on the forecast, its own release,
minimum on and off times, set-up and tear-down, and its cost (staff at posts, the road's
traffic cost). The tiered levels (IV → I) stay what commanders and the public see; a level
*allows* the measures whose ``level`` it has reached, and within that bound the plan engine
picks measures (``control/optimizer.py``). ``stage`` orders the levers: metering and
information first (1), flow control (2), road closures (3), entry stops (4); a later stage is
only used when the earlier ones cannot hold the forecast.

The staff a measure needs follow from the site, as the twin counts them
(:func:`staff_needed`): a road cut its closure points' officers, metering and exit-only the
gate's marshals (a metro inbound limit: the marshals of its queue pen outside), one-way ``staff.one_way_staff`` at the post nearest the zone, and a
``staffing`` action the headcount above the post's duty roster. They come from the ``staff``
pool (:mod:`.staff`).
"""

from __future__ import annotations

from pydantic import Field

from typing import TYPE_CHECKING

from ..vocab import Level
from .base import Id, Strict, Text
from .plans import Action

if TYPE_CHECKING:
    from .model import Site


class MeasureTrigger(Strict):
    """Switch on when the forecast (with the measures in force) of any relieved zone reaches
    ``forecast_ratio`` of its capacity within ``lead_min``."""

    forecast_ratio: float = Field(0.9, gt=0, le=5)
    lead_min: float = Field(20, gt=0, le=120)


class MeasureRelease(Strict):
    """Release when the forecast *without* the measure keeps every relieved zone below
    ``forecast_ratio`` over the whole horizon, for ``quiet_min`` in a row."""

    forecast_ratio: float = Field(0.8, gt=0, le=5)
    quiet_min: float = Field(10, ge=0, le=240)


class MeasureCost(Strict):
    traffic_per_h: float = Field(0, ge=0, le=1000)  # vehicle-traffic cost of an hour in force (0: none)
    other: float = Field(0, ge=0, le=1000)  # anything else (announcements, metro operator's effort)


class Measure(Strict):
    id: Id
    name: Text
    plans: list[Id] = Field(min_length=1)  # areas whose level allows it (the first one owns it)
    level: Level = "IV"  # the lowest level that allows it
    stage: int = Field(1, ge=1, le=4)  # 1 metering/information, 2 flow control, 3 road closure, 4 entry stop
    relieves: list[Id] = Field(min_length=1)  # zones whose forecast it answers
    actions: list[Action] = Field(min_length=1)
    trigger: MeasureTrigger = MeasureTrigger()
    release: MeasureRelease = MeasureRelease()
    min_on_min: float = Field(10, ge=0, le=600)
    min_off_min: float = Field(5, ge=0, le=600)
    setup_min: float = Field(2, ge=0, le=120)  # from staff in place to effect on the ground
    teardown_min: float = Field(2, ge=0, le=120)
    cost: MeasureCost = MeasureCost()




def staff_needed(site: "Site", action) -> dict[str, int]:
    """Post → officers one action needs beyond the posts' duty roster (the twin's rule)."""
    t = getattr(action, "type", None)
    if t == "staffing":
        normal = site.post_by_id[action.post].headcount if action.post in site.post_by_id else 0
        return {action.post: action.headcount - normal} if action.headcount > normal else {}
    if t == "traffic_cutoff":
        rd = site.road_by_id.get(action.road)
        out: dict[str, int] = {}
        for cp in (rd.closure_points if rd else []):
            out[cp.post] = out.get(cp.post, 0) + cp.officers
        return out
    if t in ("metering", "exit_only", "metro_inbound"):
        g = site.gate_by_id.get(action.gate)
        return {g.post: g.staff} if g is not None and g.post and g.staff else {}
    if t == "one_way" and site.posts and site.staff.one_way_staff:
        poly = site.zone_polygons_m.get(action.zone)
        if poly is None:
            return {}
        from shapely.geometry import Point

        proj = site.projection
        post = min(site.posts, key=lambda p: poly.distance(Point(proj.to_metric([p.position])[0])))
        return {post.id: site.staff.one_way_staff}
    return {}

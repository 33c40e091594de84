"""Measures as first-class site data (``measures``) and the staff who carry them out (``staff``).

A *measure* is one thing the command post can switch on or off — meter an entrance, make the
bridge walkways one-way, cut a road — with its own trigger on the forecast, its own release,
minimum on and off times, set-up and tear-down, and its cost (staff at posts, the road's
traffic cost). The tiered levels (IV → I) stay what commanders and the public see; a level
*allows* the measures whose ``level`` it has reached, and within that bound the plan engine
picks measures (``control/optimizer.py``). ``stage`` orders the levers: metering and
information first (1), flow control (2), road closures (3), entry stops (4); a later stage is
only used when the earlier ones cannot hold the forecast.

The staff ``reserves`` are the pool measures draw from: each reserve is a muster point with a
headcount; travel time to a post is the walking distance × ``detour`` ÷ ``walk_speed_mps``.
"""

from __future__ import annotations

from pydantic import Field

from ..vocab import Level
from .base import Id, LonLat, Strict, Text
from .plans import Action


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


class StaffReserve(Strict):
    id: Id
    name: Text
    position: LonLat
    department: str = Field(min_length=1)
    headcount: int = Field(ge=0, le=10000)


class StaffSection(Strict):
    reserves: list[StaffReserve] = Field(default_factory=list)
    walk_speed_mps: float = Field(1.2, gt=0.1, le=20)  # 1.2: walking through a crowd; a van is faster
    detour: float = Field(1.4, ge=1, le=5)  # street distance ÷ straight line
    min_block_min: float = Field(30, ge=0, le=480)  # least time a dispatched team stays at a post

"""Crowd-control measures (``Action``), tiered ``plans`` and the ``emergency`` set."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from ..vocab import Level
from .base import Id, Strict, Text


class StaffingAction(Strict):
    type: Literal["staffing"]
    post: Id
    headcount: int = Field(ge=0, le=10000)


class TrafficCutoffAction(Strict):
    type: Literal["traffic_cutoff"]
    road: Id


class OneWayAction(Strict):
    type: Literal["one_way"]
    zone: Id
    toward: Id  # the zone people walk toward


class ExitOnlyAction(Strict):
    type: Literal["exit_only"]
    gate: Id


class MetroDivert(Strict):
    """Passengers a metro limit does not let out do not wait in the station: they ride on to a
    neighbouring station (只上不下 / 跳站) and walk back, reaching the site at ``zone`` (a way
    in on foot) ``extra_min`` later than they would have. The metro operator needs
    ``setup_min`` to start it (dispatch orders, announcements on the trains)."""

    zone: Id  # where they reach the site on foot
    via: Text | None = None  # the station(s) they alight at instead
    extra_min: float = Field(12, gt=0, le=60)  # their extra travel: ride on, exit, walk back [estimate]
    setup_min: float = Field(5, ge=0, le=60)


class MetroLimitAction(Strict):
    """Let at most ``max_per_min`` passengers a minute out of a metro exit's gates; the rest
    wait in the station's concourse (the gate's holding area), or, with ``divert``, ride on to
    another station and come back on foot."""

    type: Literal["metro_limit"]
    gate: Id
    max_per_min: int = Field(ge=0, le=100000)
    divert: MetroDivert | None = None


class MetroInboundAction(Strict):
    """进站限流: let at most ``per_min`` persons a minute into the station through a metro exit;
    the rest queue outside it, in the gate's holding area for departures (a pen on the street,
    own area, own density), not in the exit itself."""

    type: Literal["metro_inbound"]
    gate: Id
    per_min: int = Field(ge=1, le=100000)


class MeteringAction(Strict):
    """Let at most ``per_min`` persons a minute through a gate inward; the rest wait in the
    gate's holding area."""

    type: Literal["metering"]
    gate: Id
    per_min: int = Field(ge=0, le=100000)


class BroadcastAction(Strict):
    type: Literal["broadcast"]
    text: Text


Action = Annotated[
    Union[
        StaffingAction,
        TrafficCutoffAction,
        OneWayAction,
        ExitOnlyAction,
        MetroLimitAction,
        MetroInboundAction,
        MeteringAction,
        BroadcastAction,
    ],
    Field(discriminator="type"),
]


class Triggers(Strict):
    """A level holds when ANY stated metric reaches its threshold."""

    capacity_ratio: float | None = Field(None, gt=0, le=5)
    density: float | None = Field(None, gt=0, le=10)  # persons / m²
    flow_ppm: float | None = Field(None, gt=0, le=200)  # persons / metre width / minute


class PlanLevel(Strict):
    level: Level
    triggers: Triggers
    sustain_s: float = Field(60, ge=0, le=3600)
    actions: list[Action] = Field(default_factory=list)


class Hysteresis(Strict):
    capacity_ratio: float = Field(0.05, ge=0, le=1)
    density: float = Field(0.3, ge=0, le=5)
    flow_ppm: float = Field(5, ge=0, le=100)


class Plan(Strict):
    id: Id
    name: Text
    zones: list[Id] = Field(min_length=1)
    hysteresis: Hysteresis = Hysteresis()
    cooldown_s: float = Field(300, ge=0, le=86400)  # least time at a level before stepping down
    predictive_lead_min: float = Field(10, ge=0, le=60)  # forecast crossing within this triggers; 0 = off
    levels: list[PlanLevel] = Field(min_length=1)


class Emergency(Strict):
    """平急转换: what the whole site switches to in emergency mode (every area at level I plus these)."""

    name: Text = Text(zh="应急状态", en="Emergency mode")
    actions: list[Action] = Field(default_factory=list)

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


class MetroLimitAction(Strict):
    type: Literal["metro_limit"]
    gate: Id
    max_per_min: int = Field(ge=0, le=100000)


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

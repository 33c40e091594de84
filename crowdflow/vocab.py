"""One vocabulary: the ids, levels, roles, health states and command kinds of the system.

Declared here once and imported by the site model, the wire records, the plan engine, the
alarms and the dashboard (which hands :func:`as_dict` to the page through ``/api/site``).
Each ``Literal`` type is built from its tuple, so a new value is added in exactly one place.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]

# A Redis key prefix: ids joined by ":", at most one of them a Redis Cluster hash tag in braces
# (``cf``, ``cf:{site}``, ``tenant-a:{bridge}``); see crowdflow/bus.py and docs/scaling.md.
PREFIX_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}(:([a-z0-9][a-z0-9_.-]{0,31}|\{[a-z0-9][a-z0-9_.-]{0,31}\}))*$"

# National four-level response scheme, least → most severe (IV blue … I red).
LEVELS = ("IV", "III", "II", "I")
Level = Literal["IV", "III", "II", "I"]
LEVEL_COLOURS = {"IV": "blue", "III": "yellow", "II": "orange", "I": "red"}

# Dashboard roles; each includes the rights of the ones before it.
ROLES = ("viewer", "operator", "commander")
Role = Literal["viewer", "operator", "commander"]

# The health of one camera's view, as the edge reports it and the map shows it.
HEALTH_STATES = ("ok", "camera_offline", "view_moved", "view_unverified", "frozen", "degraded")
Health = Literal["ok", "camera_offline", "view_moved", "view_unverified", "frozen", "degraded"]

# What control knows of one camera's view of one zone: its health, or why it is not in use.
CAMERA_VIEW_STATES = HEALTH_STATES + ("out_of_view", "stale", "no_data")
CameraViewState = Literal["ok", "camera_offline", "view_moved", "view_unverified", "frozen", "degraded",
                          "out_of_view", "stale", "no_data"]

# Where a measure in force comes from, and what an officer answers to an order.
MEASURE_SOURCES = ("plan", "emergency", "override")
MeasureSource = Literal["plan", "emergency", "override"]
ORDER_STATES = ("sent", "acknowledged", "in_place", "cannot", "withdrawn")
OrderStatus = Literal["sent", "acknowledged", "in_place", "cannot", "withdrawn"]
ORDER_ANSWERS = ("acknowledged", "in_place", "cannot")  # what an officer may answer
OrderAnswerKind = Literal["acknowledged", "in_place", "cannot"]

# Site operation (平急转换).
MODES = ("normal", "emergency")
Mode = Literal["normal", "emergency"]

# Crowd-control measure types (the ``type`` of a site action).
ACTION_TYPES = ("staffing", "traffic_cutoff", "one_way", "exit_only", "metro_limit", "metro_inbound", "metering", "broadcast")

# Commands a dashboard user can send to control, and the least role each needs.
COMMAND_KINDS = ("confirm", "reject", "override", "set_auto", "set_mode", "ack_alarm", "answer_order", "report_queue")
CommandKind = Literal["confirm", "reject", "override", "set_auto", "set_mode", "ack_alarm", "answer_order", "report_queue"]
COMMAND_ROLE: dict[str, str] = {
    "confirm": "commander",
    "reject": "commander",
    "override": "commander",
    "set_auto": "commander",
    "set_mode": "commander",
    "ack_alarm": "operator",
    "answer_order": "viewer",  # the officer at the post answers; a viewer login with a post
    # the staff at a holding pen, or the metro operator's station control for a concourse,
    # report how many people wait there: the cameras see zones, not the pens behind a metering
    "report_queue": "viewer",
}
# The fields each command kind needs besides id, kind, user, role and issued_at.
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "confirm": ("recommendation_id",),
    "reject": ("recommendation_id",),
    "override": ("plan_id", "note"),
    "set_auto": ("plan_id", "auto"),
    "set_mode": ("mode",),
    "ack_alarm": ("alarm_id",),
    "answer_order": ("order_id", "answer"),
    "report_queue": ("hold_id", "people"),
}

ALARM_KINDS = ("zone_unknown", "camera_offline", "view_moved", "view_unverified", "frozen",
               "recommendation", "level_I", "record_rejected")
AlarmKind = Literal["zone_unknown", "camera_offline", "view_moved", "view_unverified", "frozen",
                    "recommendation", "level_I", "record_rejected"]
SEVERITIES = ("info", "warning", "critical")
Severity = Literal["info", "warning", "critical"]

ZONE_STATUSES = ("ok", "unknown")  # also a holding area's (a queue count is fresh or it is unknown)
ZoneStatus = Literal["ok", "unknown"]
LOS_GRADES = ("A", "B", "C", "D", "E", "F")
LOS = Literal["A", "B", "C", "D", "E", "F"]


def level_rank(level: str | None) -> int:
    """-1 for normal (no level), 0 for IV … 3 for I."""
    return -1 if level is None else LEVELS.index(level)


def role_allows(role: str, needed: str) -> bool:
    """True when ``role`` has at least the rights of ``needed``."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def as_dict() -> dict:
    """The vocabulary as plain data for the page (``/api/site``)."""
    return {
        "levels": list(LEVELS),
        "level_colours": LEVEL_COLOURS,
        "roles": list(ROLES),
        "health_states": list(HEALTH_STATES),
        "modes": list(MODES),
        "action_types": list(ACTION_TYPES),
        "command_kinds": list(COMMAND_KINDS),
        "command_role": COMMAND_ROLE,
        "command_fields": {k: list(v) for k, v in COMMAND_FIELDS.items()},
        "alarm_kinds": list(ALARM_KINDS),
        "los_grades": list(LOS_GRADES),
        "camera_view_states": list(CAMERA_VIEW_STATES),
        "measure_sources": list(MEASURE_SOURCES),
        "order_states": list(ORDER_STATES),
        "order_answers": list(ORDER_ANSWERS),
    }


def _check() -> None:
    """The Literal types and their tuples must agree (checked at import)."""
    from typing import get_args

    for lit, tup in ((Level, LEVELS), (Role, ROLES), (Health, HEALTH_STATES), (Mode, MODES),
                     (CommandKind, COMMAND_KINDS), (AlarmKind, ALARM_KINDS), (Severity, SEVERITIES),
                     (ZoneStatus, ZONE_STATUSES), (LOS, LOS_GRADES), (CameraViewState, CAMERA_VIEW_STATES),
                     (MeasureSource, MEASURE_SOURCES), (OrderStatus, ORDER_STATES),
                     (OrderAnswerKind, ORDER_ANSWERS)):
        assert get_args(lit) == tup, (lit, tup)
    assert set(COMMAND_ROLE) == set(COMMAND_KINDS) == set(COMMAND_FIELDS)


_check()

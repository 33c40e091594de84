"""Wire records: one versioned, validated record type per hop.

* :class:`Observation`    — edge → control (stream ``<p>:obs``).
* :class:`ZoneState`      — control → dashboard (hash ``<p>:zone:state``).
* :class:`PlanState`, :class:`Recommendation`, :class:`Alarm`, :class:`SiteMode`
                          — control → dashboard (hashes, see ``crowdflow.bus.Keys``).
* :class:`HoldState`      — control → dashboard (hash ``<p>:hold:state``): queue pens' counts.
* :class:`Command`        — dashboard → control (stream ``<p>:cmd``), answered by
  :class:`CommandResult`.
* :class:`AuditEntry`     — control's append-only decision log (stream ``<p>:audit``).

Every control → dashboard change is also appended to the one stream ``<p>:events`` as
``{type, rec}`` (see :data:`EVENT_TYPES`), which the dashboard follows.

Records travel as compact JSON in a single stream field (``rec``). Decoding goes through
:func:`decode`, which never raises anything but :class:`RecordError`, whose message names the
offending field (``zones[0].count: Input should be greater than or equal to 0``).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .site import Action, Text
from .vocab import (LOS, AlarmKind, CameraViewState, CommandKind, Health, Id, Level, MeasureSource, Mode,
                    OrderAnswerKind, OrderStatus, Role, Severity, ZoneStatus)

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A record that cannot be accepted; ``str()`` says which field and why."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=False)


class ZoneCount(Record):
    """What one camera saw of one zone during the observation window."""

    zone_id: Id
    count: float = Field(ge=0, le=1e6)  # people seen in the visible part (window mean)
    visible_area_m2: float = Field(gt=0, le=1e7)  # walkable ground of the zone in view
    method: Literal["detect", "tiled", "density", "sim"] = "detect"
    confidence: float = Field(1.0, ge=0, le=1)


class Observation(Record):
    """Edge → control: one per camera per publish interval (also as a heartbeat).

    Decoded with strict types: a number sent as ``"12"`` or ``true`` is refused. Physical
    plausibility (densities, flows, clocks, ownership) is checked by ``control.ingest``."""

    v: Literal[1] = 1
    camera_id: Id
    agent_id: str = Field(min_length=1, max_length=128)
    seq: int = Field(ge=0, lt=2**63)  # per camera, strictly increasing across restarts
    captured_at: float = Field(gt=1e9)  # Unix seconds, end of the window (capture clock)
    window_s: float = Field(1.0, gt=0, le=3600)
    frames: int = Field(0, ge=0)  # frames that went into the window
    health: Health = "ok"
    preset: str | None = Field(None, max_length=64)
    zones: list[ZoneCount] = Field(default_factory=list, max_length=64)
    gates: list[GateFlow] = Field(default_factory=list, max_length=64)
    sent_at: float | None = Field(None, gt=1e9)  # the gateway's clock when it published (skew check)


class LastKnown(Record):
    count: float
    density: float
    at: float


class GateFlow(Record):
    """Directional line-crossing counts of one gate during an observation window."""

    gate_id: Id
    inflow: int = Field(ge=0, le=1_000_000)  # crossings outside_zone → inside_zone
    outflow: int = Field(ge=0, le=1_000_000)


class Forecast(Record):
    horizon_min: float = Field(gt=0)
    count: float = Field(ge=0)
    capacity_ratio: float = Field(ge=0)


class CameraView(Record):
    """What control knows of one configured camera's view of a zone: structured health, so
    no reader has to parse it out of ``reason``."""

    camera_id: Id
    state: CameraViewState  # an edge health state, or out_of_view / stale / no_data
    at: float | None = None  # capture time of the camera's last word about this zone
    preset: str | None = None
    used: bool = False  # its count is in the zone's value now


class ZoneState(Record):
    """Control → dashboard: the state of one zone. Unknown values are null, never 0."""

    v: Literal[1] = 1
    zone_id: Id
    status: ZoneStatus
    reason: str | None = None  # why unknown
    count: float | None = None  # people in the zone (estimated over its walkable area)
    count_std: float | None = None  # 1 σ of the count: wider where parts are estimated, not seen
    density: float | None = None  # persons / m² of walkable ground
    capacity: int  # LB/T 034-2014 instantaneous capacity
    capacity_ratio: float | None = None
    coverage: float | None = None  # share of the walkable area the cameras see, 0..1
    estimated_share: float | None = None  # share estimated from history or neighbours (not seen now)
    method: str | None = None
    confidence: float | None = None
    sources: list[str] = Field(default_factory=list)  # cameras whose data is in the value
    updated_at: float | None = None  # capture time of the newest observation used
    computed_at: float  # when control produced this record
    last_known: LastKnown | None = None  # the last fresh value, shown with its age when unknown
    flow_ppm: float | None = None  # persons / metre width / minute (bottleneck flow metric)
    flow_measured: bool | None = None  # flow_ppm counted at gates (True) or from density (False)
    los: LOS | None = None  # Fruin walkway LOS: the worse of the space and the flow tables
    inflow_pm: float | None = None  # persons per minute entering (gates), smoothed
    outflow_pm: float | None = None
    trend_pm: float | None = None  # d(count)/dt in persons per minute
    forecast: list[Forecast] = Field(default_factory=list)  # 5/10/15 min ahead
    minutes_to_level: dict[Level, float] = Field(default_factory=dict)  # forecast crossing times
    cameras: list[CameraView] = Field(default_factory=list)  # every camera configured for the zone


# ----------------------------------------------------------------------------- plans and decisions


class Reason(Record):
    """One measured reason for a recommendation, with a ready sentence in zh and en."""

    zone_id: Id | None = None
    metric: Literal["capacity_ratio", "density", "flow_ppm"]
    value: float
    threshold: float
    held_s: float | None = None  # how long the condition has held
    forecast_min: float | None = None  # predictive: the forecast crosses in this many minutes
    text: Text  # e.g. zh "桥面北段 承载率 0.86 ≥ 0.80 已持续 120 秒；预计 9 分钟后达 0.97"


class StaffMove(Record):
    """A dispatch: how many officers go from where to where, when they leave and are in place."""

    n: int = Field(ge=1, le=10000)
    from_id: Id  # staff reserve (deploy) or post (release)
    to_id: Id
    depart_at: float
    in_place_at: float
    measure_id: Id
    kind: Literal["deploy", "release"]
    text: Text


class Recommendation(Record):
    """Control → dashboard: a level change for one plan area, waiting for a commander
    (or applied at once when the area is automatic)."""

    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=64)
    plan_id: Id
    level: Level | None  # None: stand down to normal
    from_level: Level | None
    actions: list[Action] = Field(default_factory=list)  # all actions in force at the new level
    reasons: list[Reason] = Field(default_factory=list)
    predictive: bool = False
    created_at: float
    status: Literal["pending", "confirmed", "rejected", "overridden", "auto_applied", "superseded", "expired"]
    # Measures engine (site ``measures``): the measure set in force after it (None: the level's
    # cumulative bundle), what it switches on/off, the staff moves, and which engine chose it
    # ("mpc": the twin's forecast; "rules": the measures' own triggers when the forecast could
    # not finish in time).
    measures: list[Id] | None = None
    measures_on: list[Id] = Field(default_factory=list)
    measures_off: list[Id] = Field(default_factory=list)
    dispatch: list[StaffMove] = Field(default_factory=list)
    engine: Literal["mpc", "rules"] | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    note: str | None = None


class HoldState(Record):
    """Control → dashboard: people waiting in one holding area (a queue pen behind a metering,
    a metro concourse), as last reported by the staff there or the metro operator
    (``report_queue``). Cameras count zones, not the pens, so this is the only measured
    figure of a queue. A report older than the limit is ``unknown`` (kept as ``last_*``)."""

    v: Literal[1] = 1
    hold_id: Id
    gate_id: Id
    zone_id: Id
    status: ZoneStatus
    reason: str | None = None  # why unknown
    people: float | None = None
    density: float | None = None  # people / m² of the pen
    area_m2: float
    reported_at: float | None = None  # when the count was taken (the report's issued_at)
    reported_by: str | None = None
    last_people: float | None = None  # the last fresh count, shown with its age when unknown
    last_at: float | None = None
    computed_at: float


class LevelChange(Record):
    level: Level | None
    at: float
    by: str  # user name, or "system" for automatic areas
    via: Literal["confirm", "override", "auto", "emergency", "release"]


class PlanState(Record):
    """Control → dashboard: one plan area's level, mode and active actions."""

    v: Literal[1] = 1
    plan_id: Id
    level: Level | None  # None: normal
    since: float | None = None
    auto: bool = False  # automatic: recommendations apply without a commander
    active_actions: list[Action] = Field(default_factory=list)  # cumulative for the level
    pending: str | None = None  # id of the recommendation waiting for a decision
    history: list[LevelChange] = Field(default_factory=list)  # newest last, bounded
    updated_at: float
    measures: dict[Id, float] | None = None  # measure id → in force since (None: level bundles)
    engine: Literal["mpc", "rules"] | None = None  # who chose the last measures (rules: fallback)
    staff: list[StaffMove] = Field(default_factory=list)  # the latest dispatch of this area
    # measure id → when it acts on the ground (its officers in place and its set-up done); until
    # then it is in force on paper only. Published once, here, for every reader (the what-if, the map)
    in_effect: dict[Id, float] | None = None


class SiteMode(Record):
    """平急转换: the whole site in normal or emergency operation."""

    v: Literal[1] = 1
    mode: Mode
    since: float
    by: str
    reason: str | None = None


class Alarm(Record):
    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=128)
    kind: AlarmKind
    severity: Severity
    zone_id: Id | None = None
    camera_id: Id | None = None
    plan_id: Id | None = None
    text: Text
    raised_at: float
    cleared_at: float | None = None
    acked_by: str | None = None
    acked_at: float | None = None


class MeasureInForce(Record):
    """One measure in force: what, from where, since when and by whom."""

    action: Action
    source: MeasureSource  # a plan level, the site's emergency mode, or a commander's override
    plan_id: Id | None = None  # None for the site's emergency actions
    level: Level | None = None
    since: float
    by: str  # user name, or "system"
    posts: list[Id] = Field(default_factory=list)  # the posts it is sent to (orders)
    # when it acts on the ground (its officers in place and set up; PlanState.in_effect): until
    # then it is being set up. None: a level's bundle or the emergency's, not timed
    acts_at: float | None = None


class InForce(Record):
    """Control → everyone: the one published record of what is in force. The map, the
    phones and the simulator read it; none derives it from plan states on its own."""

    v: Literal[1] = 1
    mode: Mode
    measures: list[MeasureInForce] = Field(default_factory=list)
    updated_at: float


def merge_measures(entries: list[MeasureInForce]) -> list[MeasureInForce]:
    """One entry per measure: staffing per post keeps the largest headcount, and a measure the
    emergency mode keeps is shown as the emergency's, whatever else also asks for it."""
    out: dict[str, MeasureInForce] = {}
    for e in entries:
        a = e.action
        key = f"staffing:{a.post}" if a.type == "staffing" else a.model_dump_json()
        prev = out.get(key)
        if prev is None:
            out[key] = e
        elif a.type == "staffing" and a.headcount > prev.action.headcount:
            out[key] = e
        elif e.source == "emergency" and prev.source != "emergency":
            out[key] = e
    return list(out.values())


def merge_in_force(records) -> InForce | None:
    """The site's in-force record from every partition's own (docs/scaling.md): each partition
    publishes the measures of its plan areas (and the site-wide emergency list); a reader
    shows their union, in emergency mode when any partition is, as of the newest. None when
    no partition published one yet."""
    recs = [r for r in records if r is not None]
    if not recs:
        return None
    if len(recs) == 1:
        return recs[0]
    mode = "emergency" if any(r.mode == "emergency" for r in recs) else recs[0].mode
    measures = merge_measures([m for r in recs for m in r.measures])
    return InForce(mode=mode, measures=measures, updated_at=max(r.updated_at for r in recs))


class OrderAnswer(Record):
    status: OrderStatus
    by: str
    at: float
    note: str | None = Field(None, max_length=500)


class Order(Record):
    """A confirmed measure or staffing order sent to the phones of one post, and its answers
    (acknowledged → in place, or cannot with a reason). ``in_place_s`` is the dispatch
    response time: from the commander's confirmation to "in place"."""

    v: Literal[1] = 1
    id: str = Field(min_length=1, max_length=128)
    post: Id
    action: Action
    plan_id: Id | None = None
    level: Level | None = None
    source: MeasureSource
    issued_at: float  # when the measure came into force (the confirmation)
    issued_by: str
    status: OrderStatus = "sent"
    answers: list[OrderAnswer] = Field(default_factory=list)
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    in_place_at: float | None = None
    in_place_s: float | None = None


class Command(Record):
    """Dashboard → control. ``id`` makes it idempotent: a command seen twice acts once."""

    v: Literal[1] = 1
    id: str = Field(min_length=8, max_length=64)
    kind: CommandKind
    plan_id: Id | None = None
    recommendation_id: str | None = None
    level: Level | None = None  # override target; None with kind=override means normal
    auto: bool | None = None  # set_auto
    mode: Mode | None = None  # set_mode
    alarm_id: str | None = None  # ack_alarm
    order_id: str | None = Field(None, max_length=128)  # answer_order
    answer: OrderAnswerKind | None = None  # answer_order
    hold_id: Id | None = None  # report_queue: the holding area counted
    people: float | None = Field(None, ge=0, le=100_000)  # report_queue: people waiting there now (a count; 750.0 is 750)
    user: str = Field(min_length=1, max_length=64)
    role: Role
    post: Id | None = None  # the sender's staff post (from the session, like user and role)
    note: str | None = Field(None, max_length=500)
    issued_at: float


class CommandResult(Record):
    v: Literal[1] = 1
    command_id: str
    ok: bool
    error: str | None = None
    at: float


class AuditEntry(Record):
    """One decision: who, when, what, why, and the zone states at that moment."""

    v: Literal[1] = 1
    id: str
    at: float
    actor: str  # user name or "system"
    role: Role | Literal["system"]
    action: Literal["recommend", "confirm", "reject", "override", "auto_apply", "supersede", "expire",
                    "set_auto", "set_mode", "ack_alarm", "release", "refuse", "order", "order_answer"]
    plan_id: Id | None = None
    level_from: Level | None = None
    level_to: Level | None = None
    recommendation_id: str | None = None
    command_id: str | None = None
    reason: str | None = None  # the commander's note or the recommendation's reasons
    order_id: str | None = None  # order / order_answer
    post: Id | None = None  # order / order_answer: the post it was sent to
    in_place_s: float | None = None  # order_answer in_place: confirmation → in place (dispatch response)
    zone_states: list[ZoneState] = Field(default_factory=list)


EVENT_TYPES = {
    "zone": ZoneState,
    "plan": PlanState,
    "recommendation": Recommendation,
    "alarm": Alarm,
    "mode": SiteMode,
    "audit": AuditEntry,
    "command_result": CommandResult,
    "inforce": InForce,
    "order": Order,
    "hold": HoldState,
}


R = TypeVar("R", bound=Record)

# Records that come from outside control (edges, dashboards) are decoded with strict types.
STRICT: tuple[type[Record], ...] = (Observation, Command)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(record)"


def decode(cls: type[R], raw: str | bytes | dict) -> R:
    """Parse and validate one record; raise :class:`RecordError` naming the bad field."""
    if isinstance(raw, (bytes, bytearray, str)):
        # Fast path: pydantic's own JSON parser validates a good record in one pass (2.5× faster
        # than json.loads + model_validate; every observation and zone event comes through here).
        # Anything it refuses, or a record without an explicit version, takes the path below,
        # which words the error: the fast path only ever accepts what that path accepts.
        try:
            rec = cls.model_validate_json(raw, strict=cls in STRICT)
        except (ValueError, RecursionError):  # ValidationError is a ValueError
            pass
        else:
            if "v" in rec.model_fields_set and getattr(rec, "v", None) == SCHEMA_VERSION:
                return rec
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(f"(record): not UTF-8 ({e.reason} at byte {e.start})") from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RecordError(f"(record): not JSON ({e.msg} at char {e.pos})") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting 10,000 deep
            raise RecordError(f"(record): not usable JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"(record): expected a JSON object, got {type(raw).__name__}")
    v = raw.get("v")
    if v != SCHEMA_VERSION:
        raise RecordError(f"v: unsupported schema version {v!r} (this reader speaks {SCHEMA_VERSION})")
    try:
        rec = cls.model_validate(raw, strict=cls in STRICT)
    except RecursionError:
        raise RecordError("(record): nested too deeply") from None
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise RecordError(f"{_field_path(first['loc'])}: {first['msg']}{more}") from None
    return rec


_setattr = object.__setattr__
_new = object.__new__
_N_FIELDS: dict[type, int] = {}


def built(cls: type[R], /, **values) -> R:
    """A record made from values its maker computed from validated inputs (control's hot path):
    not validated, as ``model_construct``, at a fraction of its cost. Every field must be
    given; when one is missing, ``model_construct`` fills the defaults."""
    n = _N_FIELDS.get(cls)
    if n is None:
        n = _N_FIELDS[cls] = len(cls.model_fields)
    if len(values) != n:
        return cls.model_construct(**values)
    rec = _new(cls)
    _setattr(rec, "__dict__", values)
    _setattr(rec, "__pydantic_fields_set__", set(values))
    _setattr(rec, "__pydantic_extra__", None)
    _setattr(rec, "__pydantic_private__", None)
    return rec


# A queue count older than this is unknown: a queue can double in a few minutes of a surge. The
# metro operator reports every minute and the pen staff every two [estimate]: a count is used
# for two of the staff's report intervals. Control and the dashboard both apply it.
HOLD_STALE_S = 240.0
# A holding pen is full at this density (an orderly queue, Fruin's queuing LOS D): the planner's
# target for a pen, and the density from which a reported pen counts in its area's level triggers
# (a pen within it is a queue working as designed, not a crowd).
PEN_FULL_DENSITY = 2.0


def hold_as_of(state: HoldState, now: float, stale_after_s: float = HOLD_STALE_S) -> HoldState:
    """A holding area's state as a reader should show it at ``now``: a count older than
    ``stale_after_s`` is ``unknown`` (kept as ``last_people``/``last_at``), never stays live."""
    if state.status != "ok" or state.reported_at is None or now - state.reported_at <= stale_after_s:
        return state
    return state.model_copy(update=dict(
        status="unknown", reason=f"stale: last count {now - state.reported_at:.0f} s old (limit {stale_after_s:g} s)",
        people=None, density=None, last_people=state.people, last_at=state.reported_at,
        reported_at=None, reported_by=None, computed_at=now))


def as_of(state: ZoneState, now: float, stale_after_s: float) -> ZoneState:
    """The state as a reader should show it at ``now``: a value whose newest source is older
    than ``stale_after_s`` becomes ``unknown`` (keeping it as ``last_known``), never stays live.

    Control applies this when it computes states; the dashboard applies it again so that a
    silent control service cannot leave stale numbers on screen."""
    if state.status != "ok" or state.updated_at is None:
        return state
    age = now - state.updated_at
    if age <= stale_after_s:
        return state
    return state.model_copy(
        update=dict(
            status="unknown",
            reason=f"stale: newest observation {age:.0f} s old (limit {stale_after_s:g} s)",
            count=None,
            count_std=None,
            density=None,
            capacity_ratio=None,
            coverage=None,
            estimated_share=None,
            method=None,
            confidence=None,
            last_known=LastKnown(count=state.count or 0.0, density=state.density or 0.0, at=state.updated_at),
            computed_at=now,
        )
    )
